"""Dataset loading: BEIR layout directories (plain or .gz), JSONL files, HuggingFace `datasets`.

Every loader validates the whole input before returning anything; problems are collected and
raised together as :class:`~lethe.errors.DataErrors`, each naming the file, the line and the
problem, so a caller never ingests half a collection.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lethe.errors import DataError, DataErrors, DatasetNotFound, LetheError
from lethe.types import Doc, Qrels, Query

#: owner fields tried, in order, when none is configured
DEFAULT_OWNER_FIELDS = ("metadata.owner_user_id", "metadata.authors")
#: what reading a (possibly gzipped) text file can raise besides a decoding problem
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
#: what ``--data`` must point at
EXPECTED_DATA = "expected a BEIR directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a corpus JSONL file"


@dataclass
class Dataset:
    """A test collection: corpus, queries and qrels per split."""

    name: str
    corpus: dict[str, Doc]
    queries: dict[str, Query]
    qrels: dict[str, Qrels] = field(default_factory=dict)
    path: Path | None = None

    def split_queries(self, split: str) -> dict[str, Query]:
        """The queries judged in ``split`` (in qrels order)."""
        qrels = self.split_qrels(split)
        return {qid: self.queries[qid] for qid in qrels}

    def split_qrels(self, split: str) -> Qrels:
        """The qrels of ``split``; the error lists the splits present."""
        if split not in self.qrels:
            raise DatasetNotFound(
                f"dataset {self.name!r} has no qrels split {split!r}; "
                f"choose from {sorted(self.qrels)}"
            )
        return self.qrels[split]

    def owners(self) -> dict[str, list[str]]:
        """Owner id -> ids of the documents they own."""
        out: dict[str, list[str]] = {}
        for doc in self.corpus.values():
            for owner in doc.owners:
                out.setdefault(owner, []).append(doc.id)
        return out


def resolve_dataset_path(name_or_path: str | Path, data_root: str | Path | None = None) -> Path:
    """A directory for ``name_or_path``: an existing path, else ``$LETHE_DATA/<name>``."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    root = data_root if data_root is not None else os.environ.get("LETHE_DATA")
    if root:
        candidate = Path(root).expanduser() / str(name_or_path)
        if candidate.exists():
            return candidate
        avail = (
            sorted(p.name for p in Path(root).iterdir() if p.is_dir())
            if Path(root).is_dir()
            else []
        )
        raise DatasetNotFound(
            f"dataset {str(name_or_path)!r} not found in LETHE_DATA={root}; available: {avail}"
        )
    raise DatasetNotFound(
        f"dataset {str(name_or_path)!r} is not a path and LETHE_DATA is not set; "
        "set LETHE_DATA to the folder holding BEIR-layout collections or pass a path"
    )


#: what to do with qrels naming documents absent from the corpus
UNKNOWN_QRELS_MODES = ("warn", "error", "keep", "drop")
#: what to do with documents whose title and text are both empty
EMPTY_DOC_MODES = ("error", "skip")


def _check_mode(value: str, choices: tuple[str, ...], what: str) -> None:
    """Raise :class:`LetheError` listing ``choices`` if ``value`` is not one of them."""
    if value not in choices:
        raise LetheError(f"{what}={value!r} is not valid; choose from {list(choices)}")


def _check_modes(unknown_qrels: str, empty_docs: str) -> None:
    """Validate both loader modes (before any file is read)."""
    _check_mode(unknown_qrels, UNKNOWN_QRELS_MODES, "unknown_qrels")
    _check_mode(empty_docs, EMPTY_DOC_MODES, "empty_docs")


