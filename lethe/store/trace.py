"""Scan every byte of a workspace for traces of forgotten data, holding only keyed hashes of it.

A receipt keeps keyed hashes of the forgotten document, owner and query ids (``HMAC-SHA256(id key,
kind:id)``) and keyed 8-byte digests of every 32-byte window of the forgotten texts
(``BLAKE2b(window key, digest_size=8)``). :func:`scan_workspace` reads every file under a workspace
home and hashes what could be such an id or such a window; a digest found among the receipts' is a
trace. Nothing forgotten is needed in clear, and without the ledger key the digests say nothing.

What is hashed, per file:

* **text**: every 32-byte window of every run of at least 32 bytes of printable UTF-8 (tabs and
  newlines included), wherever it lies (live rows, free pages, a WAL, a model file); and the strings
  of JSON records, SQLite rows and ``.npz`` arrays whose stored bytes differ from their UTF-8 (JSON
  escapes, numpy's UTF-32);
* **ids**: every string value of a structure the scanner can parse (SQLite rows and JSON inside them,
  JSON / JSON-lines files, ``.npz`` arrays and the JSON they hold, a ``.safetensors`` header), whatever
  its length, and its pieces split at ``:`` ``/`` ``@`` (``query:28``); in raw bytes, every run of id
  characters (``[A-Za-z0-9_-:.@/]``) of 8 bytes or more and its pieces, and in text files (no NUL byte)
  a shorter run between double quotes. Shorter runs in binary data are not matched: two random bytes
  spell a short id every few megabytes of model weights, so a match there would prove nothing.

Hashes of hashes never match: an ``h:<hash>`` left by :mod:`lethe.store.redact` or a receipt's hex
hash is no trace.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import mmap
import os
import re
import sqlite3
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lethe.store.byteruns import id_runs, text_runs
from lethe.store.redact import MODEL_FILES

KINDS: tuple[str, ...] = ("doc", "owner", "query")
#: bytes per text window, and bytes per window digest
WINDOW = 32
DIGEST = 8
#: runs of id characters at least this long are matched anywhere in raw bytes
LONG_ID = 8
#: longer strings are not taken for ids (their pieces still are)
MAX_ID = 512
#: files up to this size with the same name and bytes as one scanned already are not scanned again
SAME_FILE_MAX = 1 << 24

_QUOTED_ID = re.compile(rb'"([A-Za-z0-9_\-:.@/]{1,%d})"' % (LONG_ID - 1))
_SPLIT = re.compile(rb"[:/@]")
_JSON_PLAIN = re.compile(r'[^"\\\x00-\x1f\x7f-\U0010ffff]*')
_SQLITE_MAGIC = b"SQLite format 3\x00"


class TraceKeys:
    """The keyed hashes of ids (the ledger's ``hash_id``, as bytes) and of text windows."""

    def __init__(self, ids_key: bytes, window_key: bytes) -> None:
        self._ids = {k: hmac.new(ids_key, f"{k}:".encode(), hashlib.sha256) for k in KINDS}
        self._window = hashlib.blake2b(key=window_key, digest_size=DIGEST)

    def id_digest(self, token: bytes, kind: str) -> bytes:
        """``HMAC-SHA256(id key, kind:token)``; its hex is the ledger's ``hash_id(token, kind)``."""
        h = self._ids[kind].copy()
        h.update(token)
        return h.digest()

    def windows(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """``(offset, digest)`` of every ``WINDOW``-byte window of ``data``."""
        return enumerate(self.digests(data))

    def digests(self, data: bytes) -> list[bytes]:
        """The digest of every ``WINDOW``-byte window of ``data``, in order."""
        view, base, out = memoryview(data), self._window, []
        for i in range(len(data) - WINDOW + 1):
            h = base.copy()
            h.update(view[i:i + WINDOW])
            out.append(h.digest())
        return out

    def text_windows(self, texts: Iterable[str]) -> set[bytes]:
        """The digests of every window of every text's UTF-8 bytes (a text under 32 bytes has none)."""
        return {d for t in texts for d in self.digests(t.encode("utf-8"))}


def encode_windows(digests: Iterable[bytes]) -> str:
    """Digests as one compact string (base64 of the sorted, distinct 8-byte digests)."""
    return base64.urlsafe_b64encode(b"".join(sorted(set(digests)))).decode("ascii")  # no "/": not id pieces


def decode_windows(text: str) -> set[bytes]:
    """The digests :func:`encode_windows` packed."""
    raw = base64.urlsafe_b64decode(text or "") if "-" in (text or "") or "_" in (text or "") else base64.b64decode(
        text or "")  # receipts written before the url-safe alphabet
    return {raw[i:i + DIGEST] for i in range(0, len(raw) - DIGEST + 1, DIGEST)}


@dataclass(frozen=True)
class TraceHit:
    """Something forgotten found in a file: what (``doc id``, ``owner id``, ``query id``, ``text``),
    where in it (``bytes`` at ``offset``, or a parsed ``sqlite`` / ``json`` / ``npz`` /
    ``safetensors`` structure), and for text the window digests that matched."""

    path: str
    what: str
    where: str
    offset: int | None = None
    digests: frozenset[bytes] = field(default=frozenset(), repr=False)


@dataclass
class Targets:
    """What to look for: id digests by kind, text-window digests."""

    ids: dict[str, set[bytes]]
    windows: set[bytes]

    def __bool__(self) -> bool:
        return bool(self.windows) or any(self.ids.values())


def scan_workspace(home: str | Path, id_hashes: Mapping[str, Iterable[str]], window_digests: Iterable[bytes],
                   hasher: TraceKeys, stats: dict[str, Any] | None = None) -> list[TraceHit]:
    """Every trace of the given ids (hex keyed hashes by kind) and text windows under ``home``.

    ``stats``, if given, receives ``files_scanned``, ``bytes_scanned`` and ``seconds``.
    """
    t0 = time.perf_counter()
    home = Path(home)
    targets = Targets({k: {bytes.fromhex(h) for h in id_hashes.get(k, ())} for k in KINDS}, set(window_digests))
    files = [p for p in sorted(home.rglob("*")) if p.is_file() and not p.is_symlink()]
    hits: list[TraceHit] = []
    size = 0
    seen: dict[tuple[bytes, str], list[TraceHit]] = {}  # small files copied between model versions
    for path in files:
        try:
            size += path.stat().st_size
            if targets:
                hits += _scan_once(path, str(path.relative_to(home)), targets, hasher, seen)
        except FileNotFoundError:  # a WAL or temp file that went away meanwhile
            continue
    if stats is not None:
        stats.update(files_scanned=len(files), bytes_scanned=size, seconds=round(time.perf_counter() - t0, 3))
    return hits


def _scan_once(path: Path, name: str, targets: Targets, keys: TraceKeys,
               seen: dict[tuple[bytes, str], list[TraceHit]]) -> list[TraceHit]:
    """:func:`scan_file`, reusing the result of a small file with the same name and bytes."""
    if path.stat().st_size > SAME_FILE_MAX:
        return scan_file(path, name, targets, keys)
    key = (hashlib.sha256(path.read_bytes()).digest(), path.name)
    if key not in seen:
        seen[key] = scan_file(path, name, targets, keys)
    return [replace(h, path=name) for h in seen[key]]


def scan_file(path: Path, name: str, targets: Targets, keys: TraceKeys) -> list[TraceHit]:
    """The traces in one file (``name``: how hits name it)."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return []
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            quoted = path.name not in MODEL_FILES and data.find(b"\x00", 0, 1 << 16) < 0
            hits: list[TraceHit] = _raw_ids(data, name, targets, keys, quoted) + _raw_text(data, name, targets, keys)
            parsed = _structured(path, data)
    return hits + (_match_parsed(parsed, name, targets, keys) if parsed is not None else [])


# -- raw bytes ------------------------------------------------------------------------------------

def _raw_ids(data: Any, name: str, targets: Targets, keys: TraceKeys, quoted: bool) -> list[TraceHit]:
    if not any(targets.ids.values()):
        return []
    found: dict[bytes, int] = {}
    for start, end in id_runs(data, LONG_ID):
        for token in _pieces(bytes(data[start:end])):
            found.setdefault(token, start)
    if quoted:
        for m in _QUOTED_ID.finditer(data):
            for token in _pieces(m.group(1)):
                found.setdefault(token, m.start(1))
    return [TraceHit(name, what, "bytes", offset) for token, offset in found.items()
            for what in _id_kinds(token, targets, keys)]


def _pieces(token: bytes) -> set[bytes]:
    """A token and every stretch of it between ``:`` ``/`` ``@`` (``user:28`` -> ``user``, ``28``,
    ``user:28``; an id holding a separator is found behind a prefix too). Beyond 16 pieces, only
    single pieces and the whole token (under ``MAX_ID`` bytes)."""
    cuts = [m.start() for m in _SPLIT.finditer(token)]
    starts, ends = [0, *(c + 1 for c in cuts)], [*cuts, len(token)]
    if len(cuts) > 16:
        out = {token[a:b] for a, b in zip(starts, ends, strict=True)}
    else:
        out = {token[a:b] for a in starts for b in ends if b - a <= MAX_ID}
    out.discard(b"")
    if len(token) <= MAX_ID:
        out.add(token)
    return out


def _id_kinds(token: bytes, targets: Targets, keys: TraceKeys) -> list[str]:
    return [f"{kind} id" for kind in KINDS if targets.ids[kind] and keys.id_digest(token, kind) in targets.ids[kind]]


def _raw_text(data: Any, name: str, targets: Targets, keys: TraceKeys) -> list[TraceHit]:
    """Windows of every printable UTF-8 run, widened by 3 bytes either side (a copy cut inside a
    character still counts)."""
    if not targets.windows:
        return []
    hits = []
    for start, end in text_runs(data, WINDOW - 6):
        start, end = max(start - 3, 0), min(end + 3, len(data))
        found = targets.windows.intersection(keys.digests(bytes(data[start:end])))
        if found:
            hits.append(TraceHit(name, "text", "bytes", start, frozenset(found)))
    return hits


# -- parsed structures ----------------------------------------------------------------------------

@dataclass
class Parsed:
    """The strings of a file's structure, and those among them not stored as their plain UTF-8 bytes
    (JSON escapes, numpy's UTF-32): the raw text scan cannot see those, so their windows are hashed."""

    where: str
    strings: list[str] = field(default_factory=list)
    encoded: list[str] = field(default_factory=list)

    def add_json(self, obj: Any) -> None:
        """The strings of a JSON value stored as JSON text."""
        found = walk_strings(obj)
        self.strings += found
        self.encoded += [s for s in found if not _JSON_PLAIN.fullmatch(s)]


def _structured(path: Path, data: Any) -> Parsed | None:
    """The structure of a file the scanner can parse (None when it cannot)."""
    try:
        if data[:16] == _SQLITE_MAGIC:
            return _sqlite_strings(path)
        if path.suffix in (".json", ".jsonl") and path.name not in MODEL_FILES:
            return _json_strings(bytes(data), path.suffix == ".jsonl")
        if path.suffix == ".npz":
            return _npz_strings(path)
        if path.suffix == ".safetensors":
            return _safetensors_strings(data)
    except (ValueError, OSError, sqlite3.Error, zipfile.BadZipFile, KeyError, EOFError, RecursionError):
        return None  # not what its name says: its raw bytes were scanned all the same
    return None


def _sqlite_strings(path: Path) -> Parsed:
    """Every text value of every table (and the strings of JSON values), read-only."""
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() and wal.stat().st_size else "immutable=1"
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
    out = Parsed("sqlite")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            quoted = table.replace('"', '""')
            for row in conn.execute(f'SELECT * FROM "{quoted}"'):
                for value in row:
                    if isinstance(value, str):
                        _add_value(out, value)
    finally:
        conn.close()
    return out


def _add_value(out: Parsed, value: str) -> None:
    """A stored string, and if it is JSON, the strings inside it."""
    out.strings.append(value)
    if value[:1] in ("{", "[") and len(value) > 1:
        with contextlib.suppress(ValueError):
            out.add_json(json.loads(value))


def _json_strings(raw: bytes, lines: bool) -> Parsed:
    text = raw.decode("utf-8")
    out = Parsed("json")
    for doc in ([json.loads(line) for line in text.splitlines() if line.strip()] if lines else [json.loads(text)]):
        out.add_json(doc)
    return out


def _npz_strings(path: Path) -> Parsed:
    out = Parsed("npz")
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            arr = z[key]
            if arr.dtype.kind == "U":
                found = [str(s) for s in arr.ravel().tolist()]
                out.strings += found
                out.encoded += found
            elif arr.dtype == np.uint8 and arr.ndim == 1 and arr[:1].tobytes() in (b"{", b"["):
                _add_value(out, arr.tobytes().decode("utf-8", errors="replace"))
    return out


def _safetensors_strings(data: Any) -> Parsed:
    out = Parsed("safetensors header")
    n = int.from_bytes(data[:8], "little")
    if 0 < n <= len(data) - 8:
        out.add_json(json.loads(bytes(data[8:8 + n]).decode("utf-8")))
    return out


def walk_strings(obj: Any) -> list[str]:
    """Every string in a JSON value (object keys included)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        return [s for v in obj for s in walk_strings(v)]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (k, *walk_strings(v))]
    return []


def _match_parsed(parsed: Parsed, name: str, targets: Targets, keys: TraceKeys) -> list[TraceHit]:
    """Ids among the strings (and their pieces); text among the strings not stored as plain UTF-8."""
    hits: list[TraceHit] = []
    if any(targets.ids.values()):
        tokens = {t for v in dict.fromkeys(parsed.strings) for t in _pieces(v.encode("utf-8", errors="replace"))}
        hits += [TraceHit(name, what, parsed.where) for t in tokens for what in _id_kinds(t, targets, keys)]
    if targets.windows:
        found = {d for v in dict.fromkeys(parsed.encoded)
                 for d in targets.windows.intersection(keys.digests(v.encode("utf-8", errors="replace")))}
        if found:
            hits.append(TraceHit(name, "text", parsed.where, None, frozenset(found)))
    return hits
