"""The whole training chain through ``python -m train`` on one voice, then conversion of another.

Tiny networks and a few steps: this checks that every stage connects (prepare, extract, fit,
index, diffusion teacher, distillation, export, zip import, conversion with every sampler),
not voice quality. A second ``run`` on a copy of the experiment (VITS, features and index
already done) trains the EDM teacher with its CM and ACDD students.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from infer.audio import load_audio
from infer.catalog import list_models
from infer.diffusion.head import DiffusionHeadError, load_head
from infer.diffusion.refine import RefineParams
from infer.models import load_voice_model
from infer.pipeline import ConvertParams, Resources, convert, load_voice
from tests.fakes import hubert_config, write_hubert_checkpoint
from tests.helpers import REPO_DIR, VOICES_DIR


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    pretrained = root / "pretrained"
    write_hubert_checkpoint(pretrained / "hubert_base.pt", hubert_config("v2"))
    dataset = root / "dataset"
    dataset.mkdir()
    for i in range(1, 7):
        (dataset / f"{i:03d}.flac").symlink_to(VOICES_DIR / "us1" / "speech" / f"{i:03d}.flac")
    work = root / "work"
    models = root / "models"
    _run(
        "train",
        "run",
        "--name",
        "us1tiny",
        "--dataset",
        str(dataset),
        "--work-dir",
        str(work),
        "--models-dir",
        str(models),
        "--pretrained-dir",
        str(pretrained),
        "--size",
        "tiny",
        "--sample-rate",
        "40000",
        "--f0-method",
        "pm",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--max-steps",
        "8",
        "--from-scratch",
        "--diffusion",
        "--distill",
        "--diffusion-max-steps",
        "8",
        "--distill-max-steps",
        "4",
        "--workers",
        "1",
    )
    return {"root": root, "pretrained": pretrained, "work": work, "models": models}


def test_training_writes_every_stage_output(trained: dict[str, Path]) -> None:
    work = trained["work"]
    assert len(list((work / "0_gt_wavs").glob("*.wav"))) >= 6
    assert len(list((work / "3_feature768").glob("*.npy"))) == len(list((work / "1_16k_wavs").glob("*.wav")))
    assert list(work.glob("added_IVF*_Flat_nprobe_1_us1tiny_v2.index"))
    assert (work / "vits").is_dir() and list((work / "vits").glob("ckpt_*.pt"))
    settings = json.loads((work / "settings.json").read_text())
    assert settings["size"] == "tiny" and settings["use_diffusion"] is True
    model_dir = trained["models"] / "us1tiny"
    names = sorted(p.name for p in model_dir.iterdir())
    required = {"diffusion_lcm.pt", "diffusion_teacher.pt", "report.json", "timbre.json", "us1tiny.pth"}
    assert required <= set(names), names
    indexes = [n for n in names if n.endswith(".index")]
    assert len(indexes) == 1 and indexes[0].startswith("added_IVF"), names
    assert indexes[0].endswith("_Flat_nprobe_1_us1tiny_v2.index")
    meta = json.loads((model_dir / "timbre.json").read_text())
    assert meta["sample_rate"] == 40000 and meta["version"] == "v2" and meta["f0_method"] == "pm"
    assert meta["dataset_duration_s"] > 15
    model = load_voice_model(model_dir / "us1tiny.pth")
    assert model.metadata.steps == 8


def test_zip_imports_into_a_fresh_folder_and_converts_another_voice_with_every_sampler(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    archive = trained["work"] / "us1tiny.zip"
    with zipfile.ZipFile(archive) as zf:
        members = sorted(zf.namelist())
    assert "us1tiny.pth" in members and "timbre.json" in members and all("/" not in m for m in members)
    fresh = tmp_path / "fresh_models"
    _run("train", "import", str(archive), "--models-dir", str(fresh))
    entries = list_models(fresh)
    assert [e.name for e in entries] == ["us1tiny"]
    entry = entries[0]
    assert entry.index_path is not None and entry.has_diffusion

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        source = load_audio(VOICES_DIR / "us2" / "speech" / "003.flac", 16000)
        voice = load_voice(entry.pth_path, entry.index_path)
        resources = Resources(pretrained_dir=trained["pretrained"])
        outputs = {}
        for sampler, steps in (("off", 1), ("ddpm", 4), ("ddim", 4), ("lcm", 2)):
            params = ConvertParams(
                f0_method="pm",
                seed=0,
                refine=None
                if sampler == "off"
                else RefineParams(sampler=sampler, steps=steps, start="shallow"),
            )
            result = convert(source, voice, params, resources=resources)
            assert result.sample_rate == 40000
            assert abs(len(result.audio) / 40000 - len(source) / 16000) < 0.05
            assert np.all(np.isfinite(result.audio)) and np.abs(result.audio).max() > 0
            outputs[sampler] = result.audio
        assert not np.array_equal(outputs["off"], outputs["lcm"])
    finally:
        torch.set_num_threads(threads)


def test_rerunning_a_stage_resumes_instead_of_starting_over(trained: dict[str, Path]) -> None:
    proc = _run(
        "train",
        "extract",
        "--name",
        "us1tiny",
        "--work-dir",
        str(trained["work"]),
        "--models-dir",
        str(trained["models"]),
        "--pretrained-dir",
        str(trained["pretrained"]),
    )
    assert "0 segments extracted" in proc.stderr and "cached" in proc.stderr


@pytest.fixture(scope="module")
def trained_edm(trained: dict[str, Path]) -> dict[str, Path]:
    root = trained["root"]
    work = root / "work_edm"
    shutil.copytree(trained["work"], work, symlinks=True)
    models = root / "models_edm"
    _run(
        "train", "run", "--name", "us1tiny", "--dataset", str(root / "dataset"), "--work-dir", str(work),
        "--models-dir", str(models), "--pretrained-dir", str(trained["pretrained"]), "--size", "tiny",
        "--sample-rate", "40000", "--f0-method", "pm", "--epochs", "2", "--batch-size", "2",
        "--max-steps", "8", "--from-scratch", "--diffusion", "--diffusion-parameterisation", "edm",
        "--cm", "--acdd", "--diffusion-max-steps", "6", "--cm-max-steps", "3", "--acdd-max-steps", "2",
        "--workers", "1", "--no-report",
    )  # fmt: skip
    return {**trained, "work": work, "models": models}


def test_edm_teacher_cm_and_acdd_train_export_import_and_convert(
    trained_edm: dict[str, Path], tmp_path: Path
) -> None:
    work = trained_edm["work"]
    assert list((work / "diffusion_edm").glob("ckpt_*.pt")) and list((work / "acdd").glob("ckpt_*.pt"))
    heads = {"diffusion_teacher.pt": "teacher", "diffusion_cm.pt": "cm", "diffusion_acdd.pt": "acdd"}
    for filename, kind in heads.items():
        head = load_head(trained_edm["models"] / "us1tiny" / filename)
        assert head.kind == kind and head.parameterisation == "edm"
    assert load_head(trained_edm["models"] / "us1tiny" / "diffusion_acdd.pt").metadata["steps"] == 2
    archive = work / "us1tiny.zip"
    with zipfile.ZipFile(archive) as zf:
        assert set(heads) <= set(zf.namelist())
    fresh = tmp_path / "fresh_models"
    _run("train", "import", str(archive), "--models-dir", str(fresh))
    entry = list_models(fresh)[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        source = load_audio(VOICES_DIR / "us2" / "speech" / "003.flac", 16000)
        voice = load_voice(entry.pth_path, entry.index_path)
        resources = Resources(pretrained_dir=trained_edm["pretrained"])
        outputs = {}
        for sampler, steps in (("off", 1), ("edm", 2), ("cm", 1), ("acdd", 1)):
            refine = None if sampler == "off" else RefineParams(sampler=sampler, steps=steps, start="shallow")
            result = convert(
                source, voice, ConvertParams(f0_method="pm", seed=0, refine=refine), resources=resources
            )
            assert abs(len(result.audio) / 40000 - len(source) / 16000) < 0.05
            assert np.all(np.isfinite(result.audio)) and np.abs(result.audio).max() > 0
            outputs[sampler] = result.audio
        assert not np.array_equal(outputs["off"], outputs["acdd"])
        with pytest.raises(DiffusionHeadError, match=r"edm-parameterised.*choose edm|choose edm"):
            convert(
                source,
                voice,
                ConvertParams(f0_method="pm", seed=0, refine=RefineParams(sampler="ddim")),
                resources=resources,
            )
        with pytest.raises(DiffusionHeadError, match="python -m train distill"):
            convert(
                source,
                voice,
                ConvertParams(f0_method="pm", seed=0, refine=RefineParams(sampler="lcm")),
                resources=resources,
            )
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_student(trained: dict[str, Path]) -> dict[str, Path]:
    root = trained["root"]
    work = root / "work_student"
    shutil.copytree(trained["work"], work, symlinks=True)
    models = root / "models_student"
    _run(
        "train", "run", "--name", "us1tiny", "--dataset", str(root / "dataset"), "--work-dir", str(work),
        "--models-dir", str(models), "--pretrained-dir", str(trained["pretrained"]), "--size", "tiny",
        "--sample-rate", "40000", "--f0-method", "pm", "--epochs", "2", "--batch-size", "2",
        "--max-steps", "8", "--from-scratch", "--live-student", "--live-student-steps", "3",
        "--workers", "1", "--no-report",
    )  # fmt: skip
    return {**trained, "work": work, "models": models}


@pytest.mark.slow
def test_live_student_trains_exports_imports_and_streams(
    trained_student: dict[str, Path], tmp_path: Path
) -> None:
    from infer.student import STUDENT_FILENAME, load_student

    work = trained_student["work"]
    pairs = sorted((work / "live_student" / "pairs").glob("*.npz"))
    segments = len(list((work / "1_16k_wavs").glob("*.wav")))
    assert len(pairs) == 2 * segments  # the voice's clips at two "speaker" shifts (tiny settings)
    with np.load(pairs[0]) as pair:
        assert pair["source"].shape == pair["target"].shape and np.abs(pair["target"]).max() > 0
    assert list((work / "live_student").glob("ckpt_*.pt"))
    installed = load_student(trained_student["models"] / "us1tiny" / STUDENT_FILENAME)
    assert installed.metadata["steps"] == 3 and installed.metadata["pairs"] == len(pairs)
    archive = work / "us1tiny.zip"
    with zipfile.ZipFile(archive) as zf:
        assert STUDENT_FILENAME in zf.namelist()
    fresh = tmp_path / "fresh_models"
    _run("train", "import", str(archive), "--models-dir", str(fresh))
    model = fresh / "us1tiny" / "us1tiny.pth"
    assert (fresh / "us1tiny" / STUDENT_FILENAME).is_file()
    source = VOICES_DIR / "us2" / "speech" / "003.flac"
    out = tmp_path / "streamed.wav"
    proc = _run("infer", "stream", str(source), "-o", str(out), "--model", str(model), "--engine", "student")
    assert "live student" in proc.stderr and "algorithmic latency 17 ms" in proc.stderr
    streamed = load_audio(out, 16000)
    original = load_audio(source, 16000)
    assert abs(streamed.shape[0] - original.shape[0]) <= 16
    assert np.all(np.isfinite(streamed)) and np.abs(streamed).max() > 0
    # the same file whole through the student (streaming equals whole-file on the real weights too)
    with torch.no_grad():
        whole = installed.build()(torch.from_numpy(original).view(1, 1, -1))[0, 0].numpy()
    n = min(whole.shape[0], streamed.shape[0])
    np.testing.assert_allclose(streamed[:n], whole[:n], atol=1e-3)


def test_import_refuses_a_zip_whose_live_student_is_broken(trained: dict[str, Path], tmp_path: Path) -> None:
    from infer.library import import_model_zip
    from infer.student import STUDENT_FILENAME

    source = trained["models"] / "us1tiny"
    archive = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(source / "us1tiny.pth", "us1tiny.pth")
        zf.writestr(STUDENT_FILENAME, b"not a student")
    fresh = tmp_path / "models"
    with pytest.raises(Exception, match=STUDENT_FILENAME):
        import_model_zip(archive, fresh)
    assert not (fresh / "us1tiny").exists()