def load_dataset(
    name_or_path: str | Path,
    owner_field: str | None = None,
    data_root: str | Path | None = None,
    unknown_qrels: str = "warn",
    empty_docs: str = "error",
) -> Dataset:
    """Load a collection by name (``$LETHE_DATA``), BEIR directory, JSONL file or ``hf:org/name``.

    ``unknown_qrels`` (judgments of documents outside the corpus, e.g. the TREC DL passage subsets):
    ``warn`` (default: kept, as trec_eval and ir-measures score them — never retrieved, still in the
    ideal DCG — with a one-line warning and count), ``keep`` (silently), ``drop`` or ``error``.
    ``empty_docs``: ``error`` (default) or ``skip`` (e.g. Cranfield has two empty records).
    Invalid modes raise :class:`LetheError` before anything is read.
    """
    _check_modes(unknown_qrels, empty_docs)
    text = str(name_or_path)
    if text.startswith("hf:"):
        return load_hf(text[3:], owner_field=owner_field)
    path = resolve_dataset_path(name_or_path, data_root)
    if path.is_file():
        corpus = load_corpus_jsonl(path, owner_field, empty_docs)
        return Dataset(name=path.stem, corpus=corpus, queries={}, path=path)
    return load_beir(path, owner_field, unknown_qrels, empty_docs)


def load_beir(
    path: str | Path,
    owner_field: str | None = None,
    unknown_qrels: str = "warn",
    empty_docs: str = "error",
) -> Dataset:
    """Load a BEIR-layout directory: corpus, queries and every ``qrels/<split>.tsv[.gz]``."""
    _check_modes(unknown_qrels, empty_docs)
    root = Path(path)
    corpus_file = _find(root, "corpus.jsonl")
    queries_file = _find(root, "queries.jsonl")
    corpus = load_corpus_jsonl(corpus_file, owner_field, empty_docs)
    queries = load_queries_jsonl(queries_file)
    qrels: dict[str, Qrels] = {}
    qrels_dir = root / "qrels"
    if qrels_dir.is_dir():
        for f in sorted(qrels_dir.iterdir()):
            split = f.name.split(".")[0]
            if f.name.endswith((".tsv", ".tsv.gz")):
                known = None if unknown_qrels in ("keep", "warn") else corpus
                qrels[split] = load_qrels_tsv(
                    f, known, queries, drop_unknown=unknown_qrels == "drop"
                )
                if unknown_qrels == "warn":
                    _warn_outside(f, qrels[split], corpus)
    return Dataset(name=root.name, corpus=corpus, queries=queries, qrels=qrels, path=root)


def _warn_outside(path: Path, qrels: Qrels, corpus: dict[str, Doc]) -> None:
    """One warning line counting the judgments of documents the corpus does not hold."""
    outside = [d for judged in qrels.values() for d in judged if d not in corpus]
    if outside:
        logging.getLogger("lethe.data").warning(
            "%s: %d judgment(s) of %d document(s) outside the corpus kept; they count as never retrieved "
            "(unknown_qrels='warn'; 'drop' or 'error' to change)", path, len(outside), len(set(outside)))


def _find(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``; DatasetNotFound naming ``root`` if neither exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise DatasetNotFound(f"{root}: no {name} or {name}.gz (expected BEIR layout); {EXPECTED_DATA}")


def iter_lines(path: Path, errors: list[DataError] | None = None) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line). Invalid UTF-8 raises a DataError naming the line, or,
    when an ``errors`` list is given, is recorded there and the line skipped (so later problems
    are reported too)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                err = DataError(path, lineno, f"invalid UTF-8 at byte {exc.start}")
                if errors is None:
                    raise err from exc
                errors.append(err)


def _iter_json(path: Path, errors: list[DataError]) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        for lineno, line in iter_lines(path, errors):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(
                    DataError(path, lineno, f"malformed JSON: {exc.msg} (column {exc.colno})")
                )
                continue
            if not isinstance(obj, dict):
                errors.append(DataError(path, lineno, "expected a JSON object"))
                continue
            yield lineno, obj
    except DataError as exc:
        errors.append(exc)
    except READ_ERRORS as exc:
        errors.append(_read_error(path, exc))


def _read_error(path: Path, exc: BaseException, what: str = "file") -> DataError:
    """A one-line DataError for a file that cannot be opened or read (or decompressed)."""
    if isinstance(exc, IsADirectoryError):
        return DataError(path, None, f"is a directory, expected a {what}")
    if isinstance(exc, FileNotFoundError):
        return DataError(path, None, f"no such {what}")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    return DataError(path, None, f"cannot read {what}: {' '.join(str(reason).split())}")


