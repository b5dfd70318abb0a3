"""The studio: pure helpers (ui.forms, ui.views, ui.batch, ui.server) and the real app via gradio_client.

Only what needs no training is exercised here (listing, imports, error paths, jobs, assets);
training, conversion and zip round trips through the running app are in test_app_e2e.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, AuthenticationError

from infer.errors import AudioDecodeError, Cancelled, TimbreError
from tests.fakes import tiny_synth_config, write_voice_model
from train.pipeline import TrainSettings
from ui import batch, forms, server, views
from ui import studio as ui_studio
from ui.jobs import Job, JobStore

# Gradio's queue uses pandas options that pandas 3 deprecates; not this project's code.
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
EXPECTED_API_NAMES = {
    "/refresh_models", "/model_info", "/convert", "/cancel_convert", "/train_prepare", "/train_extract",
    "/train_fit", "/train_index", "/train_diffusion", "/train_distill", "/train_report",
    "/train_export", "/train_run_all",
    "/pretrained_status", "/list_jobs",
    "/job_status", "/cancel_job", "/resume_job", "/list_models", "/rename_model", "/delete_model",
    "/export_model", "/import_model", "/asset_status", "/download_asset", "/cancel_download", "/device_info",
    "/jobs_selftest", "/train_cm", "/train_acdd", "/cover", "/separate", "/cancel_cover", "/stem_cache",
    "/clear_stem_cache", "/train_live_student", "/export_onnx", "/import_url", "/cancel_import",
}  # fmt: skip
CONVERT_DEFAULTS = [0, "auto", 0.75, 3, 0.25, 0.33, "model", 0, "off", 4, 0.0, "shallow", 0.5, "cpu", "auto"]
# The Train tab's inputs after (experiment, rate, version, use_f0, size, uploads, folder), in order.
TRAIN_FIELDS = {
    "use_diffusion": False,
    "use_distillation": False,
    "slice_mode": "auto",
    "use_normalization": True,
    "threshold_db": -42,
    "segment_s": 3.7,
    "f0_method": "pm",
    "epochs": 2,
    "batch_size": 2,
    "save_every_epochs": 1,
    "max_steps": 4,
    "use_pretrained": True,
    "diffusion_epochs": 20,
    "diffusion_max_steps": 0,
    "distill_epochs": 10,
    "distill_max_steps": 0,
    "workers": 1,
    "use_report": False,
    "diffusion_parameterisation": "eps",
    "use_cm": False,
    "use_acdd": False,
    "cm_epochs": 10,
    "cm_max_steps": 0,
    "acdd_epochs": 10,
    "acdd_max_steps": 0,
    "content_encoder": "hubert_base",
    "device": "auto",
    "use_highpass": True,
    "min_length_ms": 1500,
    "min_interval_ms": 400,
    "hop_size_ms": 15,
    "max_sil_kept_ms": 500,
    "overlap_s": 0.3,
    "use_live_student": False,
    "live_student_steps": 3000,
    "live_student_pool": "",
}


def train_args(experiment: str, uploads: list, *, size: str = "tiny", **overrides: object) -> list:
    """Positional inputs of the /train_* endpoints (a tiny, few-step run unless overridden)."""
    unknown = set(overrides) - set(TRAIN_FIELDS)
    assert not unknown, f"unknown train fields {unknown}"
    fields = {**TRAIN_FIELDS, **overrides}
    return [experiment, "40000", "v2", True, size, uploads, "", *fields.values()]


# ---- pure helpers --------------------------------------------------------------------------


CONVERT_PAGE = {
    "pitch_shift_semitones": 2, "f0_method": "auto", "index_rate": 0.5, "filter_radius": 3.0,
    "rms_mix_rate": 0.25, "protect": 0.33, "output_sample_rate": "model", "speaker_id": 0.0, "sampler": "off",
    "steps": 4, "guidance_weight": 1.0, "refine_start": "noise", "refine_strength": 0.5,
}  # fmt: skip


def _page(**overrides: object) -> dict:
    return {**CONVERT_PAGE, **overrides}


def test_convert_params_mapping() -> None:
    params = forms.convert_params_from_page({**_page(), "model": "alice", "device": "cpu", "audio": None})
    assert (params.pitch_shift_semitones, params.f0_method, params.index_rate) == (2.0, None, 0.5)
    assert (params.filter_radius, params.rms_mix_rate, params.protect) == (3, 0.25, 0.33)
    assert isinstance(params.filter_radius, int) and isinstance(params.speaker_id, int)
    assert (params.output_sample_rate, params.speaker_id, params.refine) == (0, 0, None)
    params = forms.convert_params_from_page(
        _page(f0_method="rmvpe", output_sample_rate="48000", speaker_id=1, sampler="ddim", steps=20.0,
              guidance_weight=2.0, refine_start="noise", refine_strength=0.3)
    )  # fmt: skip
    assert (params.f0_method, params.output_sample_rate, params.speaker_id) == ("rmvpe", 48000, 1)
    assert (params.sampler, params.refine.steps, params.refine.guidance_weight) == ("ddim", 20, 2.0)
    assert (params.refine.start, params.refine.strength) == ("noise", 0.3)
    with pytest.raises(forms.StudioError, match="lcm sampler takes 1 to 4 steps"):
        forms.convert_params_from_page(_page(sampler="lcm", steps=8))
    with pytest.raises(forms.StudioError, match=r"RefineParams\.start must be one of"):
        forms.convert_params_from_page(_page(sampler="ddim", steps=8, refine_start="deep"))
    with pytest.raises(forms.StudioError, match="unknown F0 method"):
        forms.convert_params_from_page(_page(f0_method="yin"))
    with pytest.raises(forms.StudioError, match="invalid conversion settings: ConvertParams: unknown keys"):
        forms.convert_params_from_page(_page(diffusion_steps=4))


def test_convert_defaults_come_from_the_params() -> None:
    from infer.params import ConvertParams

    params = forms.convert_params_from_page(forms.convert_defaults())
    assert params == ConvertParams(refine=None, seed=forms.DEFAULT_SEED)  # the page fixes the noise
    assert forms.convert_params_from_page({**forms.convert_defaults(), "seed": -1}).seed is None
    assert forms.convert_params_from_page({**forms.convert_defaults(), "seed": ""}).seed is None
    assert forms.convert_defaults()["output_sample_rate"] in forms.output_rate_choices()


def test_form_binds_values_by_name_and_keeps_gradio_injection() -> None:
    from gradio.utils import get_positional_input_parameters

    seen = {}

    def handler(values, request: gr.Request, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008
        seen.update(values=values, request=request, progress=progress)
        return "ok"

    form = forms.Form({"model": object(), "pitch_shift_semitones": object()})
    bound = form.handler(handler)
    assert list(inspect.signature(bound).parameters) == [
        "model",
        "pitch_shift_semitones",
        "request",
        "progress",
    ]
    # Gradio fills request and progress itself; the components fill the form's names, in order.
    assert [p.name for p in get_positional_input_parameters(bound)] == list(form.names)
    assert bound("alice", 3, "REQ", "PROG") == "ok"
    assert seen == {
        "values": {"model": "alice", "pitch_shift_semitones": 3},
        "request": "REQ",
        "progress": "PROG",
    }
    with pytest.raises(TypeError, match="2 fields, got 1"):
        form.values(["alice"])
    assert form.subset("pitch_shift_semitones").names == ("pitch_shift_semitones",)


def _form(**overrides: object) -> dict:
    values = {
        "experiment": "ann", "sample_rate": "40000", "version": "v2", "use_f0": True, "size": "tiny",
        "uploads": None, "folder": "", "slice_mode": "auto", "use_normalization": True, "threshold_db": -42,
        "segment_s": 3.7, "f0_method": "auto", "epochs": 3.0, "batch_size": 2, "save_every_epochs": 1,
        "max_steps": 8, "use_pretrained": True, "use_diffusion": True, "use_distillation": True,
        "diffusion_epochs": 4, "diffusion_max_steps": 6, "distill_epochs": 2, "distill_max_steps": 3,
        "workers": 1,
    }  # fmt: skip
    return {**values, **overrides}


def _settings(tmp_path: Path, **overrides: object) -> TrainSettings:
    return forms.train_settings_from_page(
        _form(**overrides), work_dir=tmp_path / "exp" / "ann", models_dir=tmp_path / "models",
        pretrained_dir=tmp_path / "pre",
    )  # fmt: skip


def test_train_params_become_train_settings(tmp_path: Path) -> None:
    dataset = [tmp_path / "uploads" / "a.wav"]
    params = forms.train_job_params("run_all", forms.with_dataset(_settings(tmp_path), dataset))
    assert (params["stage"], params["name"]) == ("run_all", "ann")
    # What train.pipeline.run_stage does with the job params:
    settings = TrainSettings.from_dict({k: v for k, v in params.items() if k != "stage"})
    assert settings.name == "ann" and settings.work_dir == tmp_path / "exp" / "ann"
    assert settings.dataset == (str(dataset[0]),) and settings.pretrained_dir == tmp_path / "pre"
    assert (settings.size, settings.max_steps, settings.f0_method, settings.workers) == ("tiny", 8, None, 1)
    assert settings.use_pretrained is False  # a tiny model has no pretrained base
    assert (settings.use_diffusion, settings.diffusion_max_steps, settings.distill_max_steps) == (True, 6, 3)
    assert settings.slice.segment_s == 3.7 and settings.slice.mode == "auto"
    assert (settings.sample_rate, settings.epochs) == (40000, 3)
    full = forms.train_job_params("fit", _settings(tmp_path, size="full", f0_method="rmvpe"))
    assert (full["use_pretrained"], full["f0_method"], full["dataset"]) == (True, "rmvpe", [])
    with pytest.raises(forms.StudioError, match="unknown training stage"):
        forms.train_job_params("polish", _settings(tmp_path))


def test_train_defaults_are_the_settings_defaults(tmp_path: Path) -> None:
    defaults = forms.train_defaults()
    assert defaults["batch_size"] == 4 and defaults["epochs"] == 20 and defaults["f0_method"] == "auto"
    page = {**defaults, "experiment": "ann", "uploads": None, "folder": ""}
    settings = forms.train_settings_from_page(
        page, work_dir=tmp_path, models_dir=tmp_path, pretrained_dir=tmp_path
    )
    plain = TrainSettings(name="ann", work_dir=tmp_path, models_dir=tmp_path, pretrained_dir=tmp_path)
    assert settings == plain


def test_train_form_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(TimbreError, match="distillation needs the diffusion head"):
        _settings(tmp_path, use_diffusion=False)
    with pytest.raises(TimbreError, match="model size"):
        _settings(tmp_path, size="huge")
    with pytest.raises(TimbreError, match="step limits"):
        _settings(tmp_path, max_steps=-1)
    with pytest.raises(TimbreError, match="processes must be 1 to 16"):
        _settings(tmp_path, workers=0)
    with pytest.raises(TimbreError, match="slashes"):
        _settings(tmp_path, experiment="../x")


def _job(**overrides: object) -> Job:
    values = {
        "id": 7, "experiment": "ann", "kind": "run_all", "target": "train.pipeline:run_stage", "params": {},
        "state": "running", "stage": "fit: epoch 1/2, step 3/8", "fraction": 0.45, "eta_s": 75.0,
        "message": "", "pid": 1, "is_cancel_requested": False, "attempts": 1, "error": None,
        "created_at": 100.0, "updated_at": 130.0, "started_at": 101.0, "finished_at": None,
    }  # fmt: skip
    return Job(**{**values, **overrides})


def test_job_status_and_table() -> None:
    text = views.job_status_markdown(_job())
    assert "**#7 ann** · run_all · **running**" in text
    assert "fit: epoch 1/2, step 3/8 · 45.0%" in text
    assert "`█████████░░░░░░░░░░░ 45%` · ETA 1 min 15 s" in text
    text = views.job_status_markdown(_job(state="interrupted", error="the worker process stopped"))
    assert "**interrupted**" in text and "the worker process stopped" in text and "Press **Resume**" in text
    assert "Resume" not in views.job_status_markdown(_job(state="done", fraction=1.0))
    rows = views.jobs_table([_job(), _job(id=6, state="done", fraction=1.0)], now=190.0)
    assert rows[0] == [7, "ann", "run_all", "running", "45%", "1 min 15 s", "1 min 00 s ago"]
    assert rows[1][3:6] == ["done", "100%", ""]
    assert views.job_choices([_job()]) == [("#7 ann · run_all · running", 7)]
    assert views.progress_bar(0.0, cells=4) == "░░░░ 0%" and views.progress_bar(1.0, cells=4) == "████ 100%"


def test_pretrained_status_says_what_is_missing(tmp_path: Path) -> None:
    from infer.content.whisper import has_whisper_package

    text = views.pretrained_status_markdown(tmp_path, "40000", "v2", True, "full", True, "rmvpe")
    assert (
        "`hubert_base.pt`: **missing** · download with `python -m infer assets download hubert_base.pt`"
        in (text)
    )
    assert "feature extraction cannot run without it" in text
    assert "`rmvpe.pt`: **missing**" in text and "`pretrained_v2/f0G40k.pth`: **missing**" in text
    assert ("whisper-tiny-en" in text) == has_whisper_package()
    (tmp_path / "hubert_base.pt").write_bytes(b"x" * 1000)
    text = views.pretrained_status_markdown(tmp_path, "40000", "v2", True, "tiny", True, "auto")
    assert "`hubert_base.pt`: **bad_size** (1.0 kB on disk, 189.5 MB expected)" in text
    assert "F0 'auto' uses fcpe" in text and "tiny model: trains from scratch" in text
    assert "pretrained_v2" not in text and "whisper" not in text


def test_check_audio_inputs(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "empty.wav").write_bytes(b"")
    assert forms.check_audio_inputs([None, str(tmp_path / "a.wav")]) == [tmp_path / "a.wav"]
    with pytest.raises(AudioDecodeError, match="no audio given"):
        forms.check_audio_inputs([None])
    with pytest.raises(AudioDecodeError, match=r"empty\.wav is empty \(0 bytes\)"):
        forms.check_audio_inputs([str(tmp_path / "a.wav"), str(tmp_path / "empty.wav")])


def test_f0_plot_frame_drops_unvoiced_and_thins() -> None:
    src = np.array([0.0, 100.0, 110.0, 0.0, 120.0])
    frame = views.f0_plot_frame(src, src * 2)
    assert list(frame.columns) == ["time_s", "f0_hz", "series"]
    inputs = frame[frame.series == "input"]
    assert inputs.time_s.tolist() == [0.01, 0.02, 0.04] and inputs.f0_hz.tolist() == [100, 110, 120]
    assert frame[frame.series == "output"].f0_hz.tolist() == [200, 220, 240]
    long = views.f0_plot_frame(np.full(10_000, 150.0), None, max_points=1000)
    assert len(long) == 1000 and long.time_s.iloc[1] == pytest.approx(0.1)
    empty = views.f0_plot_frame(None, None)
    assert len(empty) == 0
    # the page's empty plot must already colour by a nominal series (a numeric scale draws no lines)
    plot = gr.LinePlot(empty, x="time_s", y="f0_hz", color="series")
    assert plot.postprocess(empty).datatypes == plot.postprocess(frame).datatypes == {
        "time_s": "quantitative", "f0_hz": "quantitative", "series": "nominal"
    }  # fmt: skip


def test_metrics_frame_and_formatting() -> None:
    rows = [(step, {"loss_mel": 10.0 - step, "loss_kl": None, "lr": 1e-4}) for step in range(10)]
    frame = views.metrics_frame(rows, max_points=4)
    assert frame.step.tolist() == [0, 3, 6, 9] and set(frame.metric) == {"loss_mel"}
    assert frame.value.tolist() == [10.0, 7.0, 4.0, 1.0]
    assert views.format_eta(None) == "estimating..."
    assert views.format_eta(42.4) == "42 s"
    assert views.format_eta(125) == "2 min 05 s"
    assert views.format_eta(7260) == "2 h 01 min"
    assert views.format_bytes(999) == "999 B"
    assert views.format_bytes(12_345_678) == "12.3 MB"


def test_auth_parsing(tmp_path: Path) -> None:
    assert server.parse_auth("ann:se:cret") == ("ann", "se:cret")
    with pytest.raises(ValueError, match="user:password"):
        server.parse_auth("ann")
    with pytest.raises(ValueError, match="user:password"):
        server.parse_auth(":pw")
    auth_file = tmp_path / "users.txt"
    auth_file.write_text("# studio users\nann:one\n\nbob:two\n")
    assert server.read_auth_file(auth_file) == [("ann", "one"), ("bob", "two")]
    auth_file.write_text("ann:one\nbroken\n")
    with pytest.raises(ValueError, match="line 2"):
        server.read_auth_file(auth_file)


def test_loopback_and_exposure_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert server.is_loopback("127.0.0.1") and server.is_loopback("localhost") and server.is_loopback("::1")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("192.168.1.4")
    with caplog.at_level(logging.WARNING):
        assert server.warn_if_exposed("0.0.0.0", None) is True
        assert server.warn_if_exposed("0.0.0.0", [("a", "b")]) is False
        assert server.warn_if_exposed("127.0.0.1", None) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without --auth" in warnings[0].getMessage()


def test_command_line_arguments(tmp_path: Path) -> None:
    args = server.build_parser().parse_args([])
    assert (args.host, args.port, args.auth, args.auth_file, args.models_dir) == (
        "127.0.0.1",
        7860,
        None,
        None,
        None,
    )
    args = server.build_parser().parse_args(
        ["--host", "0.0.0.0", "--port", "9000", "--auth", "a:b", "--models-dir", "m"]
    )
    assert (args.host, args.port, args.auth, args.models_dir) == ("0.0.0.0", 9000, "a:b", "m")
    with pytest.raises(SystemExit):
        server.build_parser().parse_args(["--auth", "a:b", "--auth-file", str(tmp_path / "f")])


def test_stage_dataset_uploads(tmp_path: Path) -> None:
    clip = tmp_path / "clip one.wav"
    clip.write_bytes(b"RIFF0000")
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("voice/a.wav", b"RIFFa")
        zf.writestr("voice/notes.txt", b"skip me")
    staged = forms.stage_dataset_uploads([str(clip), str(archive)], tmp_path / "uploads")
    assert staged[0].name == "000_clip_one.wav" and staged[0].read_bytes() == b"RIFF0000"
    assert staged[1].is_dir() and (staged[1] / "voice" / "a.wav").read_bytes() == b"RIFFa"
    assert not (staged[1] / "voice" / "notes.txt").exists()

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(forms.StudioError, match=r"empty\.wav is empty"):
        forms.stage_dataset_uploads([str(empty)], tmp_path / "uploads2")
    assert not (tmp_path / "uploads2").exists()


class _FakeConverter:
    """Stands in for infer.pipeline.Converter so the page's batch adapter is checked without models."""

    def convert(
        self, audio: np.ndarray, params: object, *, progress: Callable, should_stop: Callable | None
    ) -> SimpleNamespace:
        for fraction in (0.0, 0.5, 1.0):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped on request")
            progress(fraction, "synthesis")
        f0 = np.full(len(audio) // 160, 200.0, dtype=np.float32)
        return SimpleNamespace(
            audio=audio * 0.5,
            sample_rate=16000,
            f0_source_hz=f0,
            f0_target_hz=f0 * 2,
            timings_s={"total": 0.1},
            warnings=[],
            precision="fp32",
        )


def test_convert_files_batch_adapter(tmp_path: Path) -> None:
    import soundfile as sf

    from infer.params import ConvertParams

    good = tmp_path / "good take.wav"
    sf.write(good, (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(bytes(range(256)) * 4)
    seen: list[tuple[float, str]] = []
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outcome = batch.convert_to_folder(
        _FakeConverter(), "alice", [good, broken], ConvertParams(), out_dir,
        progress=lambda f, s: seen.append((f, s)),
    )  # fmt: skip
    assert [p.name for p in outcome.outputs] == ["good_take_alice.wav"]
    data, rate = sf.read(outcome.outputs[0])
    assert rate == 16000 and len(data) == 16000
    assert len(outcome.failures) == 1 and outcome.failures[0].startswith("broken.wav: cannot decode")
    with zipfile.ZipFile(outcome.archive) as zf:
        assert zf.namelist() == ["good_take_alice.wav"]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert ("good take.wav (1/2): synthesis", 0.25) in [(s, f) for f, s in seen]
    assert "Converted 1 of 2 file(s) with **alice** (fp32)" in outcome.summary
    assert "broken.wav" in outcome.summary
    assert len(outcome.f0_source_hz) == 100
    names = batch.output_paths([good, tmp_path / "sub" / "good take.flac"], "alice", out_dir)
    assert [p.name for p in names] == ["good_take_alice.wav", "good_take_alice_2.wav"]

    with pytest.raises(Cancelled):
        batch.convert_to_folder(
            _FakeConverter(), "alice", [good], ConvertParams(), out_dir, should_stop=lambda: True
        )
    with pytest.raises(AudioDecodeError, match=r"cannot decode broken\.wav"):
        batch.convert_to_folder(_FakeConverter(), "alice", [broken], ConvertParams(), out_dir)


def test_restarted_app_marks_lost_jobs_interrupted(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "data" / ui_studio.JOBS_DB_NAME)
    job_id = store.create_job("gina", "fit", {})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.mark_running(job_id, gone.pid, None)
    server.build_app(tmp_path / "models", tmp_path / "data", tmp_path / "pretrained")
    job = store.get_job(job_id)
    assert job.state == "interrupted" and job.is_resumable


def test_import_and_build_load_no_model_code(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; import app; from ui import server; "
        f"root = Path({str(tmp_path)!r}); server.build_app(root / 'm', root / 'd', root / 'p'); "
        "print(sorted(m for m in ('torch', 'infer.pipeline', 'infer.models') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---- the running app -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    root = tmp_path_factory.mktemp("studio")
    models = root / "models"
    (models / "alice").mkdir(parents=True)
    (models / "alice" / "alice.pth").write_bytes(b"\x00" * 10)
    (models / "alice" / "timbre.json").write_text(
        json.dumps({"sample_rate": 40000, "version": "v2", "use_f0": True, "epochs": 12})
    )
    (models / "bob.pth").write_bytes(b"\x00" * 20)
    demo = server.build_app(models, root / "data", root / "pretrained")
    port = _free_port()
    server.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), root
    finally:
        demo.close()


def _convert(client: Client, model: str, audio: Path | None) -> tuple:
    single = handle_file(str(audio)) if audio is not None else None
    return client.predict(model, batch.INDEX_AUTO, single, [], *CONVERT_DEFAULTS, api_name="/convert")


def _train(client: Client, api_name: str, experiment: str, uploads: list[Path], **fields: object) -> tuple:
    files = [handle_file(str(p)) for p in uploads]
    return client.predict(*train_args(experiment, files, **fields), api_name=api_name)


def _wait_job_state(client: Client, job_id: int, states: set[str], timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")[0]
        for state in states:
            if f"**{state}**" in status:
                return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {states}: {status}")


def test_api_names_exposed(studio: tuple[Client, Path]) -> None:
    client, _ = studio
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == EXPECTED_API_NAMES


def test_convert_api_takes_the_form_fields_in_order(studio: tuple[Client, Path]) -> None:
    client, _ = studio
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    convert = [p["parameter_name"] for p in endpoints["/convert"]["parameters"]]
    assert convert == ["model", "index", "audio", "batch", *CONVERT_PAGE, "device", "precision", "seed"]
    train = [p["parameter_name"] for p in endpoints["/train_fit"]["parameters"]]
    assert train[:7] == ["experiment", "sample_rate", "version", "use_f0", "size", "uploads", "folder"]
    assert train[7:] == list(TRAIN_FIELDS)


def test_convert_api_by_keyword(studio: tuple[Client, Path]) -> None:
    """The README's keyword call: the form's field names are the API's parameter names."""
    client, _ = studio
    with pytest.raises(AppError, match="no audio given"):
        client.predict(model="alice", index=batch.INDEX_AUTO, audio=None, batch=[], f0_method="pm",
                       sampler="off", device="cpu", api_name="/convert")  # fmt: skip


def test_page_config_carries_the_css(studio: tuple[Client, Path]) -> None:
    client, _ = studio
    with urllib.request.urlopen(client.src.rstrip("/") + "/config", timeout=10) as response:
        config = json.load(response)
    assert ".timbre-log" in config["css"] and "max-width: 1280px" in config["css"]
    assert config["title"] == "Timbre studio"


def test_auth_is_required(tmp_path: Path) -> None:
    demo = server.build_app(tmp_path / "models", tmp_path / "data", tmp_path / "pretrained")
    port = _free_port()
    server.launch(
        demo, host="127.0.0.1", port=port, auth=[("ann", "pw")], prevent_thread_lock=True, quiet=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False)
        client = Client(url, auth=("ann", "pw"), verbose=False)
        assert client.predict(api_name="/list_models")["data"] == []
    finally:
        demo.close()


def test_list_models_and_info(studio: tuple[Client, Path]) -> None:
    client, _ = studio
    table = client.predict(api_name="/list_models")
    assert table["headers"] == views.MODEL_TABLE_HEADERS
    rows = {row[0]: row for row in table["data"]}
    assert rows["alice"][1:5] == ["40 kHz", "v2", "yes", "12"]
    assert rows["bob"][1] == "?" and rows["bob"][5] == "20 B"
    info = client.predict("alice", api_name="/model_info")
    assert "**alice**" in info and "40 kHz" in info and "12 epochs" in info


def test_convert_error_paths_keep_the_server_serving(studio: tuple[Client, Path]) -> None:
    client, root = studio
    empty = root / "empty.wav"
    empty.write_bytes(b"")
    broken = root / "broken.wav"
    broken.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(AppError, match=r"empty\.wav is empty \(0 bytes\)"):
        _convert(client, "alice", empty)
    with pytest.raises(AppError, match=r"cannot decode broken\.wav"):
        _convert(client, "alice", broken)
    with pytest.raises(AppError, match="no audio given"):
        _convert(client, "alice", None)
    with pytest.raises(AppError, match="no model called 'zed'"):
        _convert(client, "zed", broken)
    assert client.predict(api_name="/cancel_convert") == "No conversion is running."
    assert {row[0] for row in client.predict(api_name="/list_models")["data"]} == {"alice", "bob"}


def test_import_rename_delete(studio: tuple[Client, Path]) -> None:
    client, root = studio
    pth = write_voice_model(root / "upload" / "carol.pth", tiny_synth_config("v2", 32000), name="carol")
    table, picked, status = client.predict([handle_file(str(pth))], "", False, api_name="/import_model")
    assert "Imported **carol**" in status and "32 kHz" in status and picked["value"] == "carol"
    row = next(r for r in table["data"] if r[0] == "carol")
    assert row[1:4] == ["32 kHz", "v2", "yes"] and row[6:] == ["no", "no"]
    assert (root / "models" / "carol" / "carol.pth").read_bytes() == pth.read_bytes()
    with pytest.raises(AppError, match="carol"):
        client.predict([handle_file(str(pth))], "", False, api_name="/import_model")  # exists already
    _, picked, status = client.predict([handle_file(str(pth))], "", True, api_name="/import_model")
    assert "Imported **carol**" in status

    # The library's checks apply: an empty file, a file that is not a voice model, two models.
    empty = root / "upload" / "void.pth"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match=r"void\.pth is empty"):
        client.predict([handle_file(str(empty))], "", False, api_name="/import_model")
    junk = root / "upload" / "junk.pth"
    junk.write_bytes(b"\x01" * 300)
    with pytest.raises(AppError, match=r"junk\.pth"):
        client.predict([handle_file(str(junk))], "", False, api_name="/import_model")
    with pytest.raises(AppError, match=r"one \.pth with at most one \.index"):
        client.predict([handle_file(str(pth)), handle_file(str(junk))], "", False, api_name="/import_model")
    assert not (root / "models" / "junk").exists()
    evil = root / "upload" / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../evil.pth", pth.read_bytes())
    with pytest.raises(AppError, match=r"climbs out of the target folder"):
        client.predict([handle_file(str(evil))], "", False, api_name="/import_model")
    assert not (root / "evil.pth").exists() and not (root / "models" / "evil").exists()

    _, picked, status = client.predict("carol", "caroline", api_name="/rename_model")
    assert picked["value"] == "caroline" and "Renamed **carol** to **caroline**" in status
    with pytest.raises(AppError, match="type the model's name"):
        client.predict("caroline", "carol", api_name="/delete_model")
    with pytest.raises(AppError, match="slashes"):
        client.predict("caroline", "../x", api_name="/rename_model")
    table, _, status = client.predict("caroline", "caroline", api_name="/delete_model")
    assert "Deleted" in status and "caroline" not in {r[0] for r in table["data"]}
    assert not (root / "models" / "caroline").exists()


def test_export_onnx_gives_a_graph_that_runs_like_the_model(studio: tuple[Client, Path]) -> None:
    from infer.models import build_synthesizer, load_voice_model
    from infer.onnx_synth import INPUT_NAMES_F0, OnnxSynthesizer, example_inputs
    from tests.test_onnx import PARITY_SNR_DB, snr_db, torch_reference

    client, root = studio
    pth = write_voice_model(
        root / "models" / "dora" / "dora.pth", tiny_synth_config("v2", 40000), name="dora"
    )
    try:
        onnx_path, status = client.predict("dora", api_name="/export_onnx")
        assert Path(onnx_path).name == "dora.onnx" and "**dora** exported as `dora.onnx`" in status
        written = list((root / "data" / "exports").rglob("dora.onnx"))
        assert len(written) == 1 and written[0].read_bytes() == Path(onnx_path).read_bytes()
        session = OnnxSynthesizer.load(Path(onnx_path), threads=1)
        assert session.input_names == INPUT_NAMES_F0
        synth = build_synthesizer(load_voice_model(pth))
        inputs = example_inputs(synth, 50, seed=3)
        audio = session.run({k: v.numpy() for k, v in inputs.items()})
        reference = torch_reference(synth, inputs)
        assert audio.shape == reference.shape == (1, 1, 50 * synth.config.hop_length)
        assert snr_db(reference, audio) >= PARITY_SNR_DB
        with pytest.raises(AppError, match="choose the model to export"):
            client.predict(None, api_name="/export_onnx")
        with pytest.raises(AppError, match=r"bob\.pth"):  # 20 zero bytes: not a voice model
            client.predict("bob", api_name="/export_onnx")
        with pytest.raises(AppError, match="no model called 'zed'"):
            client.predict("zed", api_name="/export_onnx")
    finally:
        client.predict("dora", "dora", api_name="/delete_model")


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_import_from_url(studio: tuple[Client, Path], file_server: tuple[Path, str]) -> None:
    client, root = studio
    served, base = file_server
    pth = write_voice_model(served / "erin.pth", tiny_synth_config("v2", 48000), name="erin")
    with zipfile.ZipFile(served / "erin.zip", "w") as zf:
        zf.write(pth, "erin/erin.pth")  # Applio's layout: one folder
    (served / "page.html").write_text("<html>not a model</html>")
    try:
        table, picked, status = client.predict(f"{base}/erin.zip", "", False, api_name="/import_url")
        assert "Imported **erin** from the URL" in status and "48 kHz" in status
        assert picked["value"] == "erin" and "erin" in {r[0] for r in table["data"]}
        assert (root / "models" / "erin" / "erin.pth").read_bytes() == pth.read_bytes()
        with pytest.raises(AppError, match="erin"):  # exists already
            client.predict(f"{base}/erin.zip", "", False, api_name="/import_url")
        # a bare .pth, named by the page's name box; a finished download is not kept
        _, picked, status = client.predict(f"{base}/erin.pth", "fay", False, api_name="/import_url")
        assert picked["value"] == "fay" and "Imported **fay**" in status
        assert (root / "models" / "fay" / "fay.pth").read_bytes() == pth.read_bytes()
        assert not list((root / "data" / "downloads").iterdir())

        closed = _free_port()  # nothing listens there: as offline
        refusals = {
            "erin.zip": "enter the http:// or https:// address",
            f"{base}/missing.zip": "answered HTTP 404",
            f"{base}/page.html": "neither a model zip nor a .pth",
            f"http://127.0.0.1:{closed}/erin.zip": "could not reach 127.0.0.1",
        }
        for url, reason in refusals.items():
            with pytest.raises(AppError, match=re.escape(reason)) as caught:
                client.predict(url, "", False, api_name="/import_url")
            assert "\n" not in str(caught.value)
        assert client.predict(api_name="/cancel_import") == "No import is running."
        assert {r[0] for r in client.predict(api_name="/list_models")["data"]} == {
            "alice",
            "bob",
            "erin",
            "fay",
        }
    finally:
        for name in ("erin", "fay"):
            if (root / "models" / name).exists():
                client.predict(name, name, api_name="/delete_model")


def test_import_from_url_over_the_size_limit_is_one_line(
    tmp_path: Path, file_server: tuple[Path, str]
) -> None:
    served, base = file_server
    write_voice_model(served / "gus.pth", tiny_synth_config("v2", 40000), name="gus")
    paths = ui_studio.StudioPaths(tmp_path / "models", tmp_path / "data", tmp_path / "pretrained")
    studio = ui_studio.Studio(paths)
    studio.max_import_bytes = 1000
    seen: list[tuple[float, str]] = []
    with pytest.raises(gr.Error) as caught:
        studio.import_url(f"{base}/gus.pth", "", False, None, lambda f, desc="": seen.append((f, desc)))
    message = caught.value.message
    assert "over the size limit" in message and "\n" not in message
    assert not (tmp_path / "models" / "gus").exists()
    studio.max_import_bytes = 10 * 2**20
    _, picked, status = studio.import_url(
        f"{base}/gus.pth", "", False, None, lambda f, desc="": seen.append((f, desc))
    )
    assert (
        "Imported **gus**" in status
        and picked["value"] == "gus"
        and (tmp_path / "models" / "gus" / "gus.pth").is_file()
    )
    assert seen[-1] == (1.0, "imported gus") and all(0.0 <= f <= 1.0 for f, _ in seen)


def test_assets_and_pretrained_status(studio: tuple[Client, Path]) -> None:
    client, _ = studio
    table = client.predict(api_name="/asset_status")
    rows = {row[0]: row for row in table["data"]}
    assert rows["hubert_base.pt"][1] == "missing"
    assert rows["hubert_base.pt"][4] == "python -m infer assets download hubert_base.pt"
    status = client.predict("40000", "v2", True, "full", True, "auto", api_name="/pretrained_status")
    assert "pretrained_v2/f0G40k.pth" in status and "pretrained_v2/f0D40k.pth" in status
    assert (
        "`hubert_base.pt`: **missing** · download with `python -m infer assets download hubert_base.pt`"
        in (status)
    )
    status = client.predict("40000", "v2", True, "tiny", True, "pm", api_name="/pretrained_status")
    assert "pretrained_v2" not in status and "no pretrained base needed" in status
    with pytest.raises(AppError, match="not in the list of choices"):
        client.predict("no_such_file.pt", api_name="/download_asset")
    assert client.predict(api_name="/cancel_download") == "No download is running."
    assert "CPU cores" in client.predict(api_name="/device_info")


def test_train_upload_with_traversal_zip_is_refused(studio: tuple[Client, Path]) -> None:
    client, root = studio
    evil = root / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.wav", b"RIFF")
    with pytest.raises(AppError, match=r"climbs out of the target folder"):
        _train(client, "/train_prepare", "erin", [evil])
    with pytest.raises(AppError, match="no dataset"):
        _train(client, "/train_prepare", "erin", [])
    with pytest.raises(AppError, match="starts with a dot"):
        _train(client, "/train_fit", ".erin", [])
    assert not list(root.rglob("escaped.wav"))
    _, jobs = client.predict(api_name="/list_jobs")
    assert "erin" not in {row[1] for row in jobs["data"]}


def test_train_button_runs_a_worker_job(studio: tuple[Client, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    client, root = studio
    # Stand-in for the training code (not part of this module): a target that rejects the params.
    monkeypatch.setitem(ui_studio.TRAIN_TARGETS, "fit", "ui.jobs:selftest_job")
    picked, status, *_ = _train(client, "/train_fit", "frank", [])
    job_id = int(picked["value"])
    assert f"#{job_id} frank" in status
    status = _wait_job_state(client, job_id, {"failed", "done"})
    assert "**failed**" in status and "unknown selftest parameter" in status
    params = JobStore(root / "data" / ui_studio.JOBS_DB_NAME).get_job(job_id).params
    assert params["stage"] == "fit" and params["epochs"] == 2 and params["slice"]["mode"] == "auto"
    assert (params["size"], params["max_steps"], params["f0_method"], params["workers"]) == (
        "tiny",
        4,
        "pm",
        1,
    )
    assert params["work_dir"] == str(root / "data" / "experiments" / "frank")
    with pytest.raises(AppError, match="distillation needs the diffusion head"):
        _train(client, "/train_distill", "frank", [], use_distillation=True)


def test_selftest_job_progress_and_cancel(studio: tuple[Client, Path]) -> None:
    client, _ = studio
    job_id, status = client.predict(3, api_name="/jobs_selftest")
    job_id = int(job_id)
    status = _wait_job_state(client, job_id, {"done", "failed"})
    assert "**done**" in status and "100.0%" in status
    _, plot, log_text, _ = client.predict(job_id, api_name="/job_status")
    losses = [row for row in plot["data"] if row[2] == "loss"]
    assert [row[0] for row in losses] == [0, 1, 2] and losses[-1][1] == pytest.approx(1 / 3)
    assert "selftest finished" in log_text

    job_id, _ = client.predict(300, api_name="/jobs_selftest")
    job_id = int(job_id)
    _wait_job_state(client, job_id, {"running"})
    with pytest.raises(AppError, match="already has job"):
        client.predict(3, api_name="/jobs_selftest")
    client.predict(job_id, api_name="/cancel_job")
    status = _wait_job_state(client, job_id, {"cancelled"})
    assert "Resume" in status
