"""Tests for train.index: RVC's IVF recipe, file names, atomic writes, the fixture index."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from infer.errors import Cancelled
from infer.retrieval import index_file_name, index_ivf_count
from tests.helpers import PIPELINE_GOLDEN_DIR
from train.index import (
    IndexBuildError,
    build_index,
    ivf_list_count,
    reduce_rows,
    write_index,
)

FIXTURE_INDEX = PIPELINE_GOLDEN_DIR / "added_IVF30_Flat_nprobe_1_tiny_v1.index"


def _recipe() -> dict:
    return json.loads((PIPELINE_GOLDEN_DIR / "index_recipe.json").read_text())


def test_ivf_list_count_matches_recipe_table() -> None:
    table = _recipe()["n_ivf_table"]
    assert len(table) == 9
    for row in table:
        rows = row.get("rows_after_kmeans", row["N_rows"])
        assert ivf_list_count(rows) == row["n_ivf"], row
        assert f"IVF{ivf_list_count(rows)},Flat" == row["factory"]
        assert (row["N_rows"] > 200_000) == row["kmeans_first"]


def test_ivf_list_count_small_inputs_clamped_to_one() -> None:
    assert [ivf_list_count(n) for n in (1, 10, 38, 39, 77, 78)] == [1, 1, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="positive"):
        ivf_list_count(0)


def test_index_file_names() -> None:
    assert index_file_name(30, "tiny", "v1") == "added_IVF30_Flat_nprobe_1_tiny_v1.index"
    assert index_file_name(30, "tiny", "v1") == FIXTURE_INDEX.name
    assert (
        index_file_name(256, "my voice", "v2", stage="trained")
        == "trained_IVF256_Flat_nprobe_1_my voice_v2.index"
    )
    with pytest.raises(ValueError, match="stage"):
        index_file_name(1, "x", "v2", stage="final")


def test_build_index_1200_rows_gives_ivf30(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((1200, 256)).astype(np.float32)
    calls: list[float] = []
    index = build_index(feats, seed=0, progress=lambda f, _m: calls.append(f))
    ivf = faiss.extract_index_ivf(index)
    assert index.ntotal == 1200 and index.d == 256 and index.is_trained
    assert ivf.nlist == 30 and ivf.nprobe == 1 and index_ivf_count(index) == 30
    assert index.metric_type == faiss.METRIC_L2
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)
    # Every input row is stored exactly once (in shuffled order).
    stored = index.reconstruct_n(0, index.ntotal)
    assert not np.array_equal(stored, feats)
    np.testing.assert_array_equal(np.sort(stored, axis=0), np.sort(feats, axis=0))
    # Searchable: a stored row finds itself at squared distance 0 (nprobe 1 reaches its own list).
    score, ix = index.search(stored[[5, 700]], 8)
    assert ix[:, 0].tolist() == [5, 700]
    np.testing.assert_allclose(score[:, 0], 0.0, atol=1e-3)
    # Seeded: the same seed gives the same order.
    again = build_index(feats, seed=0)
    np.testing.assert_array_equal(again.reconstruct_n(0, 1200), stored)

    path = tmp_path / index_file_name(30, "tiny", "v1")
    assert write_index(index, path) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "temp file left behind"
    back = faiss.read_index(str(path))
    assert back.ntotal == 1200 and faiss.extract_index_ivf(back).nprobe == 1
    np.testing.assert_array_equal(back.reconstruct_n(0, 1200), stored)


def test_build_index_small_and_bad_inputs() -> None:
    feats = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float64)
    index = build_index(feats)
    assert faiss.extract_index_ivf(index).nlist == 1 and index.ntotal == 20
    with pytest.raises(IndexBuildError, match="non-empty"):
        build_index(np.zeros((0, 256), dtype=np.float32))
    with pytest.raises(IndexBuildError, match="shape"):
        build_index(np.zeros(256, dtype=np.float32))
    bad = np.ones((50, 4), dtype=np.float32)
    bad[3, 2] = np.nan
    with pytest.raises(IndexBuildError, match="NaN"):
        build_index(bad)


def test_build_index_can_be_stopped() -> None:
    feats = np.random.default_rng(2).standard_normal((100, 4)).astype(np.float32)
    with pytest.raises(Cancelled):
        build_index(feats, should_stop=lambda: True)


def test_reduce_rows_only_above_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    import train.index as index_module

    feats = np.random.default_rng(4).standard_normal((300, 4)).astype(np.float32)
    assert reduce_rows(feats) is feats
    monkeypatch.setattr(index_module, "KMEANS_ABOVE_ROWS", 200)
    monkeypatch.setattr(index_module, "KMEANS_CENTRES", 10)
    centres = reduce_rows(feats, seed=0, n_cpu=1)
    assert centres.shape == (10, 4) and centres.dtype == np.float32
    index = build_index(feats, seed=0, n_cpu=1)
    assert index.ntotal == 10 and faiss.extract_index_ivf(index).nlist == ivf_list_count(10) == 1


def test_fixture_index_reads_back_with_recipe_parameters() -> None:
    facts = json.loads((PIPELINE_GOLDEN_DIR / "facts_generated.json").read_text())["index"]
    index = faiss.read_index(str(FIXTURE_INDEX))
    ivf = faiss.extract_index_ivf(index)
    assert (index.ntotal, index.d, ivf.nlist, ivf.nprobe) == (facts["N"], facts["dim"], 30, 1)
    assert ivf_list_count(index.ntotal) == facts["n_ivf"] == 30
    stored = np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
    assert hashlib.sha256(stored.tobytes()).hexdigest() == facts["reconstruct_n_sha256_float32"]
    # Rebuilding from the stored rows with our recipe gives the same layout.
    rebuilt = build_index(stored, seed=0)
    assert (rebuilt.ntotal, rebuilt.d, faiss.extract_index_ivf(rebuilt).nlist) == (1200, 256, 30)
