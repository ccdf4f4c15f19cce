"""Storage benchmark: what a trial costs in storage round trips, and how workers scale.

1. Per-trial storage overhead over 1,000 trials of a dummy objective that only reports 10
   intermediate values, on SQLite, PostgreSQL, MySQL/MariaDB and optuna's journal file. Each
   backend runs twice: through hpo's worker loop (``build_storage``, the budget lock, stale-trial
   check, count, ask, heartbeat, worker attrs, reports, tell) and through plain optuna
   (``study.optimize`` on the same kind of storage). The random sampler keeps sampling cost out.
   The time per trial is the wall time between consecutive finished trials: with an objective
   that does nothing but report, that is storage (and the Python around it).
2. Parallel efficiency of 1, 2, 4, 8, 16 ``hpo`` worker processes on one PostgreSQL study, with
   an objective that sleeps 2 s per trial (10 steps of 0.2 s, each reported), so that storage
   contention shows and CPU contention does not. Workers import and connect first, then start
   together; efficiency = trials x 2 s / (workers x time from the start to the last trial).

Usage::

    python -m benchmarks.storage            # full: 1,000 trials, 1-16 workers (~10 min)
    python -m benchmarks.storage --quick    # 200 trials, 1-4 workers (~2 min)
    python -m benchmarks.storage --write BENCHMARKS.md   # also update the results block there

Servers: ``HPO_BENCH_POSTGRES_URL`` and ``HPO_BENCH_MYSQL_URL`` (default: the loopback servers of
../shared/services.md); a backend whose server is down is reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces" / "toy.yaml")
POSTGRES = os.environ.get("HPO_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("HPO_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
N_REPORTS = 10
SLEEP_TRIAL = 2.0
BEGIN, END = "<!-- storage-benchmark:start -->", "<!-- storage-benchmark:end -->"


# --- objectives (named "benchmarks.storage:<function>" in hpo configs) -----------------------


OBJECTIVE = "benchmarks.storage:dummy_objective"  # a module:function objective workers allow


def dummy_objective(trial: Any, params: dict[str, Any], cfg: dict[str, Any]) -> float:
    """Report 10 intermediate values and return: a trial that is all storage."""
    value = sum(v * v for v in params.values())
    for step in range(1, N_REPORTS + 1):
        trial.report(value + 1.0 / step, step)
    return value


def sleep_objective(trial: Any, params: dict[str, Any], cfg: dict[str, Any]) -> float:
    """Sleep 2 s in 10 steps, reporting each: a trial whose cost is not CPU."""
    value = sum(v * v for v in params.values())
    for step in range(1, N_REPORTS + 1):
        time.sleep(SLEEP_TRIAL / N_REPORTS)
        trial.report(value + 1.0 / step, step)
    return value


# --- helpers --------------------------------------------------------------------------------


def _reachable(url: str) -> str | None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _config(name: str, url: str, objective: str, n_trials: int) -> Any:
    from hpo.config import config_from_dict

    return config_from_dict({
        "study": name, "storage": url, "objective": objective, "sampler": {"name": "random"},
        "pruner": {"name": "none"}, "search_space": SPACE, "n_trials": n_trials,
    }, "benchmark")


def _delete(url: str, name: str) -> None:
    import optuna

    from hpo.storage import build_storage
    from hpo.storage import rdb_backend

    with contextlib.suppress(Exception):
        storage = build_storage(url)
        optuna.delete_study(study_name=name, storage=storage)
        backend = rdb_backend(storage)
        if backend is not None:
            backend.engine.dispose()


def _windows(times: list[float], n: int, block: int) -> dict[str, float]:
    """Mean ms per trial over the first, middle and last tenth of the trials.

    ``times`` holds, per block, its start time and then each trial's finish time.
    """
    gaps: list[float] = []
    for i in range(0, len(times), block + 1):
        chunk = times[i:i + block + 1]
        gaps += [b - a for a, b in zip(chunk, chunk[1:], strict=False)]
    w = max(n // 10, 1)
    mid = len(gaps) // 2
    parts = {"first": gaps[:w], "middle": gaps[mid - w // 2: mid + w // 2], "last": gaps[-w:]}
    out = {k: 1000 * statistics.fmean(v) for k, v in parts.items() if v}
    out["median_all"] = 1000 * statistics.median(gaps)
    out["n_trials"] = len(gaps)
    return out


class _HpoRun:
    """hpo's worker loop on one study, run in blocks: the finish time of every trial."""

    def __init__(self, url: str) -> None:
        from hpo.search_space import search_space_from_dict
        from hpo.study import create_study

        self.url = url
        self.name = f"bench-hpo-{uuid.uuid4().hex[:8]}"
        self.cfg = _config(self.name, url, OBJECTIVE, 1)
        self.study = create_study(self.cfg)
        self.space = search_space_from_dict(self.study.user_attrs["search_space"])
        self.times: list[float] = []

    def run_to(self, n: int) -> None:
        import dataclasses

        from hpo.worker import run_worker

        cfg = dataclasses.replace(self.cfg, n_trials=n)
        self.times.append(time.perf_counter())
        run_worker(self.study, cfg, self.space,
                   on_trial=lambda frozen, seconds: self.times.append(time.perf_counter()))

    def close(self) -> None:
        _delete(self.url, self.name)


