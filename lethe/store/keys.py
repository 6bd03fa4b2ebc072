"""The ledger key: a secret kept outside the ledger, and the head file that pins the chain's end.

Every id the ledger records is ``HMAC-SHA256(id key, kind:id)`` and every entry is chained with
``HMAC-SHA256(chain key, ...)``; both keys are derived from one 32-byte secret that never enters the
ledger database. Without the secret, the ledger's hashes cannot be tested against guessed ids, and
the chain cannot be rewritten with recomputed hashes. The secret comes from, in order:

1. ``$LETHE_LEDGER_KEY`` (64 hex characters), for deployments with a secret store;
2. ``$LETHE_LEDGER_KEY_FILE``, a path;
3. a key file beside the workspace (``<home>.key`` next to the ``<home>`` directory), created with
   mode 0600 the first time a ledger is created.

The head file (``$LETHE_LEDGER_HEAD_FILE``, default ``<home>.head`` beside the workspace) is rewritten
after every append with the last entry's sequence number and hash, so that removing trailing entries
or rewriting the chain is detected by ``lethe verify`` even by someone holding the key. Keep a copy
of it (or of a receipt's hash) somewhere the workspace's writers cannot reach.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lethe.errors import LedgerError
from lethe.store.files import atomic_write_bytes

KEY_ENV = "LETHE_LEDGER_KEY"
KEY_FILE_ENV = "LETHE_LEDGER_KEY_FILE"
HEAD_FILE_ENV = "LETHE_LEDGER_HEAD_FILE"
KEY_BYTES = 32


@dataclass(frozen=True)
class LedgerKey:
    """The ledger secret, where it came from, and where the chain head is pinned."""

    secret: bytes
    source: str
    head_path: Path | None = None

    def derive(self, purpose: str) -> bytes:
        """A sub-key for one purpose (``ids`` or ``chain``)."""
        return hmac.new(self.secret, f"lethe-ledger:{purpose}".encode(), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str:
        """A public identifier of the key (reveals nothing about it)."""
        return hashlib.sha256(b"lethe-ledger-fingerprint:" + self.secret).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"LedgerKey(source={self.source!r}, fingerprint={self.fingerprint!r})"


def key_for_workspace(home: Path, create: bool) -> LedgerKey:
    """The key of the workspace at ``home`` (see module docs); ``create`` allows a new key file."""
    head = Path(os.environ.get(HEAD_FILE_ENV) or home.parent / f"{home.name}.head")
    if os.environ.get(KEY_ENV):
        return LedgerKey(_parse_hex(os.environ[KEY_ENV], f"${KEY_ENV}"), f"${KEY_ENV}", head)
    path = Path(os.environ.get(KEY_FILE_ENV) or home.parent / f"{home.name}.key")
    return LedgerKey(read_or_create_key(path, create), f"file:{path}", head)


def key_beside(db_path: Path, create: bool = True) -> LedgerKey:
    """A key file and head file next to a stand-alone ledger file (``ledger.db`` -> ``ledger.key``)."""
    path = Path(db_path)
    key_path = path.with_name(path.stem + ".key")
    return LedgerKey(read_or_create_key(key_path, create), f"file:{key_path}", path.with_name(path.stem + ".head"))


def read_or_create_key(path: Path, create: bool) -> bytes:
    """Read a hex key file (refusing one others can read), or create it with mode 0600."""
    if path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise LedgerError(f"ledger key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")
        return _parse_hex(path.read_text().strip(), str(path))
    if path.exists():
        raise LedgerError(f"ledger key file {path} is not a regular file")
    if not create:
        raise LedgerError(
            f"the ledger key {path} is missing; without it the ledger can be neither verified nor extended. "
            f"Restore it (or set ${KEY_ENV} / ${KEY_FILE_ENV})")
    return _create_key(path)


def _create_key(path: Path) -> bytes:
    """Write a new key file (0600) atomically; if another process won the race, read theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(KEY_BYTES)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secret.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if the file appeared meanwhile: never overwrite a key
    except FileExistsError:
        return _parse_hex(path.read_text().strip(), str(path))
    finally:
        os.unlink(tmp)
    return secret


def _parse_hex(text: str, where: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise LedgerError(f"{where}: the ledger key must be {KEY_BYTES * 2} hex characters") from exc
    if len(secret) < KEY_BYTES:
        raise LedgerError(f"{where}: the ledger key must be {KEY_BYTES * 2} hex characters, got {len(text.strip())}")
    return secret


def write_head(path: Path, seq: int, head: str) -> None:
    """Atomically record the chain's last entry (sequence number and hash)."""
    data = json.dumps({"seq": seq, "head": head}).encode()
    atomic_write_bytes(path, lambda fh: fh.write(data))


def read_head(path: Path) -> tuple[int, str] | None:
    """The recorded ``(seq, head)``, or None when there is no head file."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return int(data["seq"]), str(data["head"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"head file {path} is unreadable ({exc}); it must hold {{'seq': N, 'head': HASH}}") from exc
