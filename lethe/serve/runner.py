"""Running one forget job: in the worker thread, or in a child process (the default of ``lethe serve``).

A child process keeps the job's CPU work (deletes, verification rebuilds, unlearning) off the server's
interpreter, so searches served meanwhile do not wait on its GIL. The child opens its own workspace and
job store, reports each step to the job store, and returns the outcome.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from lethe.errors import LetheError
from lethe.pipelines.workspace import Workspace
from lethe.serve.evaluation import Evaluator
from lethe.serve.jobs import JobStore

Outcome = tuple[str, str | None, str | None, str | None]  # state, request id, level, error


def watch_parent(parent_pid: int, every: float = 1.0) -> None:
    """Child-process initializer: exit as soon as the server that started us is gone.

    A child orphaned by a killed server would otherwise wait on its job queue for ever, holding its
    memory (and, mid-job, the workspace lock). Exiting at once is a crash like the server's: the
    restarted server resumes the job from its journal.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(70)

    threading.Thread(target=watch, name="lethe-parent-watch", daemon=True).start()


def run_verify(service_home: str, tenant: str) -> dict[str, Any]:
    """``lethe verify`` of one tenant's workspace (in the job process: it rebuilds every index)."""
    from lethe.pipelines.forget import verify_workspace

    with Workspace(Path(service_home) / "tenants" / tenant, show_progress=False, create=False) as ws:
        return verify_workspace(ws)


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
    jobs = JobStore(Path(service_home))
    try:
        with Workspace(Path(service_home) / "tenants" / tenant, show_progress=False, create=False) as ws:
            ws.on_step = lambda step: jobs.set_step(job_id, step)
            evaluator = Evaluator()
            record_figure(jobs, evaluator, ws, tenant, "before forgetting", first_only=True)
            unlearn = request.get("unlearn", "auto")
            rep = ws.forget(request["doc_ids"], request["owners"], request["reason"],
                            unlearn=None if unlearn in (None, "none") else unlearn)
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
