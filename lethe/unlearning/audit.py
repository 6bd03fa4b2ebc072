"""Oracle-free audit of one unlearned model for one request (issue #19; docs/unlearning.md).

A retrained oracle is what proves unlearning in a benchmark, but a product cannot retrain one per
request. The audit instead compares the model's scores on the **forget pairs** (the (query, document)
pairs it was trained to score high) with a **non-member reference**: pairs of the same collection that
the model never saw, chosen when it was trained — the relevant pairs of training queries held out of
training (:func:`hold_out`) and registered with the model (``audit.json``), so they can never leak into
its weights. Figures:

* ``mia_auc`` — membership inference by score: the AUC of telling forget pairs from reference pairs
  (0.5: no signal). It passes below ``0.5 + max(mia_margin, 2 x its standard error under the null)``:
  a model that never saw the pairs sits near 0.5, up to the natural gap between two draws of relevant
  pairs (0.04-0.15 for retrained oracles in benchmarks/RESULTS.md) and the noise of a small request;
* ``ks_p`` — two-sample Kolmogorov-Smirnov p-value of forget-pair scores against the reference's;
* ``retain_ndcg10`` — nDCG@10 of the registered probe (the held-out queries, their BM25 candidates
  re-scored by the model), which must stay within ``retain_drop`` of the model before the request;
* ``relearn_mia_auc`` — the same MIA after a short relearning attack (a few steps on retained groups):
  knowledge only masked comes back here.

The verdict is ``pass`` when every check holds and the *original* model fails at least one (else
``inconclusive``: the request left too little trace for the audit to tell a model that forgot from one
that did not), ``fail`` otherwise. The figures are plain arrays in, typed figures out, so tests check
them on constructed cases and ``benchmarks/unlearn.py`` calls the same code.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lethe.unlearning.verify import ks_p, mia_auc, rounded

AUDIT_FILE = "audit.json"


@dataclass(frozen=True)
class AuditThresholds:
    """Named thresholds of the audit's verdict."""

    mia_margin: float = 0.10   # mia_auc <= 0.5 + max(mia_margin, 2 * null standard error)
    ks_p: float = 0.05         # ks_p >= this
    retain_drop: float = 0.01  # retain_ndcg10 >= retain_ndcg10_before - retain_drop

    def to_dict(self) -> dict[str, float]:
        """JSON-able."""
        return asdict(self)


@dataclass
class AuditReference:
    """What a model never saw, registered with it: non-member pairs and a retain probe (query qrels)."""

    nonmember_pairs: list[tuple[str, str]]
    probe_qrels: dict[str, dict[str, int]]

    def without(self, docs: Iterable[str], queries: Iterable[str] = ()) -> AuditReference:
        """The reference without forgotten documents / queries (a new version must not name them)."""
        docs, queries = set(docs), set(queries)
        pairs = [(q, d) for q, d in self.nonmember_pairs if d not in docs and q not in queries]
        probe = {q: {d: r for d, r in rel.items() if d not in docs} for q, rel in self.probe_qrels.items()
                 if q not in queries}
        return AuditReference(pairs, {q: rel for q, rel in probe.items() if rel})

    def save(self, path: Path) -> None:
        """Write as JSON."""
        data = {"nonmember_pairs": [list(p) for p in self.nonmember_pairs], "probe_qrels": self.probe_qrels}
        path.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> AuditReference:
        """Read what :meth:`save` wrote."""
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls([(q, d) for q, d in data["nonmember_pairs"]], data["probe_qrels"])


def hold_out(qrels: Mapping[str, Mapping[str, int]], frac: float = 0.15, min_queries: int = 20,
             max_queries: int = 100, seed: int = 0) -> tuple[set[str], AuditReference]:
    """Choose the held-out training queries (seeded) and the reference they give.

    Returns the held-out query ids (to remove from training) and the reference: their relevant pairs
    (non-members) and their qrels (the retain probe).
    """
    qids = sorted(q for q, rel in qrels.items() if any(r > 0 for r in rel.values()))
    n = min(max_queries, max(min_queries, int(round(len(qids) * frac))))
    if len(qids) < 2 * n:
        n = len(qids) // 4
    held = set(random.Random(seed).sample(qids, n)) if n else set()
    pairs = [(q, d) for q in sorted(held) for d, r in sorted(qrels[q].items()) if r > 0]
    return held, AuditReference(pairs, {q: dict(qrels[q]) for q in sorted(held)})


