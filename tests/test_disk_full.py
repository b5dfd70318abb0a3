"""A full disk (fault-injected ENOSPC) on convert, a training checkpoint, export and import: one readable
message naming the folder and its free space, nothing half-written, no empty folders left."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import soundfile as sf

from infer.errors import DiskSpaceError
from tests.helpers import REPO_DIR, VOICES_DIR
from ui.studio import Studio, StudioPaths

SOURCE_CLIP = VOICES_DIR / "us2" / "speech" / "003.flac"
FREE_TEXT = r"is full \([0-9.]+ [KMGT]?B(ytes)? free\); free some space and try again"


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def no_space(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def studio(tmp_path: Path, voice_kit: dict) -> Studio:
    (tmp_path / "models" / "voice").mkdir(parents=True)
    shutil.copyfile(voice_kit["model"], tmp_path / "models" / "voice" / "voice.pth")
    paths = StudioPaths(tmp_path / "models", tmp_path / "data", Path(voice_kit["pretrained"]))
    made = Studio(paths)
    made.store.list_jobs()
    return made


def convert_values(clip: Path) -> dict:
    from ui.forms import convert_defaults

    return {
        **convert_defaults(),
        "model": "voice",
        "index": None,
        "audio": str(clip),
        "batch": [],
        "f0_method": "pm",
        "device": "cpu",
        "precision": "auto",
    }


def test_convert_on_a_full_disk(studio: Studio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = tmp_path / "clip.wav"
    audio, rate = sf.read(SOURCE_CLIP, dtype="float32")
    sf.write(clip, audio[: rate // 2], rate)
    before = listing(tmp_path)
    monkeypatch.setattr(os, "fsync", no_space)  # the atomic write's fsync meets the full disk
    with pytest.raises(gr.Error, match=r"the disk holding outputs/\S* in the data folder " + FREE_TEXT):
        studio.convert(convert_values(clip), None, lambda *a, **k: None)
    assert set(listing(tmp_path)) - set(before) <= {"data/outputs"}  # the outputs area, empty
    assert not any((tmp_path / "data" / "outputs").iterdir())


def test_export_and_import_on_a_full_disk(
    studio: Studio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = studio.export_model("voice")
    saved = tmp_path / "voice_copy.zip"
    shutil.copyfile(archive, saved)
    before = listing(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", no_space)
        with pytest.raises(gr.Error, match=r"the disk holding exports/\S+ in the data folder " + FREE_TEXT):
            studio.export_model("voice")
    assert listing(tmp_path) == before
    from infer import ziputil

    class FullFile(io.FileIO):
        def write(self, _data: object) -> int:
            no_space()
            return 0

    with monkeypatch.context() as patch:
        patch.setattr(ziputil, "open", FullFile, raising=False)
        with pytest.raises(gr.Error, match="the disk holding the models folder " + FREE_TEXT) as caught:
            studio.import_model([str(saved)], "copy")
    assert "/" + tmp_path.name not in str(caught.value.message)  # no absolute path reaches the page
    assert listing(tmp_path) == before


def test_training_checkpoint_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.toy_trainer import ToyTrainer
    from train.trainer import TrainerConfig

    run_dir = tmp_path / "run"
    trainer = ToyTrainer(TrainerConfig(run_dir=run_dir, epochs=2))
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskSpaceError, match=f"the disk holding {run_dir} " + FREE_TEXT) as caught:
        trainer.fit()
    assert caught.value.folder == str(run_dir) and caught.value.free_bytes is not None
    assert not [p for p in listing(run_dir) if p.endswith((".pt", ".tmp"))]  # no checkpoint, no temp file


def test_cli_says_one_line_and_no_traceback(tmp_path: Path, voice_kit: dict) -> None:
    """``python -m infer convert`` on a full output disk (ENOSPC at the write) prints one error line."""
    script = (
        "import errno, os, sys\n"
        "def full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "os.fsync = full\n"
        "from infer.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    args = ["convert", "--model", str(voice_kit["model"]), "--pretrained-dir", str(voice_kit["pretrained"])]
    args += ["--f0-method", "pm", "--threads", "1", str(SOURCE_CLIP), "--output", str(out / "a.wav")]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(errors) == 1 and re.search(f"the disk holding {out} " + FREE_TEXT, errors[0]), done.stderr
    assert not out.exists() or listing(out) == []
    from infer.cli import run_command

    def write_fails() -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    assert run_command(write_fails, debug=False, folder=out) == 1
    with pytest.raises(OSError):
        run_command(write_fails, debug=True, folder=out)
