"""lethe.registry: the one place for every model and index, their versions and their lineage.

Importing this package is cheap: torch, transformers and sentence-transformers are imported
only when a model is loaded.
"""

from __future__ import annotations

from lethe.registry.core import Registry
from lethe.registry.refs import ArtifactRef, Lineage, parse_ref
from lethe.registry.spec import KINDS, SCHEMES, ModelSpec, parse_source

__all__ = [
    "KINDS",
    "SCHEMES",
    "ArtifactRef",
    "Lineage",
    "ModelSpec",
    "Registry",
    "parse_ref",
    "parse_source",
]
