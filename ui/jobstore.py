"""The job store: jobs, their metrics and log lines in one SQLite file (no model code, no Gradio).

Size: one SQLite schema and every query on it, kept together as one contract.

See :mod:`ui.jobs` for the worker that runs them.

The store is one SQLite file (WAL mode) that the web app and every worker open on their own,
so all of them read one consistent state and a restarted app finds every job again. A job is
run by ``python -m ui.jobs run JOB_ID --db DB`` in a new session (closing the browser or
stopping the app does not stop it). The worker imports the job's *target*, a
``"train.module:function"`` name (or this module's ``"ui.jobs:selftest_job"``), and calls::

    fn(params: dict, progress: ProgressFn, should_stop: StopFn,
       log: Callable[[str], None], metrics: Callable[[int, dict], None]) -> None

``progress`` becomes the job's stage, fraction and ETA; ``should_stop`` reads the cancel flag;
``log`` keeps the last lines; ``metrics`` stores one row per step (e.g. the losses). The target
raising :class:`~infer.errors.Cancelled` ends the job as ``cancelled``; any other exception as
``failed`` with its message. A ``running`` job whose worker is gone is marked ``interrupted``
by :meth:`JobStore.recover_interrupted` and can be resumed (its params then carry
``"resume": True``). At most one job per experiment is queued or running at a time.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infer.catalog import validate_model_name
from infer.errors import TimbreError
from infer.progress import ProgressFn, StopFn

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled", "interrupted")
RESUMABLE_STATES = ("interrupted", "failed", "cancelled")
DEFAULT_MAX_LOG_LINES = 500
MAX_LOG_LINE_CHARS = 2000
BUSY_TIMEOUT_S = 15.0
QUEUED_GRACE_S = 60.0
TARGET_PACKAGES = ("train", "ui")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TARGET_RE = re.compile(r"^(train|ui)(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z][A-Za-z0-9_]*$")

LogFn = Callable[[str], None]
MetricsFn = Callable[[int, dict], None]
JobTarget = Callable[[dict, ProgressFn, StopFn, LogFn, MetricsFn], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    fraction REAL NOT NULL DEFAULT 0,
    eta_s REAL,
    message TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    pid_start TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_experiment ON jobs (experiment, state);
CREATE TABLE IF NOT EXISTS metrics (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_job ON logs (job_id, id);
"""


class JobError(TimbreError):
    """A job cannot be created, started, resumed or run as asked."""


class JobConflictError(JobError):
    """The experiment already has a queued or running job."""


class JobNotFoundError(JobError):
    """No job with that id in the store."""


