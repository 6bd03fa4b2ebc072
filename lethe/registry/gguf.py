"""The ``gguf:`` source: a quantised .gguf file, converted once to float32 weights (docs/architecture.md).

Registration hashes a local file once (its sha256, size and quantisation type go into the manifest);
loading converts it into ``<registry>/gguf-cache/<sha256>`` on first use and checks later that the file
has not changed since it was registered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lethe.errors import RegistryError
from lethe.registry import loaders, sources
from lethe.registry.manifest import destroy
from lethe.registry.refs import ArtifactRef
from lethe.registry.spec import ModelSpec, parse_source


def file_info(path: Path) -> dict[str, Any]:
    """What the manifest records of a .gguf file."""
    stat = path.stat()
    return {"file": str(path), "sha256": sources.sha256_file(path), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "quant_type": loaders.gguf_quant_type(path)}


def register_info(spec: ModelSpec) -> dict[str, Any]:
    """For a local .gguf source: its file info and quantisation, hashed once at registration."""
    scheme, rest = parse_source(spec.source)
    if scheme != "gguf" or rest.startswith("hf:"):
        return {}
    info = file_info(sources.resolve_gguf_file(rest))
    return {"gguf": info, "dequantized_from": info["quant_type"]}


class GGUFCache:
    """Float32 conversions of .gguf files, one folder per file content (sha256)."""

    def __init__(self, root: Path, trash: Path) -> None:
        self.root, self.trash = root, trash

    def folder(self, art: ArtifactRef, record: Callable[[ArtifactRef, dict[str, Any]], None]) -> Path:
        """The converted model of ``art``'s .gguf file (``record`` stores new file info in its manifest)."""
        rest = parse_source(art.source)[1]
        path = sources.resolve_gguf_file(rest, art.manifest.get("revision"))
        known = art.manifest.get("gguf") or {}
        stat = path.stat()
        if known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            info = known
        else:
            info = file_info(path)
            if known.get("sha256") and known["sha256"] != info["sha256"]:
                raise RegistryError(
                    f"{art}: {path} changed since it was registered (sha256 {known['sha256']} "
                    f"-> {info['sha256']}); register the new file as a new artifact")
            record(art, info)
        cache = self.root / info["sha256"]
        if not (cache / "config.json").is_file():
            loaders.convert_gguf(path, cache)
        return cache

    def drop(self, sha256: str) -> None:
        """Destroy the conversion of one file content."""
        destroy(self.root / sha256, self.trash)
