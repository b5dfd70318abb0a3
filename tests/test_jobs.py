"""Job store round trips, progress/ETA, cancel, and real worker processes running the selftest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infer.catalog import InvalidModelNameError
from ui import jobs
from ui.jobs import (
    JobConflictError,
    JobError,
    JobNotFoundError,
    JobStore,
    check_target,
    estimate_eta_s,
    is_process_alive,
    process_start_token,
    resume_job,
    run_worker,
    start_job,
)

SELFTEST = "ui.jobs:selftest_job"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.db")


def _wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError("condition not reached in time")


def _finish_proc(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_create_and_read_back(store: JobStore) -> None:
    job_id = store.create_job("alice", "prepare", {"sample_rate": 40000, "dataset": ["a.wav"]})
    other = store.create_job("bob", "fit", {"epochs": 3}, target=SELFTEST)
    job = store.get_job(job_id)
    assert (job.id, job.experiment, job.kind, job.state) == (job_id, "alice", "prepare", "queued")
    assert job.params == {"sample_rate": 40000, "dataset": ["a.wav"]}
    assert job.target is None and job.pid is None and job.fraction == 0.0 and job.eta_s is None
    assert job.is_active and not job.is_resumable and not job.is_cancel_requested
    assert store.get_job(other).target == SELFTEST
    assert [j.id for j in store.list_jobs()] == [other, job_id]
    assert [j.id for j in store.list_jobs("alice")] == [job_id]
    assert store.active_job("alice").id == job_id
    assert store.active_job("carol") is None
    # A second JobStore on the same file (another process in real use) sees the same rows.
    assert JobStore(store.db_path).get_job(job_id).params == job.params


def test_create_rejects_bad_input(store: JobStore) -> None:
    with pytest.raises(InvalidModelNameError):
        store.create_job("../etc", "prepare", {})
    with pytest.raises(JobError, match="kind"):
        store.create_job("alice", "Prepare; DROP", {})
    with pytest.raises(JobError, match="plain JSON"):
        store.create_job("alice", "prepare", {"path": Path("/tmp")})
    with pytest.raises(JobError, match="plain JSON"):
        store.create_job("alice", "prepare", {"x": float("nan")})
    with pytest.raises(JobError, match="not allowed"):
        store.create_job("alice", "prepare", {}, target="os:system")
    with pytest.raises(JobNotFoundError, match="no job #99"):
        store.get_job(99)
    assert store.list_jobs() == []


def test_one_active_job_per_experiment(store: JobStore) -> None:
    first = store.create_job("alice", "prepare", {})
    with pytest.raises(JobConflictError, match=rf"job #{first} \(prepare, queued\)"):
        store.create_job("alice", "fit", {})
    assert store.create_job("bob", "fit", {}) > first
    store.finish(first, "failed", "boom")
    second = store.create_job("alice", "fit", {})
    # The failed job cannot be resumed while the new one is active.
    with pytest.raises(JobConflictError, match=rf"job #{second}"):
        store.reset_for_resume(first)
    store.finish(second, "done")
    resumed = store.reset_for_resume(first)
    assert resumed.state == "queued" and resumed.params == {"resume": True} and resumed.error is None
    with pytest.raises(JobError, match="only interrupted, failed or cancelled"):
        store.reset_for_resume(second)


def test_progress_metrics_and_log(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db", max_log_lines=5)
    job_id = store.create_job("alice", "fit", {})
    store.update_progress(job_id, 1.7, "fit", eta_s=12.5, message="epoch 3")
    job = store.get_job(job_id)
    assert (job.fraction, job.stage, job.eta_s, job.message) == (1.0, "fit", 12.5, "epoch 3")
    store.update_progress(job_id, -0.2, "fit", eta_s=float("inf"))
    job = store.get_job(job_id)
    assert (job.fraction, job.eta_s, job.message) == (0.0, None, "epoch 3")

    import numpy as np

    for step in range(6):
        store.add_metrics(job_id, step, {"loss_mel": np.float32(10 - step)})
    store.add_metrics(job_id, 5, {"loss_kl": float("nan")})
    rows = store.latest_metrics(job_id, limit=3)
    assert [step for step, _ in rows] == [3, 4, 5]
    assert rows[-1][1] == {"loss_mel": 5.0, "loss_kl": None}
    with pytest.raises(JobError, match="not a number"):
        store.add_metrics(job_id, 6, {"loss": "high"})

    for i in range(12):
        store.add_log(job_id, f"line {i}\n")
    assert store.tail_log(job_id, 3) == ["line 9", "line 10", "line 11"]
    assert store.tail_log(job_id, 50) == [f"line {i}" for i in range(7, 12)]


def test_eta_estimate() -> None:
    assert estimate_eta_s(10.0, 0.25) == pytest.approx(30.0)
    assert estimate_eta_s(10.0, 0.75, start_fraction=0.5) == pytest.approx(10.0)
    assert estimate_eta_s(10.0, 0.0) is None
    assert estimate_eta_s(0.0, 0.5) is None
    assert estimate_eta_s(5.0, 1.0) == 0.0


def test_reporter_writes_progress_with_eta_and_throttles(store: JobStore) -> None:
    job_id = store.create_job("alice", "fit", {})
    now = [100.0]
    reporter = jobs._Reporter(store, job_id, clock=lambda: now[0])
    reporter.progress(0.0, "prepare")
    now[0] = 110.0
    reporter.progress(0.25, "prepare")
    job = store.get_job(job_id)
    assert (job.stage, job.fraction, job.eta_s) == ("prepare", 0.25, pytest.approx(30.0))
    now[0] = 110.1  # within the write interval, same stage: held back until flush
    reporter.progress(0.3, "prepare")
    assert store.get_job(job_id).fraction == 0.25
    reporter.flush()
    assert store.get_job(job_id).fraction == pytest.approx(0.3)
    now[0] = 110.2  # a new stage is written at once
    reporter.progress(0.31, "extract")
    assert store.get_job(job_id).stage == "extract"


def test_cancel_flag(store: JobStore) -> None:
    queued = store.create_job("alice", "prepare", {})
    job = store.request_cancel(queued)
    assert job.state == "cancelled" and job.finished_at is not None  # no worker yet: at once

    running = store.create_job("alice", "fit", {})
    store.mark_running(running, os.getpid(), process_start_token(os.getpid()))
    assert not store.is_cancel_requested(running)
    job = store.request_cancel(running)
    assert job.state == "running" and job.is_cancel_requested and store.is_cancel_requested(running)
    reporter = jobs._Reporter(store, running)
    assert reporter.should_stop() is True


def test_worker_in_process_runs_selftest_and_restores_sigterm(store: JobStore) -> None:
    before = signal.getsignal(signal.SIGTERM)
    job_id = store.create_job("alice", "selftest", {"steps": 5, "step_s": 0.0}, target=SELFTEST)
    assert run_worker(store.db_path, job_id) == 0
    job = store.get_job(job_id)
    assert (job.state, job.fraction, job.eta_s, job.attempts, job.pid) == ("done", 1.0, 0.0, 1, os.getpid())
    assert [step for step, _ in store.latest_metrics(job_id)] == [0, 1, 2, 3, 4]
    assert store.latest_metrics(job_id)[-1][1]["loss"] == pytest.approx(0.2)
    assert store.tail_log(job_id, 1) == ["selftest finished"]
    assert signal.getsignal(signal.SIGTERM) is before
    assert run_worker(store.db_path, job_id) == 2  # a finished job is not run again


def test_worker_reports_failures(store: JobStore) -> None:
    failing = store.create_job(
        "alice", "selftest", {"steps": 5, "step_s": 0.0, "fail_at_step": 2}, target=SELFTEST
    )
    assert run_worker(store.db_path, failing) == 1
    job = store.get_job(failing)
    assert job.state == "failed" and job.error == "selftest failure requested at step 2"
    assert [step for step, _ in store.latest_metrics(failing)] == [0, 1, 2]

    missing = store.create_job("bob", "fit", {}, target="train.no_such_module:run_stage")
    assert run_worker(store.db_path, missing) == 1
    job = store.get_job(missing)
    assert job.state == "failed" and "train.no_such_module is not available" in job.error


@pytest.mark.parametrize(
    "target", ["os:system", "ui.jobs:_run_target", "trainer.x:y", "ui.jobs", "train:f", "train..x:f"]
)
def test_targets_outside_train_are_refused(target: str) -> None:
    with pytest.raises(JobError, match="not allowed"):
        check_target(target)


def test_allowed_target_shape() -> None:
    assert check_target(SELFTEST) == SELFTEST
    assert check_target("train.pipeline:run_stage") == "train.pipeline:run_stage"


def test_process_liveness() -> None:
    token = process_start_token(os.getpid())
    assert is_process_alive(os.getpid(), token)
    assert not is_process_alive(os.getpid(), "not-my-start-time")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not is_process_alive(proc.pid)


def test_subprocess_worker_runs_to_done(store: JobStore) -> None:
    job_id = store.create_job("alice", "selftest", {"steps": 8, "step_s": 0.02})
    proc = start_job(store, job_id, target=SELFTEST)
    assert proc.args[:4] == [sys.executable, "-m", "ui.jobs", "run"]
    assert _finish_proc(proc) == 0
    job = store.get_job(job_id)
    assert (job.state, job.fraction, job.pid, job.target) == ("done", 1.0, proc.pid, SELFTEST)
    assert len(store.latest_metrics(job_id)) == 8
    assert "selftest: all steps done" in store.tail_log(job_id, 5)
    assert jobs.worker_log_path(store, job_id).read_text().count("job #") >= 2


def test_subprocess_worker_honours_cancel(store: JobStore) -> None:
    job_id = store.create_job("alice", "selftest", {"steps": 400, "step_s": 0.05})
    proc = start_job(store, job_id, target=SELFTEST)
    _wait_for(lambda: store.get_job(job_id).fraction > 0)
    store.request_cancel(job_id)
    t0 = time.monotonic()
    assert _finish_proc(proc) == 0
    assert time.monotonic() - t0 < 5.0
    job = store.get_job(job_id)
    assert job.state == "cancelled" and 0 < job.fraction < 1
    assert "stopped on request" in store.tail_log(job_id, 3)


def test_killed_worker_is_marked_interrupted_and_resumes(store: JobStore) -> None:
    job_id = store.create_job("alice", "selftest", {"steps": 40, "step_s": 0.03})
    proc = start_job(store, job_id, target=SELFTEST)
    _wait_for(lambda: store.get_job(job_id).state == "running" and store.get_job(job_id).fraction > 0)
    assert store.recover_interrupted() == []  # alive: left alone
    os.kill(proc.pid, signal.SIGKILL)
    # Not reaped yet: the dead worker is a zombie, which must count as gone.
    _wait_for(lambda: not is_process_alive(proc.pid))
    assert store.recover_interrupted() == [job_id]
    proc.wait()
    job = store.get_job(job_id)
    assert job.state == "interrupted" and "Resume" in job.error and job.eta_s is None
    assert job.is_resumable and not job.is_active

    proc2 = resume_job(store, job_id)
    assert _finish_proc(proc2) == 0
    job = store.get_job(job_id)
    assert (job.state, job.attempts, job.params["resume"]) == ("done", 2, True)
    assert "--- resumed ---" in store.tail_log(job_id, 50)


def test_queued_job_without_worker_times_out(store: JobStore) -> None:
    job_id = store.create_job("alice", "prepare", {})
    assert store.recover_interrupted(queued_grace_s=60.0) == []
    assert store.recover_interrupted(queued_grace_s=0.0) == [job_id]
    assert store.get_job(job_id).state == "interrupted"


def test_threads_share_the_store(store: JobStore) -> None:
    job_id = store.create_job("alice", "fit", {})

    def write(k: int) -> None:
        for i in range(25):
            store.add_metrics(job_id, k * 100 + i, {"loss": float(i)})

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(write, k) for k in range(4)]:
            future.result()
    assert len(store.latest_metrics(job_id, limit=1000)) == 100