class _OptunaRun:
    """Plain optuna (``study.optimize``) on the same kind of storage, run in blocks."""

    def __init__(self, url: str) -> None:
        import optuna

        self.name = f"bench-optuna-{uuid.uuid4().hex[:8]}"
        if url.startswith("journal:///"):
            from optuna.storages.journal import JournalFileBackend

            path = url[len("journal:///"):] + ".optuna"
            self.storage: Any = optuna.storages.JournalStorage(JournalFileBackend(path))
        else:
            self.storage = optuna.storages.RDBStorage(url)
        self.study = optuna.create_study(study_name=self.name, storage=self.storage,
                                         sampler=optuna.samplers.RandomSampler(seed=0))
        self.times: list[float] = []

    def run_to(self, n: int) -> None:
        import optuna

        def objective(trial: optuna.Trial) -> float:
            params = {"x": trial.suggest_float("x", -1, 1), "y": trial.suggest_float("y", -1, 1)}
            return dummy_objective(trial, params, {})

        self.times.append(time.perf_counter())
        # Plain optuna has no retries: a dropped connection (another process restarting or
        # killing connections on this shared server) fails the trial. Count it and go on.
        while len(self.study.trials) < n:
            try:
                self.study.optimize(objective, n_trials=n - len(self.study.trials),
                                    catch=(optuna.exceptions.StorageInternalError,),
                                    callbacks=[lambda s, t: self.times.append(time.perf_counter())])
            except Exception as exc:  # e.g. the server restarted under optimize()
                print(f"plain optuna: {type(exc).__name__}; going on", file=sys.stderr)
                time.sleep(2)

    def close(self) -> None:
        import optuna

        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=self.name, storage=self.storage)
        if hasattr(self.storage, "engine"):
            self.storage.engine.dispose()


