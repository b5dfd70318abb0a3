"""The real studio (``python app.py`` on 127.0.0.1) driven through gradio_client, end to end.

One tiny training run (pm F0, random-weight HuBERT from tests/fakes.py, a few steps, diffusion
and LCM heads included) is started through the API, the app and its worker are killed mid-run,
the app is started again and the job resumed; the trained model then converts a clip with and
without diffusion, is downloaded as a zip and imported back. The tests run in file order and
share the app (module-scoped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.fakes import hubert_config, tiny_synth_config, write_hubert_checkpoint, write_voice_model
from tests.helpers import REPO_DIR, VOICES_DIR
from tests.test_app import train_args
from ui.jobs import JobStore, is_process_alive

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
APP_START_TIMEOUT_S = 120.0
TRAIN_TIMEOUT_S = 600.0
EXPERIMENT = "voice1"
DATASET_CLIPS = ("001", "002", "003", "004")
SOURCE_CLIP = VOICES_DIR / "us2" / "speech" / "003.flac"
# pitch, f0, index rate, filter radius, rms mix, protect, output rate, speaker, sampler, steps,
# guidance, refine start, refine strength, device
CONVERT_FIELDS = {
    "pitch": 0, "f0_method": "pm", "index_rate": 0.5, "filter_radius": 3, "rms_mix_rate": 0.25,
    "protect": 0.33, "output_rate": "model", "speaker_id": 0, "sampler": "off", "steps": 4,
    "guidance": 0.0, "refine_start": "shallow", "refine_strength": 0.5, "device": "cpu",
    "precision": "auto",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppProcess:
    """``python app.py`` in a subprocess, with its folders; start/stop it like a user would."""

    root: Path
    proc: subprocess.Popen | None = None
    port: int = 0
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def pretrained_dir(self) -> Path:
        return self.root / "pretrained"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def store(self) -> JobStore:
        return JobStore(self.data_dir / "jobs.sqlite3")

    def start(self) -> None:
        self.port = free_port()
        self.starts += 1
        log_path = self.root / f"app-{self.starts}.log"
        self.logs.append(log_path)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "2",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(self.root / "gradio_tmp"),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [
            sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(self.port),
            "--models-dir", str(self.models_dir), "--data-dir", str(self.data_dir),
            "--pretrained-dir", str(self.pretrained_dir),
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + APP_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the app exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        pytest.fail(f"the app did not answer within {APP_START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.proc = None

    def kill_workers(self) -> list[int]:
        """SIGKILL every live training worker (each leads its own process group)."""
        killed = []
        if not (self.data_dir / "jobs.sqlite3").exists():
            return killed
        for job in self.store().list_jobs():
            if job.pid is not None and job.is_active and is_process_alive(job.pid):
                os.killpg(job.pid, signal.SIGKILL)
                killed.append(job.pid)
        return killed

    def client(self) -> Client:
        return Client(self.url, verbose=False)

    def log_tail(self, n_chars: int = 4000) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())[-n_chars:]


def start_app(root: Path) -> AppProcess:
    """Folders with a random-weight HuBERT (v2) in the pretrained dir, and the app on a free port."""
    write_hubert_checkpoint(root / "pretrained" / "hubert_base.pt", hubert_config("v2"))
    (root / "models").mkdir(parents=True, exist_ok=True)
    app_process = AppProcess(root)
    app_process.start()
    return app_process


def stop_app(app_process: AppProcess) -> None:
    app_process.stop()
    app_process.kill_workers()


def wait_for_job(
    client: Client, job_id: int, states: tuple[str, ...], timeout_s: float, app_process: AppProcess
) -> str:
    """Poll /job_status until the job shows one of ``states``; return the status text."""
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")[0]
        if any(f"**{state}**" in status for state in states):
            return status
        time.sleep(0.5)
    pytest.fail(
        f"job {job_id} did not reach {states} in {timeout_s:.0f} s: {status}\n{app_process.log_tail()}"
    )


def convert(client: Client, model: str, audio: Path, **overrides: object) -> tuple:
    fields = {**CONVERT_FIELDS, **overrides}
    return client.predict(model, "(model's own index)", handle_file(str(audio)), [], *fields.values(),
                          api_name="/convert")  # fmt: skip


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    root = tmp_path_factory.mktemp("studio_e2e")
    write_voice_model(root / "models" / "plain" / "plain.pth", tiny_synth_config("v2", 40000), name="plain")
    app_process = start_app(root)
    try:
        yield app_process
    finally:
        stop_app(app_process)


@pytest.fixture(scope="module")
def trained(studio: AppProcess) -> dict[str, object]:
    """Start a tiny Run all, kill app and worker mid-run, restart the app, resume the job to the end."""
    started = time.monotonic()
    client = studio.client()
    dataset = [handle_file(str(VOICES_DIR / "us1" / "speech" / f"{n}.flac")) for n in DATASET_CLIPS]
    fields = {
        "use_diffusion": True, "use_distillation": True, "epochs": 1, "max_steps": 2, "diffusion_epochs": 2,
        "diffusion_max_steps": 4, "distill_epochs": 1, "distill_max_steps": 2,
    }  # fmt: skip
    picked, status, *_ = client.predict(*train_args(EXPERIMENT, dataset, **fields), api_name="/train_run_all")
    job_id = int(picked["value"])
    assert f"**#{job_id} {EXPERIMENT}** · run_all" in status

    # Mid-training: the API shows the stage, the percentage and an ETA.
    store = studio.store()
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while True:
        job = store.get_job(job_id)
        if job.state == "running" and job.stage.startswith(("extract", "fit")):
            break
        assert job.state in ("queued", "running"), f"{job.state}: {job.error}\n{studio.log_tail()}"
        assert time.monotonic() < deadline, f"job stuck at {job.state} {job.stage}"
        time.sleep(0.2)
    mid_status = client.predict(job_id, api_name="/job_status")[0]

    # The app stops and the worker dies with it (a crash or a reboot), then the app comes back.
    studio.stop()
    assert studio.kill_workers() == [job.pid]
    deadline = time.monotonic() + 20
    while is_process_alive(job.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    studio.start()
    client = studio.client()
    _, jobs = client.predict(api_name="/list_jobs")
    listed = {row[0]: row for row in jobs["data"]}
    after_restart = client.predict(job_id, api_name="/job_status")[0]
    resumed = client.predict(job_id, api_name="/resume_job")
    final = wait_for_job(client, job_id, ("done", "failed"), TRAIN_TIMEOUT_S, studio)
    _, plot, log_text, report = client.predict(job_id, api_name="/job_status")
    return {
        "job_id": job_id, "mid_status": mid_status, "listed": listed, "after_restart": after_restart,
        "resumed": resumed, "final": final, "plot": plot, "log": log_text, "report": report,
        "job": studio.store().get_job(job_id), "elapsed_s": time.monotonic() - started,
    }  # fmt: skip


def test_training_progress_survives_an_app_restart_and_the_job_resumes(
    studio: AppProcess, trained: dict[str, object]
) -> None:
    job_id = trained["job_id"]
    mid = trained["mid_status"]
    assert "**running**" in mid and "%" in mid and "ETA" in mid
    assert mid.split("\n\n")[1].startswith(("extract:", "fit:"))
    row = trained["listed"][job_id]
    assert row[1:4] == [EXPERIMENT, "run_all", "interrupted"]
    assert "**interrupted**" in trained["after_restart"] and "Press **Resume**" in trained["after_restart"]
    assert f"#{job_id} {EXPERIMENT}" in trained["resumed"]
    assert "**done**" in trained["final"] and "100.0%" in trained["final"], trained["log"]
    job = trained["job"]
    assert job.attempts == 2 and job.params["resume"] is True and job.state == "done"
    log_text = trained["log"]
    assert "--- resumed ---" in log_text and "attempt 2" in log_text
    for stage in ("prepare:", "extract:", "fit:", "index:", "diffusion:", "distill:", "export:"):
        assert stage in log_text, log_text
    metrics = {row[2] for row in trained["plot"]["data"]}
    assert {"loss_mel", "loss_kl"} <= metrics and all(
        m.rsplit("/", 1)[-1].startswith("loss") for m in metrics
    )
    assert "**4 clips**" in trained["report"]
    print(f"tiny run with kill, restart and resume: {trained['elapsed_s']:.1f} s")


def test_trained_model_is_listed(studio: AppProcess, trained: dict[str, object]) -> None:
    client = studio.client()
    rows = {row[0]: row for row in client.predict(api_name="/list_models")["data"]}
    assert rows[EXPERIMENT][1:4] == ["40 kHz", "v2", "yes"]
    assert rows[EXPERIMENT][6:] == ["yes", "yes"]  # index, diffusion heads
    info = client.predict(EXPERIMENT, api_name="/model_info")
    assert f"**{EXPERIMENT}**" in info and "diffusion head" in info and "no diffusion head" not in info


def test_convert_with_the_trained_model(studio: AppProcess, trained: dict[str, object]) -> None:
    client = studio.client()
    source_s = sf.info(SOURCE_CLIP).duration
    for sampler, steps in (("off", 4), ("lcm", 2), ("ddim", 3)):
        audio_path, files, plot, summary = convert(
            client, EXPERIMENT, SOURCE_CLIP, sampler=sampler, steps=steps
        )
        data, rate = sf.read(audio_path)
        assert rate == 40000 and abs(len(data) / rate - source_s) < 0.05, sampler
        assert data.std() > 0 and f"Converted 1 of 1 file(s) with **{EXPERIMENT}**" in summary
        assert len(files) == 1 and Path(files[0]).name == f"003_{EXPERIMENT}.wav"
        series = {row[2] for row in plot["data"]}
        assert series == {"input", "output"}


def test_sampler_without_a_diffusion_head_is_a_readable_error(studio: AppProcess) -> None:
    client = studio.client()
    with pytest.raises(AppError, match=r"this voice model has no diffusion head for the ddim sampler"):
        convert(client, "plain", SOURCE_CLIP, sampler="ddim")
    audio_path, *_ = convert(client, "plain", SOURCE_CLIP)  # sampler off: the same model converts
    assert sf.info(audio_path).samplerate == 40000


def test_download_the_zip_and_import_it_back(
    studio: AppProcess, trained: dict[str, object], tmp_path: Path
) -> None:
    client = studio.client()
    zip_path, status = client.predict(EXPERIMENT, api_name="/export_model")
    assert Path(zip_path).name == f"{EXPERIMENT}.zip" and f"**{EXPERIMENT}** packed as" in status
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(archive.namelist())
        metadata = json.loads(archive.read("timbre.json"))
    assert {"diffusion_lcm.pt", "diffusion_teacher.pt", "timbre.json", f"{EXPERIMENT}.pth"} <= set(names)
    assert any(n.startswith("added_IVF") and n.endswith(f"_{EXPERIMENT}_v2.index") for n in names), names
    assert (metadata["sample_rate"], metadata["version"]) == (40000, "v2")

    upload = tmp_path / f"{EXPERIMENT}.zip"
    shutil.copyfile(zip_path, upload)
    with pytest.raises(AppError, match=f"a model called '{EXPERIMENT}' exists already"):
        client.predict([handle_file(str(upload))], "", False, api_name="/import_model")
    table, picked, status = client.predict(
        [handle_file(str(upload))], "copy1", False, api_name="/import_model"
    )
    assert picked["value"] == "copy1" and "Imported **copy1**" in status
    rows = {row[0]: row for row in table["data"]}
    assert rows["copy1"][1:] == rows[EXPERIMENT][1:]
    copied = studio.models_dir / "copy1"
    assert (copied / "copy1.pth").is_file() and (copied / "diffusion_lcm.pt").is_file()
    audio_path, *_ = convert(client, "copy1", SOURCE_CLIP, sampler="lcm", steps=1)
    assert sf.info(audio_path).samplerate == 40000
