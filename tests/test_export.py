"""Model zip export/import: round trip, shared layouts, and every kind of unsafe or unusable upload."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest
import torch

from infer.catalog import InvalidModelNameError, ModelExistsError, list_models
from infer.errors import ModelLoadError, UnsafeFileError
from infer.library import (
    ImportLimits,
    ModelImportError,
    export_model_zip,
    import_model_files,
    import_model_zip,
)
from infer.models import load_voice_model
from infer.retrieval import load_index
from tests.helpers import PIPELINE_GOLDEN_DIR, synth_golden

V1_PTH = synth_golden("v1", use_f0=False)
V2_PTH = synth_golden("v2", use_f0=True, sample_rate=40000)
V1_INDEX = PIPELINE_GOLDEN_DIR / "added_IVF30_Flat_nprobe_1_tiny_v1.index"
TRAINING_METADATA = {
    "name": "alice",
    "epochs": 7,
    "dataset_duration_s": 123.5,
    "f0_method": "rmvpe",
    "created_at": "2025-01-02T03:04:05+00:00",
    "custom": "kept",
}


class _CodeRunningPayload:
    """Unpickling this (without the data-only loader) creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes | Path]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, data.read_bytes() if isinstance(data, Path) else data)
    return path


def _snapshot(folder: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A parent folder holding the models folder with one trained model 'alice' (v1, index, extras)."""
    folder = tmp_path / "home" / "models" / "alice"
    folder.mkdir(parents=True)
    shutil.copyfile(V1_PTH, folder / "alice.pth")
    shutil.copyfile(V1_INDEX, folder / V1_INDEX.name)
    (folder / "timbre.json").write_text(json.dumps(TRAINING_METADATA))
    (folder / "report.json").write_text(json.dumps({"loss": [1.0, 0.5]}))
    torch.save({"weight": torch.arange(4.0)}, folder / "diffusion_head.pt")
    (folder / "G_100.pth").write_bytes(b"training checkpoint, not exported")
    return tmp_path / "home"


def test_export_then_import_round_trips(home: Path, tmp_path: Path) -> None:
    models = home / "models"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    archive = export_model_zip(models, "alice", dest=out_dir)
    assert archive == out_dir / "alice.zip"
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        exported_meta = json.loads(zf.read("timbre.json"))
        assert zf.read("alice.pth") == V1_PTH.read_bytes()
    assert names == {
        "alice.pth",
        "added_IVF30_Flat_nprobe_1_alice_v1.index",
        "timbre.json",
        "report.json",
        "diffusion_head.pt",
    }
    assert exported_meta == {
        **TRAINING_METADATA,
        "sample_rate": 48000,
        "version": "v1",
        "use_f0": False,
        "content_encoder": "hubert_base",
        "steps": None,
        "info": "7epoch",
    }
    assert not list(out_dir.glob(".*"))  # no temp file left by the atomic write

    fresh = tmp_path / "fresh" / "models"
    assert import_model_zip(archive, fresh) == "alice"
    installed = fresh / "alice"
    assert sorted(p.name for p in installed.iterdir()) == sorted(names)
    assert json.loads((installed / "timbre.json").read_text()) == exported_meta
    model = load_voice_model(installed / "alice.pth")
    assert (model.metadata.version, model.config.sample_rate, model.config.use_f0) == ("v1", 48000, False)
    assert load_index(installed / "added_IVF30_Flat_nprobe_1_alice_v1.index").dim == 256
    [entry] = list_models(fresh)
    assert entry.name == "alice" and entry.has_diffusion and entry.index_path is not None
    assert entry.metadata["dataset_duration_s"] == 123.5 and entry.metadata["f0_method"] == "rmvpe"
    assert [p.name for p in fresh.iterdir()] == ["alice"]

    with pytest.raises(ModelExistsError, match="'alice' exists already"):
        import_model_zip(archive, fresh)
    (installed / "stale.txt").write_text("from the old copy")
    assert import_model_zip(archive, fresh, overwrite=True) == "alice"
    assert not (installed / "stale.txt").exists()
    assert import_model_zip(archive, fresh, name="bob") == "bob"
    assert (fresh / "bob" / "bob.pth").is_file()
    assert (fresh / "bob" / "added_IVF30_Flat_nprobe_1_bob_v1.index").is_file()
    assert json.loads((fresh / "bob" / "timbre.json").read_text())["name"] == "bob"
    assert sorted(p.name for p in fresh.iterdir()) == ["alice", "bob"]

    default = export_model_zip(models, "alice")
    try:
        assert default.name == "alice.zip" and zipfile.is_zipfile(default)
    finally:
        shutil.rmtree(default.parent)


def test_import_accepts_shared_layouts(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sub = _zip(
        tmp_path / "zips" / "sub.zip",
        [
            ("MyVoice/MyVoice.pth", V1_PTH),
            (f"MyVoice/{V1_INDEX.name}", V1_INDEX),
            ("MyVoice/readme.txt", b"trained by me"),
        ],
    )
    assert import_model_zip(sub, models) == "MyVoice"
    assert sorted(p.name for p in (models / "MyVoice").iterdir()) == [
        "MyVoice.pth",
        "added_IVF30_Flat_nprobe_1_MyVoice_v1.index",
        "timbre.json",
    ]
    meta = json.loads((models / "MyVoice" / "timbre.json").read_text())
    assert (meta["name"], meta["sample_rate"], meta["version"], meta["use_f0"]) == (
        "MyVoice",
        48000,
        "v1",
        False,
    )
    assert meta["epochs"] == 7  # from RVC's info '7epoch'

    applio = _zip(tmp_path / "zips" / "applio.zip", [("voice.pth", V1_PTH), ("voice.index", V1_INDEX)])
    assert import_model_zip(applio, models) == "voice"
    assert (models / "voice" / "added_IVF30_Flat_nprobe_1_voice_v1.index").is_file()

    extras = _zip(
        tmp_path / "zips" / "extras.zip",
        [
            ("cover.png", b"\x89PNG not really"),
            ("README.md", b"# a voice"),
            ("__MACOSX/._singer.pth", b"resource fork"),
            ("G_2333.pth", b"not a voice"),
            ("D_2333.pth", b"not a voice"),
            ("trained_IVF30_Flat_nprobe_1_singer_v2.index", b"centroids only"),
            ("singer.pth", V2_PTH),
        ],
    )
    assert import_model_zip(extras, models) == "singer"
    assert sorted(p.name for p in (models / "singer").iterdir()) == ["singer.pth", "timbre.json"]
    meta = json.loads((models / "singer" / "timbre.json").read_text())
    assert (meta["sample_rate"], meta["version"], meta["use_f0"]) == (40000, "v2", True)
    assert sorted(p.name for p in models.iterdir()) == ["MyVoice", "singer", "voice"]


def test_import_model_files_copies_and_checks(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    pth = uploads / "carol.pth"
    index = uploads / "carol.index"
    shutil.copyfile(V1_PTH, pth)
    shutil.copyfile(V1_INDEX, index)
    models = tmp_path / "models"
    assert import_model_files(pth, index, models) == "carol"
    assert sorted(p.name for p in (models / "carol").iterdir()) == [
        "added_IVF30_Flat_nprobe_1_carol_v1.index",
        "carol.pth",
        "timbre.json",
    ]
    assert pth.read_bytes() == V1_PTH.read_bytes() and index.is_file()  # uploads untouched
    assert import_model_files(pth, None, models, name="dave") == "dave"
    assert sorted(p.name for p in (models / "dave").iterdir()) == ["dave.pth", "timbre.json"]

    v2 = uploads / "v2.pth"
    shutil.copyfile(V2_PTH, v2)
    before = _snapshot(tmp_path)
    with pytest.raises(ModelLoadError, match="256-dim features but the voice model uses 768-dim"):
        import_model_files(v2, index, models)
    with pytest.raises(ModelImportError, match=r"not a \.pth file"):
        import_model_files(index, None, models)
    with pytest.raises(InvalidModelNameError, match=r"'\.\.'"):
        import_model_files(pth, None, models, name="a..b")
    assert _snapshot(tmp_path) == before


def _symlink_member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("members", "error", "message"),
    [
        ([("../../evil.pth", V1_PTH)], UnsafeFileError, "climbs out of the target folder"),
        ([("/tmp/evil.pth", V1_PTH)], UnsafeFileError, "is an absolute path"),
        (
            [("voice.pth", V1_PTH), (_symlink_member("link.index"), b"/etc/passwd")],
            UnsafeFileError,
            "symbolic link",
        ),
        ([("voice.pth", V1_PTH), ("huge.pth", bytes(3_000_000))], UnsafeFileError, "per-file limit"),
        (
            [("a.pth", V1_PTH), ("sub/b.pth", V2_PTH)],
            ModelImportError,
            r"holds 2 \.pth files \(a\.pth, sub/b\.pth\)",
        ),
        ([("voice.index", V1_INDEX), ("notes.txt", b"hi")], ModelImportError, r"holds no \.pth voice model"),
        ([("voice.pth", V2_PTH), ("voice.index", V1_INDEX)], ModelLoadError, "uses 768-dim content features"),
        ([("voice.pth", b"PK\x03\x04 broken")], ModelLoadError, "voice.pth"),
    ],
    ids=["dotdot", "absolute", "symlink", "oversized", "two-pth", "no-pth", "wrong-dim-index", "corrupt-pth"],
)
def test_import_rejects_bad_zips_without_writing(
    home: Path, tmp_path: Path, members: list, error: type[Exception], message: str
) -> None:
    archive = _zip(tmp_path / "zips" / "upload.zip", members)
    before = _snapshot(home)
    with pytest.raises(error, match=message):
        import_model_zip(archive, home / "models", limits=ImportLimits(max_member_bytes=2_000_000))
    assert _snapshot(home) == before
    assert not list((home / "models").glob(".incoming-*"))


def test_import_refuses_code_running_pickle(home: Path, tmp_path: Path) -> None:
    # The payload is live: a plain unpickler runs it.
    control = tmp_path / "control_marker"
    torch.save(_CodeRunningPayload(control), tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()

    marker = tmp_path / "pwned_marker"
    evil = tmp_path / "evil.pth"
    torch.save(_CodeRunningPayload(marker), evil)
    archive = _zip(tmp_path / "zips" / "evil.zip", [("evil.pth", evil), ("evil.index", V1_INDEX)])
    before = _snapshot(home)
    with pytest.raises(UnsafeFileError, match=r"evil\.pth"):
        import_model_zip(archive, home / "models")
    with pytest.raises(UnsafeFileError, match=r"evil\.pth"):
        import_model_files(evil, None, home / "models")
    assert not marker.exists()
    assert _snapshot(home) == before

    # A diffusion head is a pickle too: it is checked the same way.
    head = _zip(tmp_path / "zips" / "head.zip", [("voice.pth", V1_PTH), ("diffusion.pt", evil)])
    with pytest.raises(UnsafeFileError, match=r"diffusion\.pt is not plain data"):
        import_model_zip(head, home / "models")
    assert not marker.exists()
    assert _snapshot(home) == before


def test_export_unknown_model_and_existing_name(home: Path, tmp_path: Path) -> None:
    from infer.catalog import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no model called 'nobody'"):
        export_model_zip(home / "models", "nobody", dest=tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    archive = _zip(tmp_path / "zips" / "alice.zip", [("alice.pth", V1_PTH)])
    before = _snapshot(home)
    with pytest.raises(ModelExistsError, match="'alice' exists already"):
        import_model_zip(archive, home / "models")
    assert _snapshot(home) == before


def test_overwrite_spares_non_model_folders_and_stale_staging_is_cleaned(home: Path, tmp_path: Path) -> None:
    models = home / "models"
    notes = models / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("not a model")
    archive = _zip(tmp_path / "zips" / "v.zip", [("v.pth", V1_PTH)])
    with pytest.raises(ModelExistsError, match="is not a model folder"):
        import_model_zip(archive, models, name="notes", overwrite=True)
    assert (notes / "todo.txt").read_text() == "not a model"

    stale = models / ".incoming-killed"
    (stale / "extracted").mkdir(parents=True)
    old_s = time.time() - 3 * 24 * 3600
    os.utime(stale, (old_s, old_s))
    busy = models / ".incoming-busy"
    busy.mkdir()
    assert import_model_zip(archive, models) == "v"
    assert not stale.exists() and busy.is_dir()
    assert sorted(p.name for p in models.iterdir()) == [".incoming-busy", "alice", "notes", "v"]
