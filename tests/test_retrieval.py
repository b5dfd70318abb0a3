"""Tests for infer.retrieval: faiss index loading, RVC's blend golden, and the deterministic edge cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from infer import dsp
from infer.errors import ModelLoadError
from infer.retrieval import check_dim, load_index, retrieve, search_and_blend
from tests.helpers import PIPELINE_GOLDEN_DIR

INDEX_PATH = PIPELINE_GOLDEN_DIR / "added_IVF30_Flat_nprobe_1_tiny_v1.index"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(PIPELINE_GOLDEN_DIR / "index_blend_protect.npz") as data:
        return {key: data[key] for key in data.files}


def test_reconstructed_vectors_hash_golden(golden: dict[str, np.ndarray]) -> None:
    facts = json.loads((PIPELINE_GOLDEN_DIR / "facts_generated.json").read_text())
    index = load_index(INDEX_PATH)
    assert (index.size, index.dim) == (facts["index"]["N"], facts["index"]["dim"])
    digest = hashlib.sha256(index.vectors.astype(np.float32).tobytes()).hexdigest()
    assert digest == facts["index"]["reconstruct_n_sha256_float32"]
    np.testing.assert_array_equal(index.vectors[:4], golden["index_vectors_first4"])
    assert not index.vectors.flags.writeable


def test_search_terms_golden(golden: dict[str, np.ndarray]) -> None:
    result = retrieve(golden["hubert_feats"][0], load_index(INDEX_PATH))
    np.testing.assert_array_equal(result.ix, golden["search_ix"])
    np.testing.assert_allclose(result.score, golden["search_score"], rtol=1e-6)
    np.testing.assert_allclose(result.weight, golden["blend_weight"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.retrieved, golden["retrieved"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("index_rate", "protect"), [(0.75, 0.33), (0.0, 0.33), (1.0, 0.5), (0.5, 0.0), (0.3, 0.2)]
)
def test_index_blend_protect_golden(golden: dict[str, np.ndarray], index_rate: float, protect: float) -> None:
    case_keys = {(float(ir), float(pr)) for ir, pr in golden["cases"]}
    assert (index_rate, protect) in case_keys
    suffix = f"ir{index_rate}_pr{protect}"
    feats = golden["hubert_feats"][0]
    blended = search_and_blend(feats, load_index(INDEX_PATH), index_rate)
    upsampled = dsp.upsample_nearest_2x(blended)
    before = dsp.upsample_nearest_2x(feats)
    p_len = min(int(golden["audio0_len"]) // dsp.F0_HOP_LENGTH, upsampled.shape[0])
    pitch = golden["pitch_in"][:, :p_len]
    pitchf = golden["pitchf_in"][:, :p_len]
    synth_feats = dsp.apply_protect(upsampled[None], before[None], pitchf, protect)
    assert p_len == int(golden[f"synth_in_plen_{suffix}"][0]) == 78
    np.testing.assert_array_equal(pitch, golden[f"synth_in_pitch_{suffix}"])
    np.testing.assert_array_equal(pitchf, golden[f"synth_in_pitchf_{suffix}"])
    np.testing.assert_allclose(synth_feats, golden[f"synth_in_feats_{suffix}"], rtol=0, atol=1e-6)


def test_zero_index_rate_or_no_index_skips_retrieval(golden: dict[str, np.ndarray]) -> None:
    feats = golden["hubert_feats"][0]
    out = search_and_blend(feats, load_index(INDEX_PATH), 0.0)
    np.testing.assert_array_equal(out, feats)
    assert out is not feats
    np.testing.assert_array_equal(search_and_blend(feats, None, 0.8), feats)
    with pytest.raises(ValueError, match="index_rate"):
        search_and_blend(feats, None, 1.5)


def test_load_index_cache_follows_file_changes(tmp_path: Path) -> None:
    copy = tmp_path / "copy.index"
    shutil.copyfile(INDEX_PATH, copy)
    first = load_index(copy)
    assert load_index(copy) is first
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = load_index(copy)
    assert second is not first
    np.testing.assert_array_equal(second.vectors, first.vectors)


def test_load_index_rejects_bad_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.index"
    text.write_text("this is not an index\n")
    with pytest.raises(ModelLoadError, match="not a faiss index"):
        load_index(text)
    empty_file = tmp_path / "empty.index"
    empty_file.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty file"):
        load_index(empty_file)
    with pytest.raises(ModelLoadError, match="not found"):
        load_index(tmp_path / "missing.index")
    no_vectors = tmp_path / "trained_IVF1_Flat_nprobe_1_x_v2.index"
    faiss.write_index(faiss.IndexFlatL2(16), str(no_vectors))
    with pytest.raises(ModelLoadError, match=r"empty faiss index.*added_"):
        load_index(no_vectors)


def test_check_dim_names_both_dims() -> None:
    index = load_index(INDEX_PATH)
    check_dim(index, 256)
    with pytest.raises(ModelLoadError, match=r"256-dim.*768-dim"):
        check_dim(index, 768)
    with pytest.raises(ModelLoadError, match="768-dim"):
        search_and_blend(np.zeros((5, 768), np.float32), index, 0.5)


def _flat_index(tmp_path: Path, vectors: np.ndarray) -> Path:
    flat = faiss.IndexFlatL2(vectors.shape[1])
    flat.add(vectors)
    path = tmp_path / f"flat_{vectors.shape[0]}.index"
    faiss.write_index(flat, str(path))
    return path


def test_exact_match_retrieves_that_vector(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((20, 4)).astype(np.float32)
    index = load_index(_flat_index(tmp_path, vectors))
    query = np.stack([vectors[7], vectors[2] + 0.1]).astype(np.float32)
    result = retrieve(query, index)
    assert result.score[0, 0] == 0.0
    assert np.isfinite(result.weight).all() and np.isfinite(result.retrieved).all()
    np.testing.assert_array_equal(result.weight[0], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(result.retrieved[0], vectors[7])
    np.testing.assert_allclose(result.weight[1].sum(), 1.0, rtol=1e-6)
    blended = search_and_blend(query, index, 1.0)
    np.testing.assert_array_equal(blended[0], vectors[7])


def test_fewer_vectors_than_k_ignores_missing_neighbours(tmp_path: Path) -> None:
    vectors = np.array([[0, 0], [1, 0], [0, 2]], dtype=np.float32)
    index = load_index(_flat_index(tmp_path, vectors))
    query = np.array([[0.5, 0.5]], dtype=np.float32)
    result = retrieve(query, index, k=8)
    assert (result.ix[0, 3:] == -1).all()
    np.testing.assert_array_equal(result.weight[0, 3:], 0)
    distances = ((vectors - query) ** 2).sum(axis=1)
    weights = (1 / distances) ** 2
    weights /= weights.sum()
    np.testing.assert_allclose(result.retrieved[0], weights @ vectors, rtol=1e-6)
