"""The models folder: discovery, metadata, names, rename/delete/add confined to the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infer.catalog import (
    MODELS_DIR_ENV_VAR,
    InvalidModelNameError,
    ModelExistsError,
    ModelNotFoundError,
    add_model_files,
    delete_model,
    find_model,
    list_models,
    rename_model,
    resolve_models_dir,
    validate_model_name,
)
from infer.errors import ModelLoadError, TimbreError


def _write(path: Path, n_bytes: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x01" * n_bytes)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    _write(root / "alice" / "alice.pth", 100)
    _write(root / "alice" / "added_IVF256_Flat_nprobe_1_alice_v2.index", 30)
    _write(root / "alice" / "trained_IVF256_Flat_nprobe_1_alice_v2.index", 7)
    (root / "alice" / "timbre.json").write_text(
        json.dumps({"name": "alice", "sample_rate": 40000, "version": "v2", "use_f0": True, "epochs": 20})
    )
    _write(root / "alice" / "diffusion_head.pt", 5)
    _write(root / "alice" / "report.md", 3)
    _write(root / "bob" / "bob.pth", 50)
    _write(root / "bob" / "bob_v1.index", 10)
    (root / "bob" / "timbre.json").write_text("{not json")
    _write(root / "Carol.pth", 40)
    _write(root / "added_IVF64_Flat_nprobe_1_Carol_v1.index", 4)
    _write(root / "added_IVF64_Flat_nprobe_1_Car_v1.index", 4)  # belongs to a model named "Car"
    _write(root / "empty_folder" / "notes.txt", 1)
    _write(root / "train_ckpts" / "G_100.pth", 1)
    _write(root / ".hidden" / ".hidden.pth", 1)
    return root


def test_resolve_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODELS_DIR_ENV_VAR, raising=False)
    assert resolve_models_dir(None) == tmp_path / "models"
    monkeypatch.setenv(MODELS_DIR_ENV_VAR, str(tmp_path / "env_models"))
    assert resolve_models_dir(None) == tmp_path / "env_models"
    assert resolve_models_dir("cli_models") == tmp_path / "cli_models"
    assert resolve_models_dir(tmp_path / "x") == tmp_path / "x"
    assert resolve_models_dir("  ") == tmp_path / "env_models"


def test_list_models_layouts_and_metadata(models: Path) -> None:
    entries = list_models(models)
    assert [e.name for e in entries] == ["alice", "bob", "Carol"]
    alice, bob, carol = entries
    assert alice.pth_path == models / "alice" / "alice.pth"
    assert alice.index_path == models / "alice" / "added_IVF256_Flat_nprobe_1_alice_v2.index"
    assert alice.metadata["sample_rate"] == 40000 and alice.metadata["epochs"] == 20
    assert alice.size_bytes == 100 + 30 + 7 + 5 + 3 + len((models / "alice" / "timbre.json").read_bytes())
    assert alice.has_diffusion and alice.report_path == models / "alice" / "report.md"
    assert not alice.is_loose and alice.folder == models / "alice"

    assert bob.metadata == {}  # unreadable timbre.json is ignored, not fatal
    assert bob.index_path == models / "bob" / "bob_v1.index"
    assert not bob.has_diffusion and bob.report_path is None

    assert carol.is_loose and carol.folder == models
    assert carol.index_path == models / "added_IVF64_Flat_nprobe_1_Carol_v1.index"
    assert carol.size_bytes == 44


def test_list_models_edge_cases(tmp_path: Path) -> None:
    assert list_models(tmp_path / "missing") == []
    root = tmp_path / "models"
    _write(root / "one" / "weights.pth", 3)  # a single .pth with another name is accepted
    _write(root / "two" / "a.pth", 3)
    _write(root / "two" / "b.pth", 3)  # ambiguous: not a model
    _write(root / "one.pth", 9)  # a folder of the same name wins
    (root / "three").mkdir()
    _write(root / "three" / "three.pth", 1)
    (root / "three" / "timbre.json").write_text(json.dumps({"has_diffusion": True}))
    (root / "four").mkdir()
    _write(root / "four" / "four.pth", 1)
    (root / "four" / "timbre.json").write_text("[1, 2]")
    entries = {e.name: e for e in list_models(root)}
    assert sorted(entries) == ["four", "one", "three"]
    assert entries["one"].pth_path.name == "weights.pth" and not entries["one"].is_loose
    assert entries["three"].has_diffusion
    assert entries["four"].metadata == {}


@pytest.mark.parametrize(
    "name",
    [
        "",
        " alice",
        "alice ",
        "a/b",
        "a\\b",
        "..",
        "a..b",
        ".hidden",
        "x" * 65,
        "tab\there",
        "nul\x00",
        "c:d",
        "a*",
        'q"',
        "p|q",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidModelNameError) as info:
        validate_model_name(name)
    assert isinstance(info.value, TimbreError) and len(str(info.value)) > 20


@pytest.mark.parametrize("name", ["alice", "Alice_v2", "my voice (take 3)", "é-voix.v1", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_model_name(name) == name


def test_rename_folder_model(models: Path) -> None:
    entry = rename_model(models, "alice", "alicia")
    assert entry.name == "alicia" and entry.pth_path == models / "alicia" / "alicia.pth"
    assert entry.index_path is not None and entry.index_path.parent == models / "alicia"
    assert json.loads((models / "alicia" / "timbre.json").read_text())["name"] == "alicia"
    assert not (models / "alice").exists()
    assert [e.name for e in list_models(models)] == ["alicia", "bob", "Carol"]


def test_rename_loose_model(models: Path) -> None:
    entry = rename_model(models, "Carol", "Caroline")
    assert entry.is_loose and entry.pth_path == models / "Caroline.pth"
    assert entry.index_path == models / "Caroline.index"
    assert (models / "added_IVF64_Flat_nprobe_1_Car_v1.index").exists()  # another model's index untouched


def test_rename_refusals(models: Path) -> None:
    with pytest.raises(ModelExistsError, match="'bob' exists already"):
        rename_model(models, "alice", "bob")
    with pytest.raises(ModelExistsError):
        rename_model(models, "alice", "Carol")
    with pytest.raises(ModelNotFoundError, match="no model called 'zed'"):
        rename_model(models, "zed", "zed2")
    with pytest.raises(InvalidModelNameError):
        rename_model(models, "alice", "../outside")
    with pytest.raises(InvalidModelNameError):
        rename_model(models, "../models/alice", "x")
    assert (models / "alice" / "alice.pth").exists()


def test_delete_folder_and_loose(models: Path) -> None:
    delete_model(models, "alice")
    assert not (models / "alice").exists()
    delete_model(models, "Carol")
    assert not (models / "Carol.pth").exists()
    assert not (models / "added_IVF64_Flat_nprobe_1_Carol_v1.index").exists()
    assert (models / "added_IVF64_Flat_nprobe_1_Car_v1.index").exists()
    assert [e.name for e in list_models(models)] == ["bob"]
    with pytest.raises(ModelNotFoundError):
        delete_model(models, "alice")
    with pytest.raises(InvalidModelNameError):
        delete_model(models, "..")


def test_delete_symlinked_model_removes_only_the_link(models: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "dave"
    _write(outside / "dave.pth", 8)
    os.symlink(outside, models / "dave")
    assert find_model(models, "dave").pth_path == models / "dave" / "dave.pth"
    delete_model(models, "dave")
    assert not (models / "dave").exists() and (outside / "dave.pth").exists()


def test_add_model_files(models: Path, tmp_path: Path) -> None:
    pth = _write(tmp_path / "upload" / "whatever.pth", 12)
    index = _write(tmp_path / "upload" / "feature.index", 6)
    entry = add_model_files(models, "erin", pth, index)
    assert entry.pth_path == models / "erin" / "erin.pth" and entry.pth_path.read_bytes() == pth.read_bytes()
    assert entry.index_path == models / "erin" / "added_erin.index"
    assert entry.size_bytes == 18
    with pytest.raises(ModelExistsError):
        add_model_files(models, "erin", pth)
    with pytest.raises(ModelLoadError, match="0 bytes"):
        add_model_files(models, "frank", _write(tmp_path / "upload" / "empty.pth", 0))
    with pytest.raises(ModelLoadError, match=r"not a \.pth"):
        add_model_files(models, "frank", index)
    assert not (models / "frank").exists()
    assert not any(p.name.startswith(".frank") for p in models.iterdir())
