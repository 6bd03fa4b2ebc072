"""Verification of weight unlearning against a retrained oracle (METHODS card 0, TOFU's forget quality).

Every figure is computed for the original model, the unlearned model and the oracle (the same recipe
retrained without the forgotten data), from plain score arrays, so the same functions serve the
bi-encoder, the cross-encoder and tests on constructed cases:

* ``ks_p`` — two-sample Kolmogorov–Smirnov p-value between the unlearned model's and the oracle's
  scores on the forget pairs (high = indistinguishable from never having trained on them);
* ``mia_auc`` — membership inference by score: AUC of telling forget pairs from never-seen pairs
  (0.5 = no signal); compared with the oracle's AUC on the same pairs, which is the natural gap;
* ``probe_auc`` — a logistic-regression probe trained on frozen document embeddings to tell training
  documents from unseen ones, applied to the forgotten documents vs other unseen ones (card 12);
* ``relearn_gap`` — after a few steps on related *retained* data, how far the forget-pair scores come
  back above the oracle's (mean difference; <= 0 means no resurgence);
* retain utility (nDCG@10) and wall time vs retraining.

The verdict is ``exact`` only for methods that never let the data in (``retrain``, ``sharded``) *and*
whose lineage proves it, ``unlearned`` only when every threshold holds (``suppressed`` instead for
output-level methods such as ULD, whose weights still hold the data), ``not_unlearned`` otherwise —
and ``inconclusive`` instead of ``unlearned`` when the original model passes the same thresholds: the
forget set then left too little trace for the test to mean anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

EXACT_METHODS = ("retrain", "sharded")


@dataclass(frozen=True)
class Thresholds:
    """Preset thresholds of the verdict ``unlearned`` (issue #5)."""

    mia_gap: float = 0.05      # |mia_auc - mia_auc_oracle| <= mia_gap
    ks_p: float = 0.05         # ks_p >= this
    retain_drop: float = 0.01  # retain_ndcg10 >= retain_ndcg10_original - retain_drop


@dataclass
class Figures:
    """The verification figures of one unlearned model (NaN where not measured)."""

    method: str
    ks_p: float = math.nan
    mia_auc: float = math.nan
    mia_auc_oracle: float = math.nan
    mia_auc_original: float = math.nan
    probe_auc: float = math.nan
    probe_auc_oracle: float = math.nan
    relearn_gap: float = math.nan
    retain_ndcg10: float = math.nan
    retain_ndcg10_original: float = math.nan
    retain_ndcg10_oracle: float = math.nan
    seconds: float = math.nan
    seconds_retrain: float = math.nan
    exact: bool = False
    output_only: bool = False  # e.g. ULD: scores suppressed, weights unchanged
    original_passes: bool = False  # the original model itself meets every threshold (see :func:`verdict`)
    verdict: str = ""
    failed: list[str] = field(default_factory=list)

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """JSON-able, rounded; NaN becomes None."""
        return rounded(self, digits)


def rounded(figures: Any, digits: int = 4) -> dict[str, Any]:
    """A dataclass of figures as a JSON-able dict: floats rounded, NaN (not measured) as None."""
    out: dict[str, Any] = {}
    for k, v in asdict(figures).items():
        if isinstance(v, float):
            v = None if math.isnan(v) else round(v, digits)
        out[k] = v
    return out


def ks_p(scores: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sample KS p-value (NaN when either side is empty)."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)
    if not len(a) or not len(b):
        return math.nan
    return float(ks_2samp(a, b).pvalue)


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """ROC AUC that a positive outscores a negative (ties count half): Mann–Whitney U / (n_p n_n)."""
    from scipy.stats import rankdata

    p, n = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    if not len(p) or not len(n):
        return math.nan
    ranks = rankdata(np.concatenate([p, n]))
    u = ranks[: len(p)].sum() - len(p) * (len(p) + 1) / 2
    return float(u / (len(p) * len(n)))


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """Score-based membership inference: higher score is read as "was trained on"."""
    return auc(member_scores, nonmember_scores)


def probe_auc(train_members: np.ndarray, train_nonmembers: np.ndarray, forgotten: np.ndarray,
              unseen: np.ndarray, seed: int = 0) -> float:
    """Linear probe (logistic regression) on embeddings: fit members vs non-members, then the AUC of
    its membership probability on ``forgotten`` vs ``unseen`` (0.5 = the probe sees nothing)."""
    from sklearn.linear_model import LogisticRegression

    if not len(train_members) or not len(train_nonmembers) or not len(forgotten) or not len(unseen):
        return math.nan
    x = np.vstack([train_members, train_nonmembers])
    y = np.r_[np.ones(len(train_members)), np.zeros(len(train_nonmembers))]
    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(x, y)
    return auc(clf.predict_proba(forgotten)[:, 1], clf.predict_proba(unseen)[:, 1])


def relearn_gap(relearned_forget_scores: Sequence[float], oracle_forget_scores: Sequence[float]) -> float:
    """Mean forget-pair score after the relearning attack minus the oracle's mean (> 0: it came back)."""
    a, b = np.asarray(relearned_forget_scores, dtype=float), np.asarray(oracle_forget_scores, dtype=float)
    if not len(a) or not len(b):
        return math.nan
    return float(a.mean() - b.mean())


def verdict(fig: Figures, thresholds: Thresholds | None = None) -> Figures:
    """Fill ``fig.verdict`` (and ``fig.failed``, the thresholds that did not hold)."""
    t = thresholds or Thresholds()
    checks = {
        "mia_gap": abs(fig.mia_auc - fig.mia_auc_oracle) <= t.mia_gap,
        "ks_p": fig.ks_p >= t.ks_p,
        "retain": fig.retain_ndcg10 >= fig.retain_ndcg10_original - t.retain_drop,
    }  # comparisons with NaN are False: a figure not measured never passes
    fig.failed = [k for k, ok in checks.items() if not ok]
    if fig.exact and fig.method in EXACT_METHODS:
        fig.verdict = "exact"
    elif not fig.failed and fig.original_passes:
        fig.verdict = "inconclusive"  # the test cannot tell this model from one that never unlearned
    elif not fig.failed:
        fig.verdict = "suppressed" if fig.output_only else "unlearned"
    else:
        fig.verdict = "not_unlearned"
    return fig
