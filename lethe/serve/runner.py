"""Running one forget job: in the worker thread, or in a child process (the default of ``lethe serve``).

A child process keeps the job's CPU work (deletes, verification rebuilds, unlearning) off the server's
interpreter, so searches served meanwhile do not wait on its GIL. The child opens its own workspace and
job store, reports each step to the job store, and returns the outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lethe.errors import LetheError
from lethe.pipelines.workspace import Workspace
from lethe.serve.evaluation import Evaluator
from lethe.serve.jobs import JobStore
from lethe.types import ForgetRequest

Outcome = tuple[str, str | None, str | None, str | None]  # state, request id, level, error


def record_figure(jobs: JobStore, evaluator: Evaluator, ws: Workspace, tenant: str, label: str,
                  first_only: bool = False) -> None:
    """Add a point to the tenant's before/after chart (never fails a job)."""
    if first_only and jobs.points(tenant):
        return
    try:
        value = evaluator.score(ws)
    except Exception:  # noqa: BLE001 - the chart is a nicety; a forget job must not fail for it
        return
    if value is not None:
        jobs.add_point(tenant, label, value)


def run_forget_job(service_home: str, tenant: str, job_id: str, request: dict[str, Any]) -> Outcome:
    """Run one job to its end; never raises (a failure is an outcome)."""
    from lethe.pipelines.forget import forget

    jobs = JobStore(Path(service_home))
    try:
        with Workspace(Path(service_home) / "tenants" / tenant, show_progress=False, create=False) as ws:
            ws.on_step = lambda step: jobs.set_step(job_id, step)
            evaluator = Evaluator()
            record_figure(jobs, evaluator, ws, tenant, "before forgetting", first_only=True)
            req = ForgetRequest(tuple(request["doc_ids"]), tuple(request["owners"]), request["reason"])
            rep = forget(ws, req, unlearn=request.get("unlearn"))
            if not rep.noop:
                record_figure(jobs, evaluator, ws, tenant, f"after {rep.request_id[:8]}")
    except LetheError as exc:
        return "failed", None, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a job never takes the worker down
        return "failed", None, None, f"{type(exc).__name__}: {exc}"
    finally:
        jobs.close()
    if rep.reached:
        return "done", rep.request_id, rep.level, None
    return "failed", rep.request_id, rep.level, (f"ended at level {rep.level!r}; finish it with "
                                                 f"`lethe forget --retry {rep.request_id}`")