def _get_field(obj: dict[str, Any], dotted: str) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def extract_owners(obj: dict[str, Any], owner_field: str | None) -> tuple[str, ...]:
    """Owners of a record from a dotted field (scalar or list); several fields may be tried."""
    fields = (owner_field,) if owner_field else DEFAULT_OWNER_FIELDS
    for name in fields:
        value = _get_field(obj, name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        owners = tuple(dict.fromkeys(str(v).strip() for v in values if str(v).strip()))
        if owners:
            return owners
    return ()


def _check_id(obj: dict[str, Any], path: Path, lineno: int, errors: list[DataError]) -> str | None:
    raw = obj.get("_id", obj.get("id"))
    if raw is None or str(raw).strip() == "":
        errors.append(DataError(path, lineno, "missing field '_id'"))
        return None
    return str(raw)


def load_corpus_jsonl(
    path: str | Path, owner_field: str | None = None, empty_docs: str = "error"
) -> dict[str, Doc]:
    """Load a corpus JSONL (``_id``, ``title``, ``text``, ``metadata``), validating every line."""
    _check_mode(empty_docs, EMPTY_DOC_MODES, "empty_docs")
    path = Path(path)
    errors: list[DataError] = []
    corpus: dict[str, Doc] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in _iter_json(path, errors):
        doc_id = _check_id(obj, path, lineno, errors)
        if doc_id is None:
            continue
        if doc_id in first_line:
            errors.append(
                DataError(
                    path, lineno, f"duplicate _id {doc_id!r} (first on line {first_line[doc_id]})"
                )
            )
            continue
        title, text = str(obj.get("title") or ""), str(obj.get("text") or "")
        if not title.strip() and not text.strip():
            if empty_docs == "skip":
                continue
            errors.append(DataError(path, lineno, f"document {doc_id!r} has empty text and title"))
            continue
        first_line[doc_id] = lineno
        metadata = obj.get("metadata") or {}
        corpus[doc_id] = Doc(
            id=doc_id,
            text=text,
            title=title,
            owners=extract_owners(obj, owner_field),
            metadata=metadata,
        )
    if errors:
        raise DataErrors(errors)
    if not corpus:
        raise DataError(path, None, f"no documents; {EXPECTED_DATA}")
    return corpus


def load_queries_jsonl(path: str | Path) -> dict[str, Query]:
    """Load queries JSONL (``_id``, ``text``, ``metadata``); owners: ``metadata.owner_user_id``."""
    path = Path(path)
    errors: list[DataError] = []
    queries: dict[str, Query] = {}
    for lineno, obj in _iter_json(path, errors):
        qid = _check_id(obj, path, lineno, errors)
        if qid is None:
            continue
        if qid in queries:
            errors.append(DataError(path, lineno, f"duplicate _id {qid!r}"))
            continue
        text = str(obj.get("text") or "")
        if not text.strip():
            errors.append(DataError(path, lineno, f"query {qid!r} has empty text"))
            continue
        owners = extract_owners(obj, "metadata.owner_user_id")
        queries[qid] = Query(id=qid, text=text, owners=owners, metadata=obj.get("metadata") or {})
    if errors:
        raise DataErrors(errors)
    return queries


def load_qrels_tsv(
    path: str | Path,
    corpus: dict[str, Doc] | None = None,
    queries: dict[str, Query] | None = None,
    drop_unknown: bool = False,
) -> Qrels:
    """Load ``query-id  corpus-id  score`` TSV (header optional); unknown ids are errors.

    With ``drop_unknown`` judgments of documents missing from ``corpus`` are left out instead.
    """
    path = Path(path)
    errors: list[DataError] = []
    qrels: Qrels = {}
    try:
        for lineno, line in iter_lines(path, errors):
            row = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"), [])
            if not row or (lineno == 1 and row[0] in ("query-id", "query_id", "qid")):
                continue
            if len(row) == 4:  # TREC qrels: qid iter docid rel
                row = [row[0], row[2], row[3]]
            if len(row) != 3:
                errors.append(
                    DataError(path, lineno, f"expected 3 tab-separated fields, got {len(row)}")
                )
                continue
            qid, did, rel = row
            try:
                score = int(float(rel))
            except ValueError:
                errors.append(DataError(path, lineno, f"relevance {rel!r} is not a number"))
                continue
            if queries is not None and qid not in queries:
                errors.append(DataError(path, lineno, f"unknown query-id {qid!r}"))
                continue
            if corpus is not None and did not in corpus:
                if drop_unknown:
                    continue
                errors.append(DataError(path, lineno, f"unknown corpus-id {did!r}"))
                continue
            qrels.setdefault(qid, {})[did] = score
    except DataError as exc:
        errors.append(exc)
    except READ_ERRORS as exc:
        errors.append(_read_error(path, exc, "qrels file"))
    if errors:
        raise DataErrors(errors)
    return qrels


def load_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    """Load a TREC run file (``qid Q0 docid rank score tag``, whitespace-separated, ``.gz`` allowed).

    A missing, unreadable or malformed file raises :class:`DataError` naming the file (and line).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, None, "is a directory, expected a TREC run file")
    if not path.exists():
        raise DataError(path, None, "no such run file")
    run: dict[str, dict[str, float]] = {}
    try:
        for lineno, line in iter_lines(path):
            _add_run_line(run, path, lineno, line.split())
    except READ_ERRORS as exc:
        raise _read_error(path, exc, "TREC run file") from exc
    return run


def _add_run_line(run: dict[str, dict[str, float]], path: Path, lineno: int, parts: list[str]) -> None:
    """Add one split run line to ``run`` (blank lines are skipped); a bad line raises DataError."""
    if not parts:
        return
    if len(parts) != 6:
        hint = "; ids cannot contain whitespace in a TREC run" if len(parts) > 6 else ""
        raise DataError(
            path, lineno, f"expected 6 fields (qid Q0 docid rank score tag), got {len(parts)}{hint}"
        )
    try:
        run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    except ValueError as exc:
        raise DataError(path, lineno, f"score {parts[4]!r} is not a number") from exc


def load_hf(name: str, owner_field: str | None = None, split: str = "test") -> Dataset:
    """Load a BEIR dataset from the HuggingFace hub (``BeIR/scifact`` + ``BeIR/scifact-qrels``).

    Needs network access to the hub; offline it raises with a hint to use a local copy.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        from lethe.errors import MissingDependency

        raise MissingDependency("loading from the hub needs `pip install datasets`") from exc
    try:
        corpus_ds = datasets.load_dataset(name, "corpus", split="corpus")
        queries_ds = datasets.load_dataset(name, "queries", split="queries")
        qrels_ds = datasets.load_dataset(f"{name}-qrels", split=split)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise DatasetNotFound(
            f"cannot load {name!r} from the HuggingFace hub ({type(exc).__name__}: {exc}); "
            "offline, point LETHE_DATA at a BEIR-layout copy instead"
        ) from exc
    return dataset_from_records(name, corpus_ds, queries_ds, {split: qrels_ds}, owner_field)


def dataset_from_records(
    name: str,
    corpus_rows: Any,
    query_rows: Any,
    qrels_rows: dict[str, Any],
    owner_field: str | None = None,
) -> Dataset:
    """Build a validated :class:`Dataset` from iterables of BEIR-shaped dict records."""
    errors: list[DataError] = []
    corpus: dict[str, Doc] = {}
    for i, obj in enumerate(corpus_rows, start=1):
        doc_id = _check_id(obj, Path(f"{name}/corpus"), i, errors)
        if doc_id is None:
            continue
        if doc_id in corpus:
            errors.append(DataError(f"{name}/corpus", i, f"duplicate _id {doc_id!r}"))
            continue
        corpus[doc_id] = Doc(
            id=doc_id,
            text=str(obj.get("text") or ""),
            title=str(obj.get("title") or ""),
            owners=extract_owners(obj, owner_field),
            metadata=obj.get("metadata") or {},
        )
    queries = {str(q["_id"]): Query(id=str(q["_id"]), text=str(q["text"])) for q in query_rows}
    qrels: dict[str, Qrels] = {}
    for split, rows in qrels_rows.items():
        for i, row in enumerate(rows, start=1):
            qid, did = str(row["query-id"]), str(row["corpus-id"])
            if did not in corpus:
                errors.append(DataError(f"{name}/qrels/{split}", i, f"unknown corpus-id {did!r}"))
                continue
            qrels.setdefault(split, {}).setdefault(qid, {})[did] = int(row["score"])
    if errors:
        raise DataErrors(errors)
    return Dataset(name=name, corpus=corpus, queries=queries, qrels=qrels)