def mia_limit(n_forget: int, n_reference: int, margin: float) -> float:
    """Largest MIA AUC that passes: ``0.5 + max(margin, 2 * SE)``, SE the AUC's null standard error."""
    if not n_forget or not n_reference:
        return math.nan
    se = math.sqrt((n_forget + n_reference + 1) / (12.0 * n_forget * n_reference))
    return 0.5 + max(margin, 2.0 * se)


@dataclass
class Audit:
    """The audit's figures, thresholds and verdict for one model and one request."""

    forget_pairs: int
    reference_pairs: int
    mia_auc: float = math.nan
    mia_auc_max: float = math.nan
    mia_auc_original: float = math.nan
    ks_p: float = math.nan
    ks_p_original: float = math.nan
    relearn_mia_auc: float = math.nan
    retain_ndcg10: float = math.nan
    retain_ndcg10_before: float = math.nan
    probe_queries: int = 0
    seconds: float = 0.0
    thresholds: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    original_failed: list[str] = field(default_factory=list)
    verdict: str = ""

    @property
    def passed(self) -> bool:
        """True only for the verdict ``pass``."""
        return self.verdict == "pass"

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """JSON-able, rounded; NaN becomes None."""
        return rounded(self, digits)


def checks(mia: float, ks: float, retain: float, relearn: float, limit: float, retain_before: float,
           t: AuditThresholds) -> list[str]:
    """Names of the checks that fail (a figure not measured, NaN, fails)."""
    ok = {"mia_auc": mia <= limit, "ks_p": ks >= t.ks_p, "relearn_mia_auc": relearn <= limit,
          "retain_ndcg10": retain >= retain_before - t.retain_drop}
    if math.isnan(relearn):  # no relearning attack was run (e.g. no retained groups): not a check
        ok.pop("relearn_mia_auc")
    return [k for k, v in ok.items() if not v]


def judge(audit: Audit, t: AuditThresholds, original_forget: Sequence[float] | None = None,
          reference_original: Sequence[float] | None = None) -> Audit:
    """Fill ``failed``, ``original_failed`` and ``verdict``."""
    audit.thresholds = t.to_dict()
    audit.failed = checks(audit.mia_auc, audit.ks_p, audit.retain_ndcg10, audit.relearn_mia_auc,
                          audit.mia_auc_max, audit.retain_ndcg10_before, t)
    if original_forget is not None and reference_original is not None:
        audit.mia_auc_original = mia_auc(original_forget, reference_original)
        audit.ks_p_original = ks_p(original_forget, reference_original)
        audit.original_failed = [k for k, bad in (("mia_auc", not audit.mia_auc_original <= audit.mia_auc_max),
                                                  ("ks_p", not audit.ks_p_original >= t.ks_p)) if bad]
    if audit.failed:
        audit.verdict = "fail"
    elif original_forget is not None and not audit.original_failed:
        audit.verdict = "inconclusive"
    else:
        audit.verdict = "pass"
    return audit


ScoreFn = Callable[[Any, Sequence[tuple[str, str]]], np.ndarray]


def run_audit(scorer: Any, forget_pairs: Sequence[tuple[str, str]], reference: AuditReference,
              score: ScoreFn, retain: Callable[[Any], float], retain_before: float,
              original: Any | None = None, relearn: Callable[[Any], Any] | None = None,
              thresholds: AuditThresholds | None = None) -> Audit:
    """Audit ``scorer`` (unlearned) on ``forget_pairs`` against ``reference``.

    ``score(model, pairs)`` gives pair scores; ``retain(model)`` the probe's nDCG@10; ``relearn(model)``
    a copy after the relearning attack (None: not run); ``original`` the model before the request
    (its figures decide ``inconclusive``).
    """
    t0 = time.perf_counter()
    t = thresholds or AuditThresholds()
    ref_pairs = list(reference.nonmember_pairs)
    audit = Audit(len(forget_pairs), len(ref_pairs), probe_queries=len(reference.probe_qrels))
    audit.mia_auc_max = mia_limit(len(forget_pairs), len(ref_pairs), t.mia_margin)
    f, r = score(scorer, forget_pairs), score(scorer, ref_pairs)
    audit.mia_auc, audit.ks_p = mia_auc(f, r), ks_p(f, r)
    audit.retain_ndcg10, audit.retain_ndcg10_before = retain(scorer), retain_before
    if relearn is not None and len(forget_pairs):
        attacked = relearn(scorer)
        audit.relearn_mia_auc = mia_auc(score(attacked, forget_pairs), score(attacked, ref_pairs))
    of = orr = None
    if original is not None:
        of, orr = score(original, forget_pairs), score(original, ref_pairs)
    judge(audit, t, of, orr)
    audit.seconds = time.perf_counter() - t0
    return audit
