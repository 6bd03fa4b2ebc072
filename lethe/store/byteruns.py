"""Runs of id characters and of printable UTF-8 in a large buffer, found with numpy (for the trace scan).

A regular expression visits hundreds of megabytes of model weights at a few tens of MB/s; classifying
every byte with a lookup table and finding the edges of runs with ``numpy.diff`` is several times
faster, and only the few runs long enough are handed back to Python. Buffers are read in chunks
(runs crossing a chunk edge are joined), so memory stays a few times the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: bytes per chunk
CHUNK = 1 << 25
#: bytes an id can be made of
ID_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-:.@/"

_ID = np.zeros(256, dtype=bool)
_ID[list(ID_BYTES)] = True
_PRINT, _CONT, _LEAD2, _LEAD3, _LEAD4 = 1, 2, 3, 4, 5
_CLASS = np.zeros(256, dtype=np.uint8)
_CLASS[[9, 10, 13, *range(0x20, 0x7F)]] = _PRINT
_CLASS[0x80:0xC0] = _CONT
_CLASS[0xC2:0xE0] = _LEAD2
_CLASS[0xE0:0xF0] = _LEAD3
_CLASS[0xF0:0xF5] = _LEAD4


def id_runs(data: Any, min_len: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every maximal run of id bytes at least ``min_len`` long."""
    return _runs(data, min_len, lambda arr, lo, hi: _ID[arr[lo:hi]])


def text_runs(data: Any, min_len: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every maximal run of printable UTF-8 (tab, newline and carriage return
    included; a multi-byte character counts when its lead and continuation bytes are well formed)
    at least ``min_len`` bytes long."""
    return _runs(data, min_len, _utf8_mask)


def _runs(data: Any, min_len: int, classify: Any) -> Iterator[tuple[int, int]]:
    """Chunks overlap by ``min_len - 1`` bytes, so every run of ``min_len`` lies whole in one chunk;
    the pieces a long run is found in are joined."""
    arr = np.frombuffer(data, dtype=np.uint8)
    pending: tuple[int, int] | None = None
    for lo in range(0, len(arr), CHUNK):
        hi = min(lo + CHUNK + min_len - 1, len(arr))
        for s, e in _long_runs(classify(arr, lo, hi), min_len):
            s, e = s + lo, e + lo
            if pending is not None and s <= pending[1]:
                pending = (pending[0], max(pending[1], e))
                continue
            if pending is not None:
                yield pending
            pending = (s, e)
    if pending is not None:
        yield pending


def _long_runs(mask: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Runs of True at least ``k`` long in ``mask`` (which it overwrites): AND-ing the mask with itself
    shifted by doubling steps keeps the starts of ``k`` Trues in a row, few in binary noise."""
    span = 1
    while span < k:
        step = min(span, k - span)
        mask[:-step] &= mask[step:]
        mask[-step:] = False
        span += step
    pos = np.flatnonzero(mask)
    if not len(pos):
        return []
    breaks = np.flatnonzero(np.diff(pos) > 1)
    starts = np.concatenate((pos[:1], pos[breaks + 1]))
    ends = np.concatenate((pos[breaks], pos[-1:])) + k
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _utf8_mask(arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Which bytes of ``arr[lo:hi]`` belong to a printable ASCII or a well-formed multi-byte character."""
    n = hi - lo
    cls = np.zeros(n + 6, dtype=np.uint8)  # 3 bytes of context either side (0 past the buffer's ends)
    a, z = max(lo - 3, 0), min(hi + 3, len(arr))
    cls[3 - (lo - a):3 + (z - lo)] = _CLASS[arr[a:z]]
    cont = cls == _CONT
    c1, c2, c3, kind = cont[1:n + 4], cont[2:n + 5], cont[3:n + 6], cls[:n + 3]
    two = (kind == _LEAD2) & c1
    three = (kind == _LEAD3) & c1 & c2
    four = (kind == _LEAD4) & c1 & c2 & c3
    lead = two | three | four  # a well-formed character starts here
    longer = three | four
    return (cls[3:n + 3] == _PRINT) | lead[3:] | lead[2:n + 2] | longer[1:n + 1] | four[:n]
