"""Typed results of the front door: a forget request's receipt and a workspace check (docs/forgetting.md).

The ledger stores receipts as JSON; these classes are how Python code reads them: ``receipt.level``,
``receipt.models[0].audit.verdict``, ``ws.verify().ok``. ``raw`` keeps the full JSON object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verification:
    """The post-conditions a forget request checked: every index equals a rebuild without the data, ..."""

    all_passed: bool
    checks: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return "all checks passed" if self.all_passed else "some checks failed: " + ", ".join(
            k for k, v in self.checks.items() if v is False)


@dataclass(frozen=True)
class AuditFigures:
    """The oracle-free audit of one unlearned model (``lethe.unlearning.audit``)."""

    verdict: str
    mia_auc: float | None
    mia_auc_max: float | None
    ks_p: float | None
    retain_ndcg10: float | None
    retain_ndcg10_before: float | None
    relearn_mia_auc: float | None
    failed: tuple[str, ...]
    thresholds: dict[str, float]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AuditFigures | None:
        """From a receipt's ``audit`` object (None stays None)."""
        if not d:
            return None
        return cls(d.get("verdict", ""), d.get("mia_auc"), d.get("mia_auc_max"), d.get("ks_p"), d.get("retain_ndcg10"),
                   d.get("retain_ndcg10_before"), d.get("relearn_mia_auc"), tuple(d.get("failed", ())),
                   dict(d.get("thresholds", {})))


@dataclass(frozen=True)
class ModelStep:
    """What one request did to one model: the route taken, the new version, the level, the audit."""

    model: str
    level: str
    route: str | None = None
    new: str | None = None
    audit: AuditFigures | None = None
    why: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelStep:
        """From one entry of a receipt's ``unlearning`` list."""
        return cls(d["model"], d.get("level", ""), d.get("route", d.get("method")), d.get("new"),
                   AuditFigures.from_dict(d.get("audit")), d.get("why"))


@dataclass(frozen=True)
class Receipt:
    """A forget request's receipt."""

    request_id: str
    level: str
    reached: bool
    model_level: str
    verification: Verification
    models: tuple[ModelStep, ...]
    still_trained_on_data: tuple[str, ...]
    chain_head: str
    noop: bool = False
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_report(cls, report: Any) -> Receipt:
        """From a :class:`lethe.pipelines.forget.ForgetReport`."""
        r = report.receipt or {}
        checks = r.get("verification", {}) or {}
        return cls(report.request_id, report.level, report.reached, r.get("model_level", ""),
                   Verification(bool(checks.get("all_passed", report.level == "deleted")), dict(checks)),
                   tuple(ModelStep.from_dict(m) for m in r.get("unlearning", [])),
                   tuple(r.get("models_still_trained_on_data", [])), report.chain_head, report.noop,
                   report.note, dict(r))


@dataclass(frozen=True)
class VerifyResult:
    """``lethe verify``: the ledger chain, every receipt's post-conditions, and the byte scan."""

    ok: bool
    problems: tuple[str, ...]
    trace_found: tuple[str, ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerifyResult:
        """From :func:`lethe.pipelines.forget.verify_workspace`'s result."""
        return cls(bool(d.get("ok")), tuple(problems_of(d)), tuple((d.get("trace") or {}).get("found", [])), dict(d))


def problems_of(d: dict[str, Any]) -> list[str]:
    """One line per failed check of a ``verify_workspace`` result."""
    out = []
    if not d.get("ledger_chain_intact", True):
        out.append(f"ledger chain: {d.get('ledger_problem', 'broken')}")
    for key in ("store_free_of_forgotten", "queries_free_of_forgotten"):
        if d.get(key) is False:
            out.append(f"{key.replace('_', ' ')}: no")
    out += [f"request {r} pending (lethe forget --resume)" for r in d.get("pending_requests", [])]
    out += [f"request {r} failed (lethe forget --retry {r})" for r in d.get("failed_requests", [])]
    out += [f"receipt {r.get('request_id')} not at level deleted" for r in d.get("receipts", [])
            if not (r.get("checks_at_forget_time_passed") and r.get("level") == "deleted")]
    out += [f"index {name}: {check} failed" for name, checks in (d.get("indexes") or {}).items()
            for check, ok in checks.items() if not ok]
    out += [f"trace of forgotten data in {path}" for path in (d.get("trace") or {}).get("found", [])]
    return out
