"""Local workers on the devices of one machine: one per GPU, K per GPU, or data-parallel groups.

``hpo run --devices 0,1,2,3`` (and ``hpo worker --devices ...``) starts one ``hpo worker``
process per listed GPU, pinned to it with ``CUDA_VISIBLE_DEVICES``; ``--workers-per-device K``
starts K on each. With ``devices_per_trial: N`` in the study, each worker is a group of N
processes started by torch's own launcher (``torchrun``), one trial at a time across its N
devices (see :mod:`hpo.ranks`); without ``--devices`` such a group runs on the CPU with gloo.

All workers join the same study and share its budget. This process shows one progress display
(read from the study) and one summary, prefixes each worker's warnings with its name, and
forwards Ctrl-C and SIGTERM to all of them: each hands its running trial back, as a single
worker does. The storage URL reaches the workers in their environment (``HPO_STORAGE``), never
on a command line that ``ps`` would show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from hpo.errors import ConfigError
from hpo.worker import RunSummary
from hpo.worker import best_trial_info

__all__ = ["Group", "parse_devices", "plan_groups", "run_local_workers"]

_LOG = logging.getLogger("hpo")
_POLL = 1.0  # seconds between looks at the study for finished trials


def parse_devices(value: str) -> list[int]:
    """GPU indices from ``--devices`` (``0,1,3`` or ``all``), checked against what is visible.

    Raises:
        ConfigError: a malformed list, a repeated index, an index this machine lacks, or no
            CUDA at all, with what would be valid.
    """
    from objectives.devices import cuda_device_count

    count = cuda_device_count()
    if count == 0:
        raise ConfigError(
            f"--devices {value}: no CUDA device is visible here (torch.cuda.is_available() is "
            "False); leave --devices out to train on the CPU"
        )
    if value.strip() == "all":
        return list(range(count))
    try:
        devices = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--devices {value!r}: expected GPU indices like 0,1,2 or 'all'"
        ) from None
    if not devices or len(set(devices)) != len(devices) or min(devices) < 0:
        raise ConfigError(f"--devices {value!r}: expected distinct GPU indices like 0,1,2 or 'all'")
    missing = [d for d in devices if d >= count]
    if missing:
        raise ConfigError(
            f"--devices {value}: this machine has {count} visible GPU(s) (0..{count - 1}), "
            f"not {', '.join(map(str, missing))}"
        )
    return devices


@dataclass
class Group:
    """One worker: a process on some devices (a torchrun group when it has several ranks)."""

    name: str
    devices: list[int] | None  # GPU indices it is pinned to; None: the CPU
    ranks: int = 1  # data-parallel processes (devices_per_trial)


def plan_groups(devices: list[int] | None, per_device: int, devices_per_trial: int,
                base: str) -> list[Group]:
    """The workers to start: ``per_device`` on each device group of ``devices_per_trial`` GPUs
    (or one group of CPU ranks when ``devices`` is None).

    Raises:
        ConfigError: the devices do not divide into groups of ``devices_per_trial``.
    """
    if devices is None:
        return [Group(f"{base}-cpu-{j}", None, devices_per_trial) for j in range(per_device)]
    if len(devices) % devices_per_trial:
        raise ConfigError(
            f"--devices: {len(devices)} GPU(s) do not divide into groups of devices_per_trial="
            f"{devices_per_trial}"
        )
    groups = []
    for start in range(0, len(devices), devices_per_trial):
        ids = devices[start : start + devices_per_trial]
        label = "gpu" + "+".join(map(str, ids))
        groups += [Group(f"{base}-{label}-{j}", ids, devices_per_trial) for j in range(per_device)]
    return groups


def _command(group: Group, study: str, threads: int | None, log_dir: str | None) -> list[str]:
    worker = ["-m", "hpo", "-q", "worker", "--study", study, "--worker-id", group.name]
    if group.devices is not None:
        worker += ["--device", "cuda"]
    if threads:
        worker += ["--threads", str(threads)]
    if log_dir:
        worker += ["--log-dir", log_dir]
    if group.ranks > 1:
        # torch's launcher: one process per device, RANK/WORLD_SIZE/LOCAL_RANK in their env.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={group.ranks}", *worker]
    return [sys.executable, *worker]


def _die_with_parent() -> None:
    """In a worker, before it starts: SIGTERM it when this process dies (Linux), so that no
    worker outlives a launcher that was killed."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Child:
    group: Group
    popen: subprocess.Popen[bytes]
    tail: list[str] = field(default_factory=list)  # its last stderr lines


