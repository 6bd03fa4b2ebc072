"""Forgotten ids in JSON records become keyed hashes: ``"d0"`` -> ``"h:<HMAC of doc:d0>"``.

A model that was trained on forgotten data and not replaced (forgotten without ``--unlearn``, or one
that could not be unlearned) keeps its payload: its recorded training groups (``examples.jsonl``),
audit pairs (``audit.json``), listwise ``labels.jsonl``, teacher scores (``scores.json``) and its
manifest. Every JSON string (value or object key) exactly equal to a forgotten id is replaced by
``h:`` + the ledger's keyed hash of it, so the record still says *that* a forgotten item was there
(and lineage still finds the model by the hashed form) without saying *which*.

The files that define a model for its libraries (tokenizer, configuration) are never rewritten: a
vocabulary holds every short token, and an id equal to one must not change the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lethe.store.files import atomic_write_bytes

#: the prefix of a keyed hash that stands for a forgotten id
HASHED = "h:"
#: suffixes of the JSON record files that are rewritten
JSON_SUFFIXES: tuple[str, ...] = (".json", ".jsonl")
#: files the model libraries read (tokenizers, configurations): never rewritten
MODEL_FILES: frozenset[str] = frozenset({
    "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json", "preprocessor_config.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "modules.json", "adapter_config.json", "model.safetensors.index.json",
})


def redact(obj: Any, mapping: Mapping[str, str]) -> Any:
    """``obj`` with every string (and object key) found in ``mapping`` replaced by its value."""
    if isinstance(obj, str):
        return mapping.get(obj, obj)
    if isinstance(obj, list):
        return [redact(v, mapping) for v in obj]
    if isinstance(obj, dict):
        return {mapping.get(k, k): redact(v, mapping) for k, v in obj.items()}
    return obj


def is_record_file(path: Path) -> bool:
    """A JSON / JSON-lines file of lethe's own (not one a model library reads)."""
    return path.suffix in JSON_SUFFIXES and path.name not in MODEL_FILES


def redact_file(path: Path, mapping: Mapping[str, str]) -> bool:
    """Rewrite one JSON or JSON-lines file (atomically) if it holds a mapped string; True if it did.
    A file that does not parse is left alone (the trace scan still reads its bytes)."""
    try:
        text = path.read_text(encoding="utf-8")
        new = _redact_jsonl(text, mapping) if path.suffix == ".jsonl" else _redact_json(text, mapping)
    except ValueError:
        return False
    if new is None:
        return False
    data = new.encode("utf-8")
    atomic_write_bytes(path, lambda fh: fh.write(data))
    return True


def _redact_json(text: str, mapping: Mapping[str, str]) -> str | None:
    obj = json.loads(text)
    new = redact(obj, mapping)
    if new == obj:
        return None
    indent = 2 if "\n" in text.strip() else None
    return json.dumps(new, indent=indent, sort_keys=indent is not None and _sorted(obj))


def _sorted(obj: Any) -> bool:
    return isinstance(obj, dict) and list(obj) == sorted(obj)


def _redact_jsonl(text: str, mapping: Mapping[str, str]) -> str | None:
    lines, changed = [], False
    for line in text.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        new = redact(obj, mapping)
        changed |= new != obj
        lines.append(json.dumps(new))
    return "\n".join(lines) + "\n" if changed else None


def redact_tree(root: Path, mapping: Mapping[str, str]) -> list[Path]:
    """Redact every record file under ``root`` (a folder or one file); returns the files rewritten."""
    if not mapping or not root.exists():
        return []
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return [p for p in files if is_record_file(p) and redact_file(p, mapping)]
