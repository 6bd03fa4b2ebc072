"""Turn source strings into local files, without importing the packages that ship weights."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from lethe.errors import RegistryError
from lethe.registry.spec import parse_gguf_source, parse_pkg

#: files that mark a folder as a loadable model (sentence-transformers first, then transformers)
MODEL_MARKERS: tuple[str, ...] = ("modules.json", "config.json")


def package_dir(module: str) -> Path:
    """The folder of an installed package, found with ``find_spec`` (the package is not run).

    A dotted module imports its parent packages (``find_spec`` needs them); a top-level one
    imports nothing.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise RegistryError(f"cannot locate package {module!r}: {exc}") from exc
    if spec is None:
        raise RegistryError(
            f"python package {module!r} is not installed; install the PyPI package that ships it "
            f"(e.g. pip install {module.split('.')[0].replace('_', '-')})"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    raise RegistryError(f"package {module!r} has no location on disk")


def find_model_dir(folder: Path) -> Path:
    """The folder holding a model: ``folder`` itself or one subfolder (``modules.json`` wins)."""
    for marker in MODEL_MARKERS:
        if (folder / marker).is_file():
            return folder
        hits = sorted(p.parent for p in folder.glob(f"*/{marker}") if p.is_file())
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(p.name for p in hits)
            raise RegistryError(
                f"{folder} holds several models ({names}); name one with pkg:module/<subdir>"
            )
    raise RegistryError(
        f"no model in {folder}: found no {' or '.join(MODEL_MARKERS)} there or one level below"
    )


def resolve_pkg(rest: str) -> Path:
    """The model folder for ``pkg:module[/subdir]``."""
    module, subdir = parse_pkg(rest)
    root = package_dir(module)
    if subdir is None:
        return find_model_dir(root)
    folder = root / subdir
    if not folder.is_dir():
        raise RegistryError(f"pkg:{rest}: {folder} is not a directory")
    return folder


def resolve_path(rest: str) -> Path:
    """The folder for ``path:/dir`` (it must exist)."""
    folder = Path(rest).expanduser()
    if not folder.exists():
        raise RegistryError(f"path:{rest}: {folder} does not exist")
    return folder


def _single_gguf(folder: Path, where: str) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise RegistryError(f"{where}: name the .gguf file after '#' (found: {found})")
    return files[0]


def resolve_gguf_file(rest: str, revision: str | None = None) -> Path:
    """The local .gguf file for the part after ``gguf:`` (hub files go through the HF cache)."""
    where, location, filename = parse_gguf_source(rest)
    if where == "hf":
        return _hf_gguf(location, str(filename), revision)
    if where == "pkg":
        module, subdir = parse_pkg(location)
        folder = package_dir(module) / (subdir or "")
        path = folder / filename if filename else _single_gguf(folder, f"gguf:{rest}")
    else:
        path = Path(location).expanduser()
    if not path.is_file():
        raise RegistryError(f"gguf:{rest}: no such file {path}")
    return path


def _hf_gguf(repo_id: str, filename: str, revision: str | None) -> Path:
    """Fetch (or find in the local cache) one .gguf file of a hub repository."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - a dependency of transformers
        from lethe.errors import MissingDependency

        raise MissingDependency("gguf:hf: sources need huggingface_hub: pip install "
                                "huggingface_hub") from exc
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as exc:  # hub errors are many; report them as one
        raise RegistryError(f"cannot get {filename} from hf:{repo_id}: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hf_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot folder of a hub model (downloads unless HF_HUB_OFFLINE is set)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as exc:  # hub errors are many; report them as one
        raise RegistryError(f"cannot get hf:{repo_id} (revision {revision}): {exc}") from exc
