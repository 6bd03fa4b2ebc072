"""The registry of weight-unlearning methods, by name (``lethe forget --unlearn NAME``)."""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING

from lethe.errors import LetheError
from lethe.unlearning.base import UnlearnConfig

if TYPE_CHECKING:
    from lethe.unlearning.base import Method

METHODS: dict[str, type[Method]] = {}
#: the modules whose classes register themselves on import
MODULES = ("lethe.unlearning.methods", "lethe.unlearning.reglu", "lethe.unlearning.uld", "lethe.unlearning.fit",
           "lethe.unlearning.ofmu", "lethe.unlearning.laf", "lethe.unlearning.mixup", "lethe.unlearning.sae")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to :data:`METHODS` under its ``name``."""
    METHODS[cls.name] = cls
    return cls


def method_config(name: str, cfg: UnlearnConfig | None = None) -> UnlearnConfig:
    """``cfg`` (default settings when None) with the rate scaled by the method's own ``lr_scale``: what
    ``lethe forget --unlearn NAME`` and ``benchmarks/unlearn.py`` both run."""
    cfg = cfg or UnlearnConfig()
    return replace(cfg, lr=cfg.lr * type(get_method(name)).lr_scale)


def get_method(name: str) -> Method:
    """An instance of the registered method ``name``; raises listing the known ones."""
    for module in MODULES:  # the methods register themselves on import
        importlib.import_module(module)
    if name not in METHODS:
        raise LetheError(f"unknown unlearning method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]()
