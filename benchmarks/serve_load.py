"""Load test of `lethe serve`: concurrent searches while users are forgotten, with one crash and restart.

1. A fresh service home (a temp dir unless --home) with tenant ``bench``, an admin key, and the dataset indexed
   into the tenant's workspace with `lethe index` (BM25 + dense MiniLM unless --no-dense).
2. `lethe serve` as a subprocess on a free port.
3. ``--clients`` threads search (httpx, one client each) for ``--seconds``, looping over the test queries, and
   record each request's latency, status, hit ids and start/end times.
4. Meanwhile one thread forgets the ``--users`` owners with the most documents, one after another
   (POST /forget {owners: [u]}, then GET /jobs/{id} until done), recording when each job was seen done.
5. Once (job ``--kill-job``, default the middle one), 0.5 s after the job is submitted, the server is
   killed with SIGKILL together with its forget-job child process (``--kill-server-only``: the server's pid
   alone; children left running are reported), and started again on the same port and home; the job must
   finish after the restart, resumed from its journal.
6. At the end: hits of a forgotten document in searches that started after its job was seen done
   (``served_after_forget``), surviving documents GET /documents/{id} no longer returns (``lost_documents``;
   all of them when there are at most 5,000, else 500 drawn with seed 0), and GET /verify.

Latency figures count 2xx searches outside the restart window (kill to /health answering again);
``errors`` are the non-2xx and failed requests outside it. ``p99_ms_during_forget`` is over searches that
overlap a job (submitted to seen done); ``latency_by_job_phase`` splits them by the job's step as last polled.
``load`` gives the CPU seconds of the machine, of this benchmark's process tree (and of its clients alone),
and of everything else: figures taken beside another workload (``cpu_other_seconds`` well above 0) are skewed.
The last line printed is one JSON object. Progress goes to stderr.

    .venv/bin/python benchmarks/serve_load.py --data $LETHE_DATA/stackexchange-cardano --clients 8 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from lethe.data import load_dataset

TENANT = "bench"
MAX_QUERY_CHARS = 2000  # the service refuses longer queries (422)
CHECK_ALL_UP_TO = 5000  # lost_documents: every survivor up to this many, else a sample
SAMPLE = 500
T0 = time.monotonic()


def now() -> float:
    """Seconds since the benchmark started (one clock for every timestamp)."""
    return time.monotonic() - T0


def log(msg: str) -> None:
    print(f"[serve_load {now():7.1f}s] {msg}", file=sys.stderr, flush=True)


def cli(*args: str) -> str:
    """Run `lethe ARGS` in a subprocess; its stdout (stderr passes through)."""
    out = subprocess.run([sys.executable, "-m", "lethe.cli", *args], stdout=subprocess.PIPE, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"`lethe {' '.join(args)}` failed with exit code {out.returncode}:\n{out.stdout}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_mb(pid: int) -> float:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0


class CpuMonitor(threading.Thread):
    """CPU seconds used by the whole machine and by this benchmark's process tree (the server, its job
    process, the clients) between start() and stop(); the rest is another workload that skews the figures."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.tick = os.sysconf("SC_CLK_TCK")
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.done = threading.Event()

    @staticmethod
    def busy() -> int:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        return sum(int(x) for i, x in enumerate(f) if i not in (3, 4))  # all but idle and iowait

    def sample(self) -> None:
        for pid in [os.getpid(), *descendants(os.getpid())]:
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime stime, and cutime cstime (reaped children) except ours: we reap the killed server, counted here
            used = sum(int(x) for x in f[11:13 if pid == os.getpid() else 15])
            self.first.setdefault(pid, used)
            self.last[pid] = used

    def run(self) -> None:
        self.busy0, self.t0 = self.busy(), time.monotonic()
        self.sample()
        while not self.done.wait(0.25):
            self.sample()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        self.sample()
        total = (self.busy() - self.busy0) / self.tick
        own = sum(self.last[p] - self.first[p] for p in self.last) / self.tick
        return {"cpus": os.cpu_count(), "cpu_capacity_seconds": round((os.cpu_count() or 1) * (
            time.monotonic() - self.t0), 1), "cpu_busy_seconds": round(total, 1), "cpu_own_seconds": round(own, 1),
            "cpu_other_seconds": round(max(0.0, total - own), 1),
            "cpu_clients_seconds": round((self.last[os.getpid()] - self.first[os.getpid()]) / self.tick, 1)}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, min(len(s), int(-(-q * len(s) // 100))))
    return s[rank - 1]


class Server:
    """`lethe serve` as a subprocess (logs appended to ``log_path``)."""

    def __init__(self, home: Path, port: int, log_path: Path, extra: list[str]) -> None:
        self.home, self.port, self.log_path, self.extra = home, port, log_path, extra
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.pids: list[int] = []

    def start(self) -> None:
        self.starts += 1
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        logf.write(f"\n==== start {self.starts} at {now():.2f}s ====\n".encode())
        logf.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "lethe.cli", "serve", "--home", str(self.home),
                                      "--port", str(self.port), *self.extra], stdout=logf, stderr=subprocess.STDOUT)
        self.pids.append(self.proc.pid)
        log(f"server pid {self.proc.pid}")
        logf.close()

    def wait_health(self, timeout: float = 120.0) -> float:
        """Poll GET /health until it answers 200; the time it did."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:  # one client: creating one costs ~18 ms of CPU
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise SystemExit(f"the server exited with {self.proc.returncode}; log: {self.log_path}\n"
                                     + self.log_tail())
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return now()
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        raise SystemExit(f"the server did not answer /health within {timeout:.0f} s\n" + self.log_tail())

    def kill(self, tree: bool) -> tuple[float, list[int]]:
        """SIGKILL the server (our child, by pid) and, with ``tree``, its own children (the forget job's
        process) too, as a crash of the whole service would; the time, and the children left running."""
        assert self.proc is not None
        kids = descendants(self.proc.pid)
        t = now()
        os.kill(self.proc.pid, signal.SIGKILL)
        if tree:
            for pid in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        return t, [] if tree else kids

    def stop(self) -> list[int]:
        """SIGTERM (graceful shutdown); the server's children still running 5 s after it exited."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        kids = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(k) for k in kids):
            time.sleep(0.1)
        return [k for k in kids if alive(k)]

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def search_client(url: str, key: str, queries: list[str], offset: int, retriever: str, k: int,
                  stop: threading.Event, out: list[tuple]) -> None:
    """Search in a loop until ``stop``; appends (start, end, status, hit ids or None, error) to ``out``."""
    headers = {"Authorization": f"Bearer {key}"}
    client = httpx.Client(base_url=url, headers=headers, timeout=60.0)
    i = offset
    try:
        while not stop.is_set():
            body = {"query": queries[i % len(queries)], "k": k, "retriever": retriever}
            i += 1
            t0 = now()
            try:
                r = client.post("/search", json=body)
                t1 = now()
                hits = [h["doc_id"] for h in r.json()["hits"]] if r.status_code == 200 else None
                out.append((t0, t1, r.status_code, hits, None if r.status_code == 200 else r.text[:200]))
            except httpx.HTTPError as exc:  # the server is down (restart) or dropped the connection
                out.append((t0, now(), 0, None, f"{type(exc).__name__}: {exc}"[:200]))
                time.sleep(0.05)  # the pool drops the broken connection; a new client would cost ~18 ms of CPU
    finally:
        client.close()


def call(client: httpx.Client, method: str, path: str, retry_until: float | None = None,
         **kw: Any) -> httpx.Response:
    """One request; with ``retry_until``, transport errors (a server that is restarting) are retried."""
    while True:
        try:
            return client.request(method, path, **kw)
        except httpx.TransportError:
            if retry_until is None or time.monotonic() > retry_until:
                raise
            time.sleep(0.1)


def forget_users(server: Server, key: str, users: list[tuple[str, list[str]]], kill_job: int, kill_tree: bool,
                 search_stop: threading.Event, jobs: list[dict], restart: dict) -> None:
    """Forget ``users`` one after another; kill and restart the server 0.5 s into job ``kill_job``.

    A new job is submitted only while the searches run, except the kill job, which always runs."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0) as client:
        _forget_users(client, server, users, kill_job, kill_tree, search_stop, jobs, restart)


def _forget_users(client: httpx.Client, server: Server, users: list[tuple[str, list[str]]], kill_job: int,
                  kill_tree: bool, search_stop: threading.Event, jobs: list[dict], restart: dict) -> None:
    for i, (user, doc_ids) in enumerate(users):
        if search_stop.is_set() and (i > kill_job or restart):
            log(f"search phase over: {len(users) - i} user(s) left unforgotten")
            break
        job: dict[str, Any] = {"user": user, "n_docs": len(doc_ids), "doc_ids": doc_ids, "killed": i == kill_job}
        jobs.append(job)
        job["submitted"] = now()
        r = call(client, "POST", "/forget", json={"owners": [user], "reason": f"serve_load user {user}"})
        if r.status_code != 202:
            job.update(state=f"submit {r.status_code}", error=r.text[:300])
            log(f"forget {user}: {r.status_code} {r.text[:200]}")
            continue
        job["job_id"] = r.json()["job_id"]
        log(f"forget job {i + 1}/{len(users)}: user {user} ({len(doc_ids)} docs), job {job['job_id'][:8]}")
        job["steps"] = steps = [(job["submitted"], "queued")]
        if i == kill_job:
            time.sleep(0.5)
            got = call(client, "GET", f"/jobs/{job['job_id']}").json()
            job["state_at_kill"], job["step_at_kill"] = got["state"], got.get("step")
            t_kill, left = server.kill(kill_tree)
            steps.append((t_kill, "restart"))
            log(f"killed the server (SIGKILL{' with its job process' if kill_tree else ''}) with job "
                f"{job['job_id'][:8]} {got['state']} at step {got.get('step')}")
            server.start()
            t_back = server.wait_health()
            restart.update(t_kill=t_kill, t_back=t_back, seconds=t_back - t_kill, orphans=left,
                           orphans_alive_after_restart=[p for p in left if alive(p)])
            log(f"server back after {t_back - t_kill:.2f} s"
                + (f"; the old server's children {left} still run" if any(alive(p) for p in left) else ""))
        deadline = time.monotonic() + 900
        while True:
            got = call(client, "GET", f"/jobs/{job['job_id']}", retry_until=deadline).json()
            phase = got["state"] if got["state"] != "running" else f"running:{got.get('step')}"
            if phase != steps[-1][1] and not (steps[-1][1] == "restart" and now() < restart.get("t_back", 0)):
                steps.append((now(), phase))
            if got["state"] in ("done", "failed"):
                job.update(state=got["state"], level=got.get("level"), error=got.get("error"), done=now())
                break
            if time.monotonic() > deadline:
                job.update(state=f"timeout ({got['state']})", done=None)
                break
            time.sleep(0.05)
        job["seconds"] = (job["done"] - job["submitted"]) if job.get("done") else None
        log(f"  job {job['job_id'][:8]} {job['state']} (level {job.get('level')}) after {job['seconds'] or 0:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="BEIR directory (or dataset name) with owner ids")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--home", type=Path, default=None, help="service home (default: a fresh temp dir, removed)")
    ap.add_argument("--retriever", default="bm25", help="bm25 | dense | rrf | convex")
    ap.add_argument("--users", type=int, default=6, help="forget this many users (most documents first)")
    ap.add_argument("--kill-job", type=int, default=None, help="0-based job to kill the server in (default: middle)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--split", default="test")
    ap.add_argument("--no-dense", action="store_true", help="index BM25 only (`lethe index --no-dense`)")
    ap.add_argument("--kill-server-only", action="store_true",
                    help="SIGKILL only the server's pid, not its forget-job child process (default: both, as a "
                         "crash of the service would); children left running are reported and killed at the end")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for `lethe serve` (repeatable)")
    ap.add_argument("--dump", type=Path, default=None,
                    help="write every search (start, end, status, hits) and job with its times to this JSON file")
    args = ap.parse_args()

    ds = load_dataset(args.data, unknown_qrels="keep")
    queries = [q.text[:MAX_QUERY_CHARS] for q in (ds.split_queries(args.split) if args.split in ds.qrels
                                                   else ds.queries).values()]
    owners = sorted(ds.owners().items(), key=lambda kv: (-len(kv[1]), kv[0]))
    users = owners[:args.users]
    if not users or not queries:
        raise SystemExit("the dataset needs owner ids and queries")
    kill_job = min(len(users) - 1, args.kill_job if args.kill_job is not None else len(users) // 2)
    log(f"{ds.name}: {len(ds.corpus)} docs, {len(queries)} {args.split} queries; forgetting {len(users)} users "
        f"({sum(len(d) for _, d in users)} docs); kill in job {kill_job}")

    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="lethe-serve-load-")
        home = Path(tmp.name) / "home"
    else:
        home = args.home
        if home.exists() and any(home.iterdir()):
            raise SystemExit(f"--home {home} is not empty; give a new directory")
    key = cli("keys", "add", "--home", str(home), "--tenant", TENANT, "--role", "admin").strip().splitlines()[-1]
    log(f"indexing {args.data} into tenant {TENANT!r} ({'BM25 only' if args.no_dense else 'BM25 + dense'}) ...")
    t = time.perf_counter()
    cli("index", "--data", str(args.data), "--home", str(home / "tenants" / TENANT), "--unknown-qrels", "keep",
        *(["--no-dense"] if args.no_dense else []))
    index_seconds = time.perf_counter() - t
    log(f"indexed in {index_seconds:.1f} s")

    server = Server(home, free_port(), home / "serve.log", args.serve_arg)
    server.start()
    t = now()
    server.wait_health()
    log(f"server up on {server.url} after {now() - t:.2f} s")
    restart: dict[str, Any] = {}
    try:
        result = run(args, ds, queries, users, kill_job, server, key, index_seconds, restart)
    finally:
        leftover = server.stop()
        for pid in restart.get("orphans", []) + leftover:  # processes our server started, by pid
            if alive(pid):
                log(f"killing leftover process {pid} ({rss_mb(pid):.0f} MB): "
                    + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100])
                os.kill(pid, signal.SIGKILL)
        if tmp is not None:
            tmp.cleanup()
    result["processes_left_after_stop"] = len(leftover)
    print(json.dumps(result))


def run(args: argparse.Namespace, ds: Any, queries: list[str], users: list[tuple[str, list[str]]], kill_job: int,
        server: Server, key: str, index_seconds: float, restart: dict[str, Any]) -> dict[str, Any]:
    # one warm-up search loads the index, so the first client's latency is not the load
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0) as c:
        call(c, "POST", "/search", json={"query": queries[0], "k": args.k, "retriever": args.retriever})
    stop = threading.Event()
    outs: list[list[tuple]] = [[] for _ in range(args.clients)]
    threads = [threading.Thread(target=search_client, daemon=True, args=(
        server.url, key, queries, c * len(queries) // args.clients, args.retriever, args.k, stop, outs[c]))
        for c in range(args.clients)]
    jobs: list[dict] = []
    t_start = now()
    cpu = CpuMonitor()
    cpu.start()
    for th in threads:
        th.start()
    forgetter = threading.Thread(target=forget_users, daemon=True, args=(
        server, key, users, kill_job, not args.kill_server_only, stop, jobs, restart))
    time.sleep(min(2.0, args.seconds / 10))  # a baseline before the first job
    forgetter.start()
    time.sleep(max(0.0, args.seconds - (now() - t_start)))
    stop.set()
    for th in threads:
        th.join()
    t_end = now()
    restart["cpu"] = cpu.stop()
    log(f"CPU during the searches: {restart['cpu']}")
    log(f"searches stopped after {t_end - t_start:.1f} s; waiting for the forget jobs")
    forgetter.join()
    if args.dump is not None:
        args.dump.write_text(json.dumps({
            "searches": [r[:4] for out in outs for r in out], "restart": restart, "t_start": t_start,
            "t_end": t_end, "jobs": jobs, "server_pids": server.pids}))
    return report(args, ds, outs, jobs, restart, server, key, index_seconds, t_start, t_end)


def report(args: argparse.Namespace, ds: Any, outs: list[list[tuple]], jobs: list[dict], restart: dict,
           server: Server, key: str, index_seconds: float, t_start: float, t_end: float) -> dict[str, Any]:
    reqs = [r for out in outs for r in out]
    k0, k1 = restart.get("t_kill", float("inf")), restart.get("t_back", float("-inf"))
    in_window = [r for r in reqs if r[0] < k1 and r[1] > k0]
    outside = [r for r in reqs if not (r[0] < k1 and r[1] > k0)]
    errors = [r for r in outside if not 200 <= r[2] < 300]
    ok = [r for r in outside if 200 <= r[2] < 300]
    spans = [(j["submitted"], j["done"] if j.get("done") else t_end) for j in jobs if "job_id" in j]
    during = [r for r in ok if any(r[0] < b and r[1] > a for a, b in spans)]
    idle = [r for r in ok if not any(r[0] < b and r[1] > a for a, b in spans)]
    ms = lambda rs: [1000 * (r[1] - r[0]) for r in rs]  # noqa: E731
    rnd = lambda v: None if v is None else round(v, 2)  # noqa: E731

    # what the job was doing when a search started (its state/step as last polled), and the second after done
    def phase(t: float) -> str:
        for j in jobs:
            if "job_id" in j and j["submitted"] <= t < (j.get("done") or t_end):
                return next((name for at, name in reversed(j["steps"]) if at <= t), "queued")
        if any(j.get("done") and j["done"] <= t < j["done"] + 1.0 for j in jobs):
            return "first second after done"
        return "no job"
    by_phase: dict[str, list[float]] = {}
    for r in ok:
        by_phase.setdefault(phase(r[0]), []).append(1000 * (r[1] - r[0]))
    phases = {name: {"searches": len(v), "p50_ms": rnd(percentile(v, 50)), "p99_ms": rnd(percentile(v, 99))}
              for name, v in sorted(by_phase.items(), key=lambda kv: -len(kv[1]))}

    # a forgotten document in a search that started after its job was seen done
    done_at = {d: j["done"] for j in jobs if j.get("state") == "done" for d in j["doc_ids"]}
    served = [r for r in reqs if 200 <= r[2] < 300]  # the restart window's answers count here too
    leaks = [(r[0], d, done_at[d]) for r in served if r[3] for d in r[3] if d in done_at and r[0] > done_at[d]]
    served_by_doc = {d for r in ok if r[3] for d in r[3]}

    forgotten = set(done_at)
    unsettled = {d for j in jobs if j.get("state") != "done" for d in j["doc_ids"]}
    survivors = sorted(set(ds.corpus) - forgotten - unsettled)
    if len(survivors) <= CHECK_ALL_UP_TO:
        checked, how = survivors, "all"
    else:
        checked, how = random.Random(0).sample(survivors, SAMPLE), f"random {SAMPLE}, seed 0"
    log(f"checking {len(checked)} surviving and {len(forgotten)} forgotten documents with GET /documents ...")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0) as c:
        lost = [d for d in checked if c.get(f"/documents/{d}").status_code != 200]
        readable = [d for d in sorted(forgotten) if c.get(f"/documents/{d}").status_code != 404]
        log("GET /verify ...")
        t = time.perf_counter()
        v = c.get("/verify", timeout=900.0)
        verify_seconds = time.perf_counter() - t
    verify = v.json() if v.status_code == 200 else {"ok": False, "status": v.status_code, "text": v.text[:300]}
    killed = next((j for j in jobs if j.get("killed")), {})
    p50 = percentile(ms(ok), 50)
    p99_during = percentile(ms(during), 99)
    return {
        "data": str(args.data), "clients": args.clients, "seconds": args.seconds, "retriever": args.retriever,
        "dense_index": not args.no_dense, "index_seconds": rnd(index_seconds),
        "searches": len(reqs), "searches_ok": len(ok), "qps": rnd(len(reqs) / max(1e-9, t_end - t_start)),
        "errors": len(errors), "error_examples": sorted({str(r[4]) for r in errors})[:3],
        "searches_in_restart_window": len(in_window),
        "errors_in_restart_window": sum(not 200 <= r[2] < 300 for r in in_window),
        "restart_seconds": rnd(restart.get("seconds")),
        "p50_ms": rnd(p50), "p90_ms": rnd(percentile(ms(ok), 90)), "p99_ms": rnd(percentile(ms(ok), 99)),
        "max_ms": rnd(max(ms(ok), default=None)),
        "searches_during_forget": len(during),
        "p50_ms_during_forget": rnd(percentile(ms(during), 50)), "p99_ms_during_forget": rnd(p99_during),
        "p50_ms_no_forget": rnd(percentile(ms(idle), 50)), "p99_ms_no_forget": rnd(percentile(ms(idle), 99)),
        "p99_during_forget_over_p50": rnd(p99_during / p50) if p50 and p99_during else None,
        "forget_jobs": len(jobs), "forget_jobs_done": sum(j.get("state") == "done" for j in jobs),
        "forget_docs": sum(j["n_docs"] for j in jobs),
        "forget_job_seconds": [rnd(j.get("seconds")) for j in jobs],
        "forget_job_levels": [j.get("level") for j in jobs],
        "latency_by_job_phase": phases,
        "killed_job": {"index": jobs.index(killed) if killed else None, "state_at_kill": killed.get("state_at_kill"),
                       "step_at_kill": killed.get("step_at_kill"), "final_state": killed.get("state"),
                       "level": killed.get("level"), "error": killed.get("error"),
                       "phases": [(rnd(a), name) for a, name in killed.get("steps", [])]},
        "kill": "server only" if args.kill_server_only else "server and its job process",
        "old_server_children_alive_after_restart": len(restart.get("orphans_alive_after_restart", [])),
        "old_server_children_alive_at_end": sum(alive(p) for p in restart.get("orphans", [])),
        "served_after_forget": len(leaks),
        "served_after_forget_examples": [{"started": rnd(a), "doc_id": d, "done": rnd(b)} for a, d, b in leaks[:5]],
        "forgotten_docs_served_before_done": len(forgotten & served_by_doc),
        "lost_documents": len(lost), "lost_documents_checked": len(checked), "lost_documents_sample": how,
        "lost_examples": lost[:5], "forgotten_still_readable": len(readable),
        "load": restart.get("cpu"),
        "verify_ok": bool(verify.get("ok")), "verify_seconds": rnd(verify_seconds),
        "verify_problems": {k: verify.get(k) for k in ("pending_requests", "failed_requests", "incomplete_requests",
                                                        "to_finish", "status", "text") if verify.get(k)},
    }


if __name__ == "__main__":
    main()