def overhead(
    n: int, backends: list[str], tmp: Path, compare: int, block: int = 50
) -> list[dict[str, Any]]:
    """Both paths on each backend, interleaved in blocks of ``block`` trials so that the load of
    a shared machine hits them alike. Plain optuna runs ``n`` trials on PostgreSQL (the goal's
    backend) and ``compare`` elsewhere, to keep the benchmark within minutes."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    urls = {
        "sqlite": f"sqlite:///{tmp / 'bench.db'}",
        "postgresql": POSTGRES,
        "mysql": MYSQL,
        "journal": f"journal:///{tmp / 'bench.log'}",
    }
    rows = []
    for backend in backends:
        url = urls[backend]
        down = None if backend in ("sqlite", "journal") else _reachable(url)
        if down is not None:
            print(f"{backend}: skipped ({down})", file=sys.stderr)
            rows.append({"backend": backend, "skipped": down})
            continue
        t0 = time.perf_counter()
        runs = {"hpo": _HpoRun(url), "optuna": _OptunaRun(url)}
        sizes = {"hpo": n, "optuna": n if backend == "postgresql" else min(n, compare)}
        try:
            for k in range(min(block, n), n + 1, block):
                for path, run in runs.items():
                    if k <= sizes[path]:
                        run.run_to(k)
        finally:
            for run in runs.values():
                run.close()
        for path, run in runs.items():
            row = {"backend": backend, "path": path, **_windows(run.times, sizes[path], block)}
            # hpo's median over the trials plain optuna ran too: the like-for-like comparison
            row["median_compared"] = _windows(run.times[: sizes["optuna"] // block * (block + 1)],
                                              sizes["optuna"], block)["median_all"]
            row["total_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"{backend:10s} {path:6s} first {row['first']:6.1f}  middle {row['middle']:6.1f}  "
                  f"last {row['last']:6.1f}  median {row['median_all']:6.1f} ms/trial",
                  file=sys.stderr)
    return rows


# --- parallel efficiency --------------------------------------------------------------------


def _worker_main(url: str, name: str, sync: str) -> None:
    """One benchmark worker process: load, say ready, wait for the start, run, print times."""
    from hpo.study import load_study
    from hpo.worker import run_worker

    study, cfg, space = load_study(url, name, allowed_objectives=(OBJECTIVE,))
    Path(f"{sync}.{os.getpid()}.ready").touch()
    go = Path(f"{sync}.go")
    while not go.exists():
        time.sleep(0.01)
    start = float(go.read_text())
    while time.time() < start:
        time.sleep(0.001)
    import hpo.worker

    take = hpo.worker._take_trial
    taking: list[float] = []

    def timed_take(*args: Any) -> Any:  # time spent waiting for and taking a trial
        t = time.perf_counter()
        try:
            return take(*args)
        finally:
            taking.append(time.perf_counter() - t)

    hpo.worker._take_trial = timed_take
    finished: list[float] = []
    cpu = time.process_time()
    run_worker(study, cfg, space, seed=os.getpid(),
               on_trial=lambda f, s: finished.append(time.time()))
    print(json.dumps({"start": start, "finished": finished, "cpu": time.process_time() - cpu,
                      "take": sum(taking[:len(finished)])}))


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (zeros elsewhere)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def _cpu_busy(before: tuple[float, float]) -> float:
    busy, total = _cpu_times()
    return (busy - before[0]) / (total - before[1]) if total > before[1] else float("nan")


def parallel(url: str, workers: list[int], per_worker: int, tmp: Path) -> list[dict[str, Any]]:
    from hpo.study import create_study

    rows = []
    for n in workers:
        name = f"bench-par-{uuid.uuid4().hex[:8]}"
        cfg = _config(name, url, "benchmarks.storage:sleep_objective", n * per_worker)
        create_study(cfg)
        sync = str(tmp / name)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.storage", "--worker", url, name, sync],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
                 for _ in range(n)]
        try:
            while len(list(tmp.glob(f"{name}.*.ready"))) < n:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a benchmark worker died before the start")
                time.sleep(0.05)
            Path(f"{sync}.go").write_text(str(time.time() + 0.5))
            time.sleep(0.5)
            cpu_before = _cpu_times()
            outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            _delete(url, name)
        start = outs[0]["start"]
        finished = sorted(t for o in outs for t in o["finished"])
        span = finished[-1] - start
        n_trials = len(finished)
        eff = n_trials * SLEEP_TRIAL / (n * span)
        busy = _cpu_busy(cpu_before)
        row = {"workers": n, "trials": n_trials, "span_s": span,
               "ideal_s": per_worker * SLEEP_TRIAL, "efficiency": eff,
               "take_ms": 1000 * sum(o["take"] for o in outs) / n_trials,
               "cpu_ms": 1000 * sum(o["cpu"] for o in outs) / n_trials,
               "machine_busy": busy}
        rows.append(row)
        print(f"{n:2d} workers: {n_trials} trials in {span:.2f} s (ideal {row['ideal_s']:.0f} s): "
              f"efficiency {100 * eff:.1f}%; taking a trial {row['take_ms']:.0f} ms, worker CPU "
              f"{row['cpu_ms']:.0f} ms per trial; machine CPU busy {100 * busy:.0f}%",
              file=sys.stderr)
    return rows


# --- statements per trial -------------------------------------------------------------------


def count_statements(url: str, n: int = 100) -> dict[str, dict[str, float]]:
    """Statements and pool checkouts per trial, hpo's worker loop vs ``study.optimize``, counted
    with SQLAlchemy events over ``n`` trials after 20 warm-up trials (dummy objective)."""
    import collections
    import dataclasses

    import optuna
    import sqlalchemy

    from hpo.storage import rdb_backend
    from hpo.study import create_study
    from hpo.study import load_study
    from hpo.worker import run_worker

    def counting(engine: Any, run: Callable[[], Any]) -> dict[str, float]:
        kinds: collections.Counter[str] = collections.Counter()
        checkouts = [0]

        def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            kinds[sql.split()[0].upper()] += 1

        def checkout(*args: Any) -> None:
            checkouts[0] += 1

        sqlalchemy.event.listen(engine, "before_cursor_execute", statement)
        sqlalchemy.event.listen(engine, "checkout", checkout)
        try:
            run()
        finally:
            sqlalchemy.event.remove(engine, "before_cursor_execute", statement)
            sqlalchemy.event.remove(engine, "checkout", checkout)
        return {"statements": sum(kinds.values()) / n, **{k: v / n for k, v in kinds.items()},
                "checkouts": checkouts[0] / n}

    out = {}
    name = f"bench-count-{uuid.uuid4().hex[:8]}"
    cfg = _config(name, url, OBJECTIVE, 20 + n)
    create_study(cfg)
    try:
        study, cfg, space = load_study(url, name, allowed_objectives=(OBJECTIVE,))
        run_worker(study, dataclasses.replace(cfg, n_trials=20), space, seed=1)
        out["hpo"] = counting(rdb_backend(study._storage).engine,
                              lambda: run_worker(study, cfg, space, seed=1))
    finally:
        _delete(url, name)
    storage = optuna.storages.RDBStorage(url)
    plain = optuna.create_study(storage=storage, study_name=name,
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        return dummy_objective(trial, {"x": trial.suggest_float("x", -1, 1),
                                       "y": trial.suggest_float("y", -1, 1)}, {})

    try:
        plain.optimize(objective, n_trials=20)
        out["optuna"] = counting(storage.engine, lambda: plain.optimize(objective, n_trials=n))
    finally:
        optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()
    return out


# --- report ---------------------------------------------------------------------------------


def markdown(command: str, n: int, over: list[dict[str, Any]], par: list[dict[str, Any]],
             seconds: float) -> str:
    import optuna
    import sqlalchemy

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        BEGIN,
        f"Command: `{command}` ({seconds / 60:.1f} min; {platform.machine()}, {os.cpu_count()} "
        f"cores, load average at the end {load}; Python {platform.python_version()}, optuna "
        f"{optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}; loopback servers).",
        "",
        f"Per-trial storage time, ms (dummy objective: {N_REPORTS} reports, random sampler; "
        f"mean over the first, middle and last tenth of the trials; \"last\" for hpo is at "
        f"trial {n}):",
        "",
        "| backend | path | trials | first | middle | last | median, all "
        "| hpo / optuna (medians over the same trials) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    medians = {(r["backend"], r["path"]): r["median_compared"] for r in over if "skipped" not in r}
    for r in over:
        if "skipped" in r:
            lines.append(f"| {r['backend']} | skipped: {r['skipped']} | | | | | | |")
            continue
        ratio = ""
        if r["path"] == "hpo" and (r["backend"], "optuna") in medians:
            ratio = f"{r['median_compared'] / medians[(r['backend'], 'optuna')]:.2f}"
        lines.append(f"| {r['backend']} | {r['path']} | {r['n_trials']} | {r['first']:.1f} | "
                     f"{r['middle']:.1f} | {r['last']:.1f} | {r['median_all']:.1f} | {ratio} |")
    if par:
        lines += [
            "",
            f"Parallel efficiency on PostgreSQL ({SLEEP_TRIAL:.0f} s sleep-based trials, "
            f"{N_REPORTS} reports each, {par[0]['trials'] // par[0]['workers']} trials per worker):",
            "",
            "| workers | trials | wall from start to last trial, s | ideal, s | efficiency | "
            "taking a trial, ms/trial | worker CPU, ms/trial | machine CPU busy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in par:
            lines.append(f"| {r['workers']} | {r['trials']} | {r['span_s']:.2f} | "
                         f"{r['ideal_s']:.0f} | {100 * r['efficiency']:.1f}% | "
                         f"{r['take_ms']:.0f} | {r['cpu_ms']:.0f} | {100 * r['machine_busy']:.0f}% |")
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, block: str) -> None:
    """Put ``block`` between the markers in ``path`` (adding the section if it is missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Storage (issue 3)\n\n" + block + "\n"
    path.write_text(text)


@contextlib.contextmanager
def _tmpdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as d:
        yield Path(d)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storage", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 trials, 1-4 workers")
    parser.add_argument("--trials", type=int, help="trials per overhead run (default 1000)")
    parser.add_argument("--compare-trials", type=int, default=400,
                        help="plain optuna's trials except on PostgreSQL (there: --trials)")
    parser.add_argument("--backends", default="sqlite,postgresql,mysql,journal")
    parser.add_argument("--workers", help="worker counts (default 1,2,4,8,16)")
    parser.add_argument("--per-worker", type=int, default=5, help="trials per worker (parallel)")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--write", type=Path, help="update the results block in this markdown file")
    parser.add_argument("--statements", action="store_true",
                        help="only count statements per trial on PostgreSQL, hpo vs optuna")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(*args.worker)
        return
    if args.statements:
        for path, row in count_statements(POSTGRES).items():
            shown = ", ".join(f"{k} {v:.1f}" for k, v in row.items())
            print(f"{path:6s}: {shown} per trial")
        return
    n = args.trials or (200 if args.quick else 1000)
    workers = [int(w) for w in (args.workers or ("1,2,4" if args.quick else "1,2,4,8,16")).split(",")]
    t0 = time.perf_counter()
    with _tmpdir() as tmp:
        over = [] if args.skip_overhead else overhead(n, args.backends.split(","), tmp,
                                                        args.compare_trials)
        par: list[dict[str, Any]] = []
        if not args.skip_parallel:
            down = _reachable(POSTGRES)
            if down:
                print(f"parallel: skipped (PostgreSQL: {down})", file=sys.stderr)
            else:
                par = parallel(POSTGRES, workers, args.per_worker, tmp)
    command = "python -m benchmarks.storage" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    block = markdown(command.replace(f" --write {args.write}", ""), n, over, par, time.perf_counter() - t0)
    print(block)
    if args.write:
        write_section(args.write, block)


_: Callable[..., Any] = main

if __name__ == "__main__":
    main()
