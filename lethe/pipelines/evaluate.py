"""Evaluation with ir-measures: aggregate and per-query figures, TREC run files."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from lethe.data import Dataset
from lethe.errors import DataError, LetheError
from lethe.retrieval.base import atomic_write_bytes
from lethe.types import Hit, Qrels, Run

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")


def parse_measures(measures: Iterable[str]) -> list:
    """ir-measures objects from strings such as ``nDCG@10``; bad names raise with the reason."""
    import ir_measures

    out = []
    for m in measures:
        try:
            out.append(ir_measures.parse_measure(m))
        except (ValueError, NameError, SyntaxError) as exc:
            raise LetheError(f"unknown measure {m!r} ({exc}); e.g. nDCG@10, R@100, RR@10, AP, P@5") from exc
    return out


def hits_to_run(query_ids: Sequence[str], hits: Sequence[Sequence[Hit]]) -> Run:
    """Turn per-query hit lists into a run dict."""
    return {qid: {h.doc_id: float(h.score) for h in hs} for qid, hs in zip(query_ids, hits, strict=True)}


def evaluate(run: Run, qrels: Qrels, measures: Iterable[str] = DEFAULT_MEASURES
             ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate figures (by measure string) and per-query figures (query -> measure -> value).

    Queries judged in ``qrels`` but absent from ``run`` count as zero (ir-measures' convention).
    """
    import ir_measures

    parsed = parse_measures(measures)
    qrels = {q: d for q, d in qrels.items() if d}
    run = {q: d for q, d in run.items() if q in qrels}
    full_run = {q: run.get(q, {}) for q in qrels}
    full_run = {q: d if d else {"__none__": 0.0} for q, d in full_run.items()}
    agg = ir_measures.calc_aggregate(parsed, qrels, full_run)
    per_query: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc(parsed, qrels, full_run):
        per_query.setdefault(m.query_id, {})[str(m.measure)] = float(m.value)
    return {str(k): float(v) for k, v in agg.items()}, per_query


def delta_ci(per_query: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
             measure: str = "nDCG@10", level: float = 0.95, resamples: int = 10_000, seed: int = 0,
             ) -> tuple[float, float]:
    """Paired-bootstrap ``level`` interval of the mean per-query difference ``per_query - baseline`` in
    ``measure`` (queries resampled with replacement; scipy's percentile bootstrap). Both must hold the
    same queries (the per-query figures of :func:`evaluate`); an interval above 0 means the system beats
    the baseline on this query sample."""
    import numpy as np
    from scipy.stats import bootstrap

    if set(per_query) != set(baseline):
        raise LetheError(f"delta_ci needs the same queries: {len(set(per_query) ^ set(baseline))} differ")
    qids = sorted(per_query)
    diff = np.array([per_query[q][measure] - baseline[q][measure] for q in qids], dtype=np.float64)
    if len(diff) < 2:
        raise LetheError(f"delta_ci needs at least 2 queries (got {len(diff)})")
    if np.all(diff == diff[0]):
        return float(diff[0]), float(diff[0])
    res = bootstrap((diff,), np.mean, confidence_level=level, n_resamples=resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = "lethe") -> None:
    """Write a TREC run file atomically (ranks by descending score).

    Every id (and the tag) is checked first: one that is empty or holds whitespace cannot be represented
    in the format, and raises :class:`DataError` naming ``path`` before anything is written.
    """
    check_trec_fields(run, path, tag)
    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [f"{qid} Q0 {d} {r} {s:.6f} {tag}" for r, (d, s) in enumerate(ranked, start=1)]
    data = ("\n".join(lines) + "\n").encode()
    try:
        atomic_write_bytes(path, lambda fh: fh.write(data))
    except OSError as exc:
        raise DataError(path, None, f"cannot write the run file: {exc.strerror or exc}") from exc


def check_trec_fields(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str) -> None:
    """Raise DataError (naming ``path``) for the first query id, doc id or tag a TREC run cannot hold."""
    _check_trec_field("tag", tag, path)
    for qid, docs in run.items():
        _check_trec_field("query id", qid, path)
        for doc_id in docs:
            _check_trec_field("doc id", doc_id, path)


def _check_trec_field(what: str, value: str, path: str | Path) -> None:
    """One whitespace-separated field: non-empty and without whitespace (as ``str.split`` sees it)."""
    text = str(value)
    if text.split() != [text]:
        problem = "is empty" if not text else "contains whitespace"
        raise DataError(path, None, f"{what} {text!r} {problem}; a TREC run file cannot hold it")


def write_per_query(per_query: Mapping[str, Mapping[str, float]], path: str | Path) -> None:
    """Write per-query figures as TSV (query, measure, value) atomically."""
    rows = [f"{q}\t{m}\t{v:.6f}" for q, ms in per_query.items() for m, v in ms.items()]
    data = ("query_id\tmeasure\tvalue\n" + "\n".join(rows) + "\n").encode()
    atomic_write_bytes(path, lambda fh: fh.write(data))


def evaluate_retriever(searcher, queries: Mapping[str, str], qrels: Qrels,  # noqa: ANN001
                       measures: Iterable[str] = DEFAULT_MEASURES, k: int = 100,
                       out_dir: str | Path | None = None, tag: str = "lethe",
                       ) -> tuple[dict[str, float], dict[str, dict[str, float]], Run]:
    """Search every judged query with ``searcher`` (``.search(texts, k)``) and evaluate.

    With ``out_dir``, writes ``<tag>.run`` (TREC) and ``<tag>.perquery.tsv`` there.
    """
    qids = [q for q in qrels if q in queries]
    hits = searcher.search([queries[q] for q in qids], k)
    run = hits_to_run(qids, hits)
    agg, per_query = evaluate(run, {q: qrels[q] for q in qids}, measures)
    if out_dir is not None:
        out = Path(out_dir)
        write_trec_run(run, out / f"{tag}.run", tag=tag)
        write_per_query(per_query, out / f"{tag}.perquery.tsv")
    return agg, per_query, run


def evaluate_system(system, dataset: Dataset, measures: str | Iterable[str] = "nDCG@10 R@100",  # noqa: ANN001
                    split: str | None = None, k: int = 100) -> dict[str, float]:
    """Aggregate figures of a retriever or pipeline (``.search(texts, k)``) on a dataset's judged queries:
    ``split`` (default ``test``, else the dataset's only split); ``measures`` as ir-measures names, in one
    string or a list. This is ``lethe.evaluate``."""
    names = measures.split() if isinstance(measures, str) else list(measures)
    splits = sorted(dataset.qrels)
    split = split or ("test" if "test" in splits else splits[0] if len(splits) == 1 else "")
    if split not in dataset.qrels:
        raise LetheError(f"{dataset.name} has no qrels split {split!r}; choose one of {', '.join(splits)}")
    qrels = dataset.split_qrels(split)
    queries = {q: dataset.queries[q].text for q in qrels if q in dataset.queries}
    return evaluate_retriever(system, queries, qrels, names, k)[0]
