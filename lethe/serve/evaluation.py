"""Before/after figures for the service's chart: nDCG@10 of BM25 on the workspace's test queries.

Available when the workspace was built from a dataset with a ``test`` qrels split (its path is in the
workspace metadata). Queries forgotten by a request are left out, as ``lethe eval`` does.
"""

from __future__ import annotations

import threading
from typing import Any

from lethe.errors import LetheError
from lethe.pipelines.workspace import Workspace

MEASURE = "nDCG@10"


class Evaluator:
    """Loads each tenant's dataset once and scores the BM25 index on its unforgotten test queries."""

    def __init__(self) -> None:
        self._datasets: dict[str, Any] = {}
        self._lock = threading.Lock()

    def dataset(self, ws: Workspace) -> Any:
        """The workspace's dataset with a test split, or None."""
        from lethe.data import load_dataset

        meta = ws.meta()
        source = meta.get("dataset_path") or meta.get("dataset")
        if not source:
            return None
        with self._lock:
            if source not in self._datasets:
                try:
                    ds = load_dataset(source, unknown_qrels="keep")
                except LetheError:
                    ds = None
                self._datasets[source] = ds if ds is not None and "test" in ds.qrels else None
            return self._datasets[source]

    def score(self, ws: Workspace) -> float | None:
        """nDCG@10 of the BM25 index now, or None when there is nothing to evaluate."""
        from lethe.pipelines.evaluate import evaluate_retriever

        ds = self.dataset(ws)
        if ds is None or not any(i.ref.name == "bm25" for i in ws.indexes()):
            return None
        gone = ws.ledger.forgotten_hashes("query")
        qrels = {q: d for q, d in ds.split_qrels("test").items()
                 if q in ds.queries and ws.ledger.hash_id(q, "query") not in gone}
        if not qrels:
            return None
        queries = {q: ds.queries[q].text for q in qrels}
        agg, _, _ = evaluate_retriever(ws.load_index("bm25"), queries, qrels, [MEASURE], 100)
        return float(agg[MEASURE])