@dataclass(frozen=True)
class Job:
    """One row of the job table.

    Attributes:
        fraction: overall progress in [0, 1].
        eta_s: estimated seconds left, or None when unknown.
        pid: the worker's process id once started.
        attempts: how many times a worker started on this job (resumes included).
        created_at, updated_at, started_at, finished_at: Unix times in seconds.
    """

    id: int
    experiment: str
    kind: str
    target: str | None
    params: dict[str, Any]
    state: str
    stage: str
    fraction: float
    eta_s: float | None
    message: str
    pid: int | None
    is_cancel_requested: bool
    attempts: int
    error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_resumable(self) -> bool:
        return self.state in RESUMABLE_STATES


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        experiment=row["experiment"],
        kind=row["kind"],
        target=row["target"],
        params=json.loads(row["params"]),
        state=row["state"],
        stage=row["stage"],
        fraction=row["fraction"],
        eta_s=row["eta_s"],
        message=row["message"],
        pid=row["pid"],
        is_cancel_requested=bool(row["cancel_requested"]),
        attempts=row["attempts"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _params_json(params: dict[str, Any]) -> str:
    if not isinstance(params, dict):
        raise JobError(f"job parameters must be a dict, got {type(params).__name__}")
    try:
        return json.dumps(params, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise JobError(
            f"job parameters must be plain JSON values (str, finite numbers, bool, lists, dicts): {exc}"
        ) from exc


def _metric_values(values: dict[str, Any]) -> dict[str, float | None]:
    """Metrics as floats (numpy scalars and 0-d tensors included); NaN/inf become None."""
    clean: dict[str, float | None] = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise JobError(f"metric {key!r} is not a number ({value!r})") from exc
        clean[str(key)] = number if math.isfinite(number) else None
    return clean


def check_target(target: str) -> str:
    """Return ``target`` if it names a public function under ``train`` (or ``ui``), else JobError."""
    if not isinstance(target, str) or not _TARGET_RE.match(target):
        raise JobError(
            f"job target {target!r} is not allowed; it must look like 'train.module:function' "
            f"and name a public function under the {' or '.join(TARGET_PACKAGES)} package"
        )
    return target


def resolve_target(target: str) -> JobTarget:
    """Import the function a target names (see :func:`check_target`)."""
    module_name, function_name = check_target(target).split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise JobError(
            f"the training code {module_name} is not available in this installation ({exc}); "
            "update Timbre or pick another stage"
        ) from exc
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise JobError(f"{module_name} has no function {function_name!r}; update Timbre")
    return fn


def _process_info(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) from /proc, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3
    return fields[0], fields[19]


def process_start_token(pid: int) -> str | None:
    """An id of the process's start (survives pid reuse checks), or None where unknown."""
    info = _process_info(pid)
    return None if info is None else info[1]


def is_process_alive(pid: int, start_token: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, started at ``start_token``."""
    if Path("/proc/self/stat").exists():
        info = _process_info(pid)
        if info is None or info[0] in ("Z", "X", "x"):
            return False
        return start_token is None or info[1] == start_token
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def estimate_eta_s(elapsed_s: float, fraction: float, start_fraction: float = 0.0) -> float | None:
    """Seconds left if progress goes on at the rate seen so far; None until there is a rate.

    Args:
        elapsed_s: seconds since progress was at ``start_fraction``.
        fraction: progress now, in [0, 1].
        start_fraction: progress when timing started (non-zero for a resumed job).
    """
    if fraction >= 1.0:
        return 0.0
    gained = fraction - start_fraction
    if elapsed_s <= 0.0 or gained <= 1e-6:
        return None
    return elapsed_s * (1.0 - fraction) / gained


_INTERRUPTED_ERROR = (
    "the worker process stopped before the job ended (app restart, crash or kill); press Resume to continue"
)


def _is_gone(row: sqlite3.Row, now: float, queued_grace_s: float) -> bool:
    """True if an active job's worker is dead, or a queued job never got one in time."""
    if row["pid"] is not None:
        return not is_process_alive(row["pid"], row["pid_start"])
    return row["state"] == "running" or now - row["updated_at"] > queued_grace_s


class JobStore:
    """Jobs, their metrics and log lines in one SQLite file (WAL, one connection per thread)."""

    def __init__(
        self, db_path: str | os.PathLike[str], *, max_log_lines: int = DEFAULT_MAX_LOG_LINES
    ) -> None:
        if max_log_lines < 1:
            raise JobError("max_log_lines must be at least 1")
        self._db_path = Path(db_path)
        self._max_log_lines = max_log_lines
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schema_pid: int | None = None

    @property
    def db_path(self) -> Path:
        return self._db_path

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        self._db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(self._db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            with self._schema_lock:
                if self._schema_pid != os.getpid():
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                    self._schema_pid = os.getpid()
        except sqlite3.Error as exc:
            raise JobError(
                f"cannot open the job database {self._db_path} ({exc}); check the data folder"
            ) from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database lock at its start."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _row(self, conn: sqlite3.Connection, job_id: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job #{job_id} in {self._db_path}")
        return row

    @staticmethod
    def _active_row(
        conn: sqlite3.Connection, experiment: str, exclude_id: int | None = None
    ) -> sqlite3.Row | None:
        return conn.execute(
            "SELECT id, kind, state FROM jobs WHERE experiment = ? AND state IN ('queued', 'running') "
            "AND id IS NOT ? ORDER BY id LIMIT 1",
            (experiment, exclude_id),
        ).fetchone()

    @staticmethod
    def _conflict(experiment: str, row: sqlite3.Row) -> JobConflictError:
        return JobConflictError(
            f"experiment {experiment!r} already has job #{row['id']} ({row['kind']}, {row['state']}); "
            "wait for it to finish or cancel it first"
        )

    def create_job(
        self, experiment: str, kind: str, params: dict[str, Any], *, target: str | None = None
    ) -> int:
        """Add a queued job and return its id; JobConflictError if the experiment has an active one."""
        validate_model_name(experiment)
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise JobError(f"job kind {kind!r} must be lowercase letters, digits and '_' (at most 32)")
        if target is not None:
            check_target(target)
        params_text = _params_json(params)
        now = time.time()
        with self._write() as conn:
            active = self._active_row(conn, experiment)
            if active is not None:
                raise self._conflict(experiment, active)
            cursor = conn.execute(
                "INSERT INTO jobs (experiment, kind, target, params, state, message, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'queued', 'waiting for a worker', ?, ?)",
                (experiment, kind, target, params_text, now, now),
            )
            job_id = int(cursor.lastrowid)
        log.info("created job #%d (%s, %s)", job_id, experiment, kind)
        return job_id

    def set_target(self, job_id: int, target: str) -> None:
        """Set the function a queued job will run."""
        check_target(target)
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] != "queued":
                raise JobError(f"job #{job_id} is {row['state']}; only a queued job can be started")
            conn.execute(
                "UPDATE jobs SET target = ?, updated_at = ? WHERE id = ?", (target, time.time(), job_id)
            )

    def set_worker(self, job_id: int, pid: int, start_token: str | None) -> None:
        """Record the worker process of a queued job (the worker may have done it already)."""
        self._connect().execute(
            "UPDATE jobs SET pid = ?, pid_start = ?, updated_at = ? WHERE id = ? AND pid IS NULL "
            "AND state = 'queued'",
            (pid, start_token, time.time(), job_id),
        )

    def mark_running(self, job_id: int, pid: int, start_token: str | None) -> Job:
        """Move a queued job to running in worker ``pid``."""
        now = time.time()
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] != "queued":
                raise JobError(f"job #{job_id} is {row['state']}, not queued; a worker runs queued jobs only")
            conn.execute(
                "UPDATE jobs SET state = 'running', pid = ?, pid_start = ?, attempts = attempts + 1, "
                "started_at = ?, updated_at = ?, eta_s = NULL, error = NULL, message = 'started' "
                "WHERE id = ?",
                (pid, start_token, now, now, job_id),
            )
            return _job_from_row(self._row(conn, job_id))

    def update_progress(
        self,
        job_id: int,
        fraction: float,
        stage: str,
        *,
        eta_s: float | None = None,
        message: str | None = None,
    ) -> None:
        """Store the job's progress: ``fraction`` in [0, 1], the stage name, the ETA in seconds."""
        fraction = min(1.0, max(0.0, float(fraction)))
        eta = None if eta_s is None or not math.isfinite(eta_s) else max(0.0, float(eta_s))
        self._connect().execute(
            "UPDATE jobs SET fraction = ?, stage = ?, eta_s = ?, message = COALESCE(?, message), "
            "updated_at = ? WHERE id = ?",
            (fraction, str(stage)[:200], eta, message, time.time(), int(job_id)),
        )

    def add_metrics(self, job_id: int, step: int, values: dict[str, Any]) -> None:
        """Store numbers for one step; a second call for the same step merges into it."""
        clean = _metric_values(values)
        with self._write() as conn:
            row = conn.execute(
                "SELECT data FROM metrics WHERE job_id = ? AND step = ?", (int(job_id), int(step))
            ).fetchone()
            merged = {**json.loads(row["data"]), **clean} if row is not None else clean
            conn.execute(
                "INSERT OR REPLACE INTO metrics (job_id, step, data, created_at) VALUES (?, ?, ?, ?)",
                (int(job_id), int(step), json.dumps(merged), time.time()),
            )

    def add_log(self, job_id: int, line: str) -> None:
        """Append a log line, keeping only the last ``max_log_lines`` of the job."""
        text = str(line).rstrip("\n")[:MAX_LOG_LINE_CHARS]
        with self._write() as conn:
            conn.execute(
                "INSERT INTO logs (job_id, created_at, line) VALUES (?, ?, ?)",
                (int(job_id), time.time(), text),
            )
            conn.execute(
                "DELETE FROM logs WHERE job_id = ? AND id <= "
                "(SELECT id FROM logs WHERE job_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (int(job_id), int(job_id), self._max_log_lines),
            )

    def request_cancel(self, job_id: int) -> Job:
        """Ask a job to stop; a queued job without a worker is cancelled at once."""
        now = time.time()
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] == "queued" and row["pid"] is None:
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, message = 'cancelled', "
                    "finished_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, job_id),
                )
            elif row["state"] in ACTIVE_STATES:
                conn.execute(
                    "UPDATE jobs SET cancel_requested = 1, message = 'stopping...', updated_at = ? "
                    "WHERE id = ?",
                    (now, job_id),
                )
            return _job_from_row(self._row(conn, job_id))

    def is_cancel_requested(self, job_id: int) -> bool:
        row = (
            self._connect()
            .execute("SELECT cancel_requested FROM jobs WHERE id = ?", (int(job_id),))
            .fetchone()
        )
        if row is None:
            raise JobNotFoundError(f"no job #{job_id} in {self._db_path}")
        return bool(row["cancel_requested"])

    def finish(self, job_id: int, state: str, error: str | None = None) -> None:
        """End a job as done, failed, cancelled or interrupted."""
        if state not in FINAL_STATES:
            raise JobError(f"cannot finish a job as {state!r}; use one of {FINAL_STATES}")
        now = time.time()
        message = {
            "done": "finished",
            "failed": "failed",
            "cancelled": "cancelled",
            "interrupted": "interrupted",
        }
        with self._write() as conn:
            self._row(conn, job_id)
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, message = ?, finished_at = ?, updated_at = ?, "
                "eta_s = CASE WHEN ? = 'done' THEN 0 ELSE NULL END, "
                "fraction = CASE WHEN ? = 'done' THEN 1 ELSE fraction END WHERE id = ?",
                (state, error, message[state], now, now, state, state, job_id),
            )
        log.info("job #%d %s%s", job_id, state, f": {error}" if error else "")

    def get_job(self, job_id: int) -> Job:
        return _job_from_row(self._row(self._connect(), job_id))

    def list_jobs(self, experiment: str | None = None, *, limit: int = 100) -> list[Job]:
        """Newest first, optionally only one experiment's."""
        conn = self._connect()
        if experiment is None:
            rows = conn.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE experiment = ? ORDER BY id DESC LIMIT ?", (experiment, int(limit))
            ).fetchall()
        return [_job_from_row(row) for row in rows]

    def active_job(self, experiment: str) -> Job | None:
        """The queued or running job of an experiment, if any."""
        row = self._active_row(self._connect(), experiment)
        return None if row is None else self.get_job(row["id"])

    def latest_metrics(self, job_id: int, limit: int = 1000) -> list[tuple[int, dict[str, float | None]]]:
        """The last ``limit`` metric rows as (step, values), in increasing step order."""
        rows = (
            self._connect()
            .execute(
                "SELECT step, data FROM metrics WHERE job_id = ? ORDER BY step DESC LIMIT ?",
                (int(job_id), int(limit)),
            )
            .fetchall()
        )
        return [(row["step"], json.loads(row["data"])) for row in reversed(rows)]

    def tail_log(self, job_id: int, n: int = 20) -> list[str]:
        """The last ``n`` log lines of a job, oldest first."""
        rows = (
            self._connect()
            .execute("SELECT line FROM logs WHERE job_id = ? ORDER BY id DESC LIMIT ?", (int(job_id), int(n)))
            .fetchall()
        )
        return [row["line"] for row in reversed(rows)]

    def recover_interrupted(self, *, queued_grace_s: float = QUEUED_GRACE_S) -> list[int]:
        """Mark active jobs whose worker is gone as interrupted; return their ids.

        A running (or started) job is gone when its pid is dead, a zombie, or a different
        process; a queued job that never got a worker counts as gone after ``queued_grace_s``.
        Cheap when nothing is gone: only a read (the app calls this on every poll).
        """
        select = "SELECT id, state, pid, pid_start, updated_at FROM jobs WHERE state IN ('queued', 'running')"
        now = time.time()
        if not any(_is_gone(row, now, queued_grace_s) for row in self._connect().execute(select).fetchall()):
            return []
        gone: list[int] = []
        with self._write() as conn:
            for row in conn.execute(select).fetchall():
                if _is_gone(row, now, queued_grace_s):
                    gone.append(row["id"])
                    conn.execute(
                        "UPDATE jobs SET state = 'interrupted', eta_s = NULL, finished_at = ?, "
                        "updated_at = ?, message = 'interrupted', error = ? WHERE id = ?",
                        (now, now, _INTERRUPTED_ERROR, row["id"]),
                    )
        for job_id in gone:
            log.warning("job #%d lost its worker; marked interrupted", job_id)
        return gone

    def reset_for_resume(self, job_id: int) -> Job:
        """Queue an interrupted, failed or cancelled job again, with ``params["resume"] = True``."""
        now = time.time()
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] not in RESUMABLE_STATES:
                raise JobError(
                    f"job #{job_id} is {row['state']}; "
                    "only interrupted, failed or cancelled jobs can be resumed"
                )
            active = self._active_row(conn, row["experiment"], exclude_id=job_id)
            if active is not None:
                raise self._conflict(row["experiment"], active)
            params = json.loads(row["params"])
            params["resume"] = True
            conn.execute(
                "UPDATE jobs SET state = 'queued', params = ?, cancel_requested = 0, error = NULL, "
                "pid = NULL, pid_start = NULL, eta_s = NULL, finished_at = NULL, message = 'resuming', "
                "updated_at = ? WHERE id = ?",
                (_params_json(params), now, job_id),
            )
            conn.execute(
                "INSERT INTO logs (job_id, created_at, line) VALUES (?, ?, ?)",
                (job_id, now, "--- resumed ---"),
            )
            return _job_from_row(self._row(conn, job_id))
