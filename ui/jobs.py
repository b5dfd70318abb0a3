"""Background jobs: one worker process per job, on the SQLite store of :mod:`ui.jobstore`.

A job is run by ``python -m ui.jobs run JOB_ID --db DB`` in a new session (closing the browser
or stopping the app does not stop it). The worker imports the job's *target*, a
``"train.module:function"`` name (or this module's ``"ui.jobs:selftest_job"``), and calls::

    fn(params: dict, progress: ProgressFn, should_stop: StopFn,
       log: Callable[[str], None], metrics: Callable[[int, dict], None]) -> None

``progress`` becomes the job's stage, fraction and ETA; ``should_stop`` reads the cancel flag;
``log`` keeps the last lines; ``metrics`` stores one row per step (e.g. the losses). The target
raising :class:`~infer.errors.Cancelled` ends the job as ``cancelled``; any other exception as
``failed`` with its message. Importing this module needs no Gradio.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infer.errors import Cancelled, TimbreError
from infer.fsutil import describe_os_error
from infer.progress import ProgressFn, StopFn, check_stop
from ui.jobstore import (
    ACTIVE_STATES,
    FINAL_STATES,
    JOB_STATES,
    RESUMABLE_STATES,
    Job,
    JobConflictError,
    JobError,
    JobNotFoundError,
    JobStore,
    LogFn,
    MetricsFn,
    check_target,
    estimate_eta_s,
    is_process_alive,
    process_start_token,
    resolve_target,
)

__all__ = [
    "ACTIVE_STATES", "FINAL_STATES", "JOB_STATES", "RESUMABLE_STATES", "Job", "JobConflictError", "JobError",
    "JobNotFoundError", "JobStore", "check_target", "estimate_eta_s", "is_process_alive", "main",
    "process_start_token", "resume_job", "run_worker", "selftest_job", "start_job", "worker_log_path",
]  # fmt: skip

log = logging.getLogger(__name__)

JOB_LOG_DIR_NAME = "job_logs"
PROGRESS_WRITE_INTERVAL_S = 0.25
STOP_CHECK_INTERVAL_S = 0.5


def worker_log_path(store: JobStore, job_id: int) -> Path:
    """Where a worker's own stdout/stderr go (next to the database)."""
    return store.db_path.parent / JOB_LOG_DIR_NAME / f"job-{int(job_id)}.log"


