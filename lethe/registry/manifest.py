"""Manifests and payloads on disk: versions recorded, files written aside then renamed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

#: distributions whose versions every manifest records
RECORDED_DISTRIBUTIONS: tuple[str, ...] = (
    "lethe-ir", "torch", "transformers", "sentence-transformers", "peft", "tokenizers",
)


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def library_versions() -> dict[str, str | None]:
    """Installed versions of lethe and the model libraries (``None`` where one is missing)."""
    versions: dict[str, str | None] = {}
    for dist in RECORDED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    from lethe import __version__

    versions["lethe"] = __version__
    return versions


def dumps(data: Any) -> str:
    """JSON text of a manifest (values JSON cannot hold, like paths, become strings)."""
    return json.dumps(data, sort_keys=True, default=str)


def stage_payload(src: Path, staging_root: Path) -> Path:
    """Copy a payload (a directory, or one file) into a fresh folder under ``staging_root``."""
    if not src.exists():
        from lethe.errors import RegistryError

        raise RegistryError(f"payload {src} does not exist")
    staging_root.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix="payload-", dir=staging_root))
    try:
        if src.is_dir():
            shutil.copytree(src, staged, dirs_exist_ok=True, symlinks=False)
        else:
            shutil.copy2(src, staged / src.name)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def destroy(path: Path, trash_root: Path) -> None:
    """Remove a payload: rename it into ``trash_root`` (atomic disappearance), then delete it."""
    if not path.exists():
        return
    trash_root.mkdir(parents=True, exist_ok=True)
    doomed = Path(tempfile.mkdtemp(prefix="retired-", dir=trash_root))
    os.replace(path, doomed / "payload")
    shutil.rmtree(doomed, ignore_errors=True)  # what is left in trash goes at the next sweep