def _relay(child: _Child, quiet: bool) -> None:
    """Copy a worker's stderr to ours, one prefixed line at a time; keep the last lines."""
    assert child.popen.stderr is not None
    for raw in child.popen.stderr:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            continue
        child.tail = (child.tail + [line])[-20:]
        if not quiet:
            print(f"[{child.group.name}] {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _forwarded_signals(children: list[_Child]) -> Iterator[dict[str, int | None]]:
    """SIGINT/SIGTERM to this process go to every worker (each hands its trial back)."""
    got: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, _frame: Any) -> None:
        got["signal"] = got["signal"] or signum
        for c in children:
            if c.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    c.popen.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_local_workers(
    url: str,
    study_name: str,
    groups: list[Group],
    *,
    threads: int | None = None,
    quiet: bool = False,
    log_dir: str | None = None,
    n_trials: int | None = None,
) -> tuple[RunSummary, list[str]]:
    """Start the workers of ``groups`` on study ``study_name`` and wait for all of them.

    Returns:
        The combined summary (trials by state, the best trial, trials run by these workers,
        ``interrupted`` when a signal stopped them) and one line per worker that failed.
    """
    from optuna.trial import TrialState

    from hpo.output import progress
    from hpo.study import open_study
    from objectives.record import WorkerRecord

    study = open_study(url, study_name)
    names = {g.name for g in groups}
    t0 = time.monotonic()
    env = {**os.environ, "HPO_STORAGE": url}
    if "OMP_NUM_THREADS" not in env:  # the cores, split over every process started here
        ranks = sum(g.ranks for g in groups)
        env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // ranks))
    children: list[_Child] = []
    for group in groups:
        child_env = dict(env)
        if group.devices is not None:
            child_env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, group.devices))
        popen = subprocess.Popen(
            _command(group, study_name, threads, log_dir), env=child_env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # signals reach them from us, once, not from the terminal
            preexec_fn=_die_with_parent,
        )
        children.append(_Child(group, popen))
    relays = [threading.Thread(target=_relay, args=(c, quiet), daemon=True) for c in children]
    for r in relays:
        r.start()
    shown: set[int] = set()
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    with _forwarded_signals(children) as got, progress(n_trials, quiet) as bar:
        bar.start({"finished": len(study.get_trials(deepcopy=False, states=finished))})
        shown = {t.number for t in study.get_trials(deepcopy=False, states=finished)}
        while True:
            done = all(c.popen.poll() is not None for c in children)
            for t in study.get_trials(deepcopy=False, states=finished):
                if t.number not in shown:
                    shown.add(t.number)
                    worker = WorkerRecord.from_attrs(t.user_attrs)
                    seconds = worker.wall_seconds
                    if seconds is None:  # a trial handed back mid-run
                        seconds = t.duration.total_seconds() if t.duration is not None else 0.0
                    bar.line(t, seconds, worker.worker_id)
            if done:
                break
            time.sleep(_POLL)
    for r in relays:
        r.join(timeout=5)
    failed = []
    for c in children:
        code = c.popen.returncode
        if code not in (0, 130, 143, -signal.SIGTERM, -signal.SIGINT):
            last = next((line for line in reversed(c.tail) if line.strip()), "no output")
            failed.append(f"worker {c.group.name} exited with code {code}: {last}")
    trials = study.get_trials(deepcopy=False)
    summary = RunSummary(study=study_name, worker={"host": socket.gethostname(),
                                                   "workers": [g.name for g in groups]})
    for t in trials:
        summary.counts[t.state.name.lower()] = summary.counts.get(t.state.name.lower(), 0) + 1
    summary.ran = sum(
        1 for t in trials if t.state in finished
        and WorkerRecord.from_attrs(t.user_attrs).worker_id in names
    )
    summary.best = best_trial_info(study)
    summary.stopped = study.user_attrs.get("stopped")
    summary.seconds = time.monotonic() - t0
    if got["signal"] is not None:
        summary.interrupted = signal.Signals(got["signal"]).name
    return summary, failed
