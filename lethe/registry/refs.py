"""Value objects handed out by the registry: artifact references and lineage."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lethe.errors import RegistryError
from lethe.registry.spec import validate_name

_REF_RE = re.compile(r"^(?P<name>[^@]+)(?:@v?(?P<version>\d+))?$")


def parse_ref(text: str) -> tuple[str, int | None]:
    """Split ``"name"``, ``"name@3"`` or ``"name@v3"`` into ``(name, version or None)``."""
    match = _REF_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise RegistryError(
            f"bad artifact reference {text!r}: expected 'name', 'name@3' or 'name@v3'"
        )
    version = match.group("version")
    return validate_name(match.group("name")), int(version) if version else None


@dataclass(frozen=True)
class ArtifactRef:
    """One version of one artifact, as stored in the registry.

    ``path`` is the payload directory the registry owns, or ``None`` when the weights live at the
    source (``hf:``, ``pkg:``, ``path:`` without a copy, ``gguf:``) or were destroyed by
    :meth:`Registry.retire`.
    """

    id: int
    name: str
    version: int
    kind: str
    source: str
    status: str
    manifest: dict[str, Any] = field(compare=False, hash=False, repr=False)
    path: Path | None = None

    def __str__(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def active(self) -> bool:
        """True unless the artifact was retired."""
        return self.status == "active"


def _ids(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise RegistryError(f"Lineage.{what} must be an iterable of ids, not the string {values!r}")
    out = tuple(values)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise RegistryError(f"Lineage.{what} must hold strings; got {bad[:3]!r}")
    return out


@dataclass(frozen=True)
class Lineage:
    """The doc ids, owner ids and query ids that went into an artifact."""

    doc_ids: Iterable[str] = ()
    owner_ids: Iterable[str] = ()
    query_ids: Iterable[str] = ()

    def __post_init__(self) -> None:
        for what in ("doc_ids", "owner_ids", "query_ids"):
            object.__setattr__(self, what, _ids(getattr(self, what), what))

    def __bool__(self) -> bool:
        return bool(self.doc_ids or self.owner_ids or self.query_ids)