def start_job(store: JobStore, job_id: int, *, target: str, python: str | None = None) -> subprocess.Popen:
    """Launch the worker process for a queued job; return it (poll it to reap it).

    The worker runs in a new session, so it outlives the browser tab and the app process.
    """
    store.set_target(job_id, target)
    log_path = worker_log_path(store, job_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    db = str(store.db_path.absolute())
    argv = [python or sys.executable, "-m", "ui.jobs", "run", str(int(job_id)), "--db", db]
    try:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
    except OSError as exc:
        store.finish(job_id, "failed", f"could not start the worker process: {exc}")
        raise JobError(f"could not start a worker for job #{job_id}: {exc}") from exc
    store.set_worker(job_id, proc.pid, process_start_token(proc.pid))
    log.info("job #%d: worker pid %d runs %s (log %s)", job_id, proc.pid, target, log_path)
    return proc


def resume_job(store: JobStore, job_id: int, *, python: str | None = None) -> subprocess.Popen:
    """Queue an interrupted/failed/cancelled job again and start a worker on it."""
    job = store.reset_for_resume(job_id)
    if job.target is None:
        store.finish(job_id, "failed", "the job has no target function; create it again")
        raise JobError(f"job #{job_id} has no target function; create it again")
    return start_job(store, job_id, target=job.target, python=python)


class _Reporter:
    """The callbacks handed to a job's target, writing to the store (throttled)."""

    def __init__(self, store: JobStore, job_id: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._job_id = job_id
        self._clock = clock
        self._lock = threading.Lock()
        self._origin: tuple[float, float] | None = None
        self._last_write_s = 0.0
        self._last_stage: str | None = None
        self._pending: tuple[float, str] | None = None
        self._last_stop_check_s = 0.0
        self._is_stopping = False

    def progress(self, fraction: float, stage: str) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        now = self._clock()
        with self._lock:
            if self._origin is None:
                self._origin = (now, fraction)
            self._pending = (fraction, stage)
            if (
                stage == self._last_stage
                and fraction < 1.0
                and now - self._last_write_s < PROGRESS_WRITE_INTERVAL_S
            ):
                return
            self._write_locked(now)

    def _write_locked(self, now: float) -> None:
        if self._pending is None or self._origin is None:
            return
        fraction, stage = self._pending
        eta = estimate_eta_s(now - self._origin[0], fraction, self._origin[1])
        self._store.update_progress(self._job_id, fraction, stage, eta_s=eta, message="running")
        self._last_write_s = now
        self._last_stage = stage
        self._pending = None

    def flush(self) -> None:
        with self._lock:
            self._write_locked(self._clock())

    def should_stop(self) -> bool:
        now = self._clock()
        with self._lock:
            if not self._is_stopping and now - self._last_stop_check_s >= STOP_CHECK_INTERVAL_S:
                self._last_stop_check_s = now
                self._is_stopping = self._store.is_cancel_requested(self._job_id)
            return self._is_stopping

    def log(self, line: str) -> None:
        log.info("job #%d: %s", self._job_id, line)
        self._store.add_log(self._job_id, line)

    def metrics(self, step: int, values: dict) -> None:
        self._store.add_metrics(self._job_id, step, values)


class _WorkerTerminated(Exception):
    """SIGTERM reached the worker."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _WorkerTerminated(f"signal {signum}")


def run_worker(db_path: str | os.PathLike[str], job_id: int) -> int:
    """Run one queued job in this process; return the process exit status."""
    store = JobStore(db_path)
    job = store.get_job(job_id)
    if job.state != "queued":
        log.error("job #%d is %s; a worker only runs queued jobs", job_id, job.state)
        return 2
    if job.is_cancel_requested:
        store.finish(job_id, "cancelled")
        return 0
    job = store.mark_running(job_id, os.getpid(), process_start_token(os.getpid()))
    is_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if is_main_thread else None
    try:
        return _run_target(store, job)
    finally:
        if is_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)


def _run_target(store: JobStore, job: Job) -> int:
    job_id = job.id
    reporter = _Reporter(store, job_id)
    try:
        fn = resolve_target(job.target or "")
        reporter.log(f"{job.kind} started ({job.target}, attempt {job.attempts})")
        fn(dict(job.params), reporter.progress, reporter.should_stop, reporter.log, reporter.metrics)
        reporter.flush()
    except Cancelled:
        reporter.flush()
        reporter.log("stopped on request")
        store.finish(job_id, "cancelled")
        return 0
    except _WorkerTerminated:
        reporter.flush()
        store.finish(job_id, "interrupted", "the worker was stopped by a signal; press Resume to continue")
        return 1
    except TimbreError as exc:
        reporter.flush()
        reporter.log(f"error: {exc}")
        store.finish(job_id, "failed", str(exc))
        return 1
    except OSError as exc:  # a full disk, a lost folder: one readable line, not a traceback
        log.warning("job #%d failed: %s", job_id, exc)
        readable = describe_os_error(exc, job.params.get("work_dir"))
        reporter.flush()
        reporter.log(f"error: {readable}")
        store.finish(job_id, "failed", str(readable))
        return 1
    except Exception as exc:
        log.exception("job #%d failed", job_id)
        reporter.flush()
        for line in traceback.format_exc().splitlines()[-12:]:
            store.add_log(job_id, line)
        store.finish(job_id, "failed", f"{type(exc).__name__}: {exc}")
        return 1
    reporter.log(f"{job.kind} finished")
    store.finish(job_id, "done")
    return 0


SELFTEST_PARAM_KEYS = frozenset({"steps", "step_s", "fail_at_step", "resume"})


def selftest_job(
    params: dict[str, Any], progress: ProgressFn, should_stop: StopFn, log: LogFn, metrics: MetricsFn
) -> None:
    """A harmless target that checks the job machinery: counts steps, reports, honours cancel.

    Params: ``steps`` (int, default 20), ``step_s`` (seconds per step, default 0.05),
    ``fail_at_step`` (raise JobError at that step, default none).
    """
    unknown = set(params) - SELFTEST_PARAM_KEYS
    if unknown:
        raise JobError(f"unknown selftest parameter(s): {sorted(unknown)}")
    steps = int(params.get("steps", 20))
    step_s = float(params.get("step_s", 0.05))
    fail_at = params.get("fail_at_step")
    if not 1 <= steps <= 100_000 or not 0.0 <= step_s <= 10.0:
        raise JobError("selftest needs 1 <= steps <= 100000 and 0 <= step_s <= 10")
    log(f"selftest: {steps} steps of {step_s:.3f} s")
    progress(0.0, "selftest")
    for step in range(steps):
        check_stop(should_stop)
        time.sleep(step_s)
        metrics(step, {"loss": 1.0 / (step + 1), "step_s": step_s})
        if fail_at is not None and step == int(fail_at):
            raise JobError(f"selftest failure requested at step {step}")
        progress((step + 1) / steps, "selftest")
    log("selftest: all steps done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.jobs", description="Run a Timbre background job.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one queued job (started by the app)")
    run.add_argument("job_id", type=int)
    run.add_argument("--db", required=True, type=Path, help="the job database")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_worker(args.db, args.job_id)
    except TimbreError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    # Run the copy imported as ``ui.jobs``, so targets in this module share its classes.
    from ui.jobs import main as _main

    sys.exit(_main())
