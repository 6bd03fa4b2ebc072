"""lethe: search that can forget.

The front door (docs/architecture.md)::

    import lethe
    ws = lethe.Workspace.open(".lethe", data="scifact")          # ingest + BM25 + dense
    pipe = ws.retriever("rrf") % 20 >> ws.reranker("smollm2", mode="qlm")
    lethe.evaluate(ws.retriever("bm25"), ws.dataset, "nDCG@10 R@100")
    receipt = ws.forget(owners=["28"], reason="request")        # --unlearn auto
    assert ws.verify().ok

Names are imported on first use, so ``import lethe`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "Workspace": "lethe.pipelines.workspace",
    "evaluate": "lethe.pipelines.evaluate",
    "load_dataset": "lethe.data",
    "Pipeline": "lethe.pipeline",
    "Result": "lethe.pipeline",
    "Receipt": "lethe.receipts",
    "VerifyResult": "lethe.receipts",
    "ForgetRequest": "lethe.types",
    "Doc": "lethe.types",
    "Query": "lethe.types",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lethe' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name if name != "evaluate" else "evaluate_system")
