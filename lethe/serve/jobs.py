"""Forget jobs: a durable queue (SQLite) and one worker thread that runs them one at a time.

A job's raw ids are kept only while it waits or runs; when it ends they are erased, from its request
and from its error message (secure delete and a WAL checkpoint), and the job keeps the ledger's
request id and level. On start, jobs left
``queued`` or ``running`` by a crash run again: the forget pipeline resumes a pending request from its
journal, and replaying a finished one is a no-op.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe.store.sqlite import checkpoint, connect, transaction

STATES = ("queued", "running", "done", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS evals (
    tenant TEXT NOT NULL,
    at REAL NOT NULL,
    label TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    request_id TEXT,
    step TEXT,
    steps_done INTEGER NOT NULL DEFAULT 0,
    level TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
"""
_COLUMNS = "id, tenant, state, request_id, step, steps_done, level, error, created_at, finished_at"


@dataclass(frozen=True)
class Job:
    """A forget job as the API reports it."""

    id: str
    tenant: str
    state: str
    request_id: str | None
    step: str | None
    steps_done: int
    level: str | None
    error: str | None
    created_at: float
    finished_at: float | None


class JobStore:
    """The durable queue of forget jobs (``<home>/jobs.db``)."""

    def __init__(self, home: Path) -> None:
        self.conn = connect(Path(home) / "jobs.db")
        self.conn.executescript(_SCHEMA)
        self.lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        self.conn.close()

    def submit(self, tenant: str, request: dict[str, Any]) -> Job:
        """Queue a job."""
        job = Job(uuid.uuid4().hex, tenant, "queued", None, None, 0, None, None, time.time(), None)
        with self.lock, transaction(self.conn) as c:
            c.execute("INSERT INTO jobs(id, tenant, state, request, created_at) VALUES (?,?,?,?,?)",
                      (job.id, tenant, "queued", json.dumps(request), job.created_at))
        return job

    def get(self, jid: str) -> Job | None:
        """One job, or None."""
        with self.lock:
            row = self.conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (jid,)).fetchone()
        return Job(*row) if row else None

    def next_job(self) -> tuple[Job, dict[str, Any]] | None:
        """The oldest unfinished job (``running`` first: it was interrupted) and its request."""
        with self.lock:
            row = self.conn.execute(
                f"SELECT {_COLUMNS}, request FROM jobs WHERE state IN ('running', 'queued') "
                "ORDER BY state = 'queued', created_at LIMIT 1").fetchone()
        return (Job(*row[:-1]), json.loads(row[-1])) if row else None

    def start(self, jid: str) -> None:
        """Mark a job running."""
        with self.lock, transaction(self.conn) as c:
            c.execute("UPDATE jobs SET state='running' WHERE id=?", (jid,))

    def set_step(self, jid: str, step: str) -> None:
        """Record the step a running job has reached."""
        with self.lock, transaction(self.conn) as c:
            c.execute("UPDATE jobs SET step=?, steps_done=steps_done+1 WHERE id=?", (step, jid))

    def finish(self, jid: str, state: str, request_id: str | None, level: str | None, error: str | None) -> None:
        """Mark a job done or failed and erase its raw ids: its request, and their mentions in its error."""
        with self.lock:
            with transaction(self.conn) as c:
                row = c.execute("SELECT request FROM jobs WHERE id=?", (jid,)).fetchone()
                error = redact_ids(error, request_ids(row[0])) if error and row else error
                c.execute("UPDATE jobs SET state=?, request='{}', request_id=?, level=?, error=?, finished_at=? "
                          "WHERE id=?", (state, request_id, level, error, time.time(), jid))
            checkpoint(self.conn)

    def add_point(self, tenant: str, label: str, value: float) -> None:
        """Record one evaluation figure of a tenant (for the before/after chart)."""
        with self.lock, transaction(self.conn) as c:
            c.execute("INSERT INTO evals(tenant, at, label, value) VALUES (?,?,?,?)",
                      (tenant, time.time(), label, value))

    def points(self, tenant: str) -> list[dict[str, Any]]:
        """A tenant's evaluation figures, oldest first."""
        with self.lock:
            rows = self.conn.execute("SELECT label, value, at FROM evals WHERE tenant=? ORDER BY at, rowid",
                                     (tenant,)).fetchall()
        return [{"label": label, "value": value, "at": at} for label, value, at in rows]

    def counts(self) -> dict[str, int]:
        """Jobs by state."""
        with self.lock:
            rows = self.conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {**dict.fromkeys(STATES, 0), **{s: int(n) for s, n in rows}}


def request_ids(request: str) -> list[str]:
    """The document ids and owners a job's stored request names."""
    try:
        obj = json.loads(request)
    except ValueError:
        return []
    return [str(i) for key in ("doc_ids", "owners") for i in (obj.get(key) or [])] if isinstance(obj, dict) else []


def redact_ids(text: str, ids: list[str]) -> str:
    """``text`` with every whole-token mention of one of ``ids`` replaced by ``<id>``."""
    for i in sorted(set(ids), key=len, reverse=True):
        text = re.sub(rf"(?<![\w\-]){re.escape(i)}(?![\w\-])", "<id>", text)
    return text


class Worker:
    """One thread that runs queued jobs through ``run(job, request)`` -> (state, request_id, level, error)."""

    def __init__(self, jobs: JobStore, run: Callable[[Job, dict[str, Any]], tuple[str, str | None, str | None,
                                                                                  str | None]]) -> None:
        self.jobs, self.run = jobs, run
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="lethe-forget-worker", daemon=True)

    def start(self) -> None:
        """Start the thread (it first picks up jobs a crash left behind)."""
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop after the current job, and wait for it."""
        self.stopping.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            item = self.jobs.next_job()
            if item is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            job, request = item
            self.jobs.start(job.id)
            state, rid, level, error = self.run(job, request)
            self.jobs.finish(job.id, state, rid, level, error)
