"""Checkpoint memory bombs are refused before torch reads them (infer.safeload.check_declared_size)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from infer.errors import UnsafeFileError
from infer.safeload import check_declared_size, load_checkpoint

SMALL_NUMEL = 70_000  # encoded as a 4-byte int in the pickle, so it can be patched in place
BOMB_NUMEL = 1 << 28  # 1 GiB of float32
CHUNK = 1 << 20
REPO = Path(__file__).resolve().parents[1]


def write_deflate_bomb(path: Path, numel: int = BOMB_NUMEL) -> None:
    """A torch zip declaring ``numel`` float32 zeros, its data record deflated (a few MB on disk)."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(SMALL_NUMEL)}, buffer)
    buffer.seek(0)
    small = SMALL_NUMEL.to_bytes(4, "little")
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as bomb:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                assert data.count(small) == 2  # the storage's numel and the tensor's size
                bomb.writestr(info.filename, data.replace(small, numel.to_bytes(4, "little")))
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                target = zipfile.ZipInfo(info.filename)
                target.compress_type = zipfile.ZIP_DEFLATED
                with bomb.open(target, "w", force_zip64=True) as out:
                    zeros = bytes(CHUNK)
                    for _ in range(numel * 4 // CHUNK):
                        out.write(zeros)
            else:
                bomb.writestr(info, data)


def test_deflated_records_are_refused_before_loading(tmp_path: Path) -> None:
    bomb = tmp_path / "voice.pth"
    write_deflate_bomb(bomb)
    assert bomb.stat().st_size < 4 << 20
    with pytest.raises(UnsafeFileError, match=r"record .*data/0.* is compressed"):
        load_checkpoint(bomb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.pth"]


def test_refusal_keeps_peak_memory_low(tmp_path: Path) -> None:
    """Measured in a fresh process: the refusal grows the peak RSS by well under 100 MB."""
    bomb = tmp_path / "voice.pth"
    write_deflate_bomb(bomb)
    script = f"""
import json
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) * 1024
import torch
from infer.safeload import load_checkpoint
from infer.errors import UnsafeFileError
before = hwm()
try:
    load_checkpoint({str(bomb)!r})
    outcome = 'loaded'
except UnsafeFileError as exc:
    outcome = str(exc)
print(json.dumps({{'growth': hwm() - before, 'outcome': outcome}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "compressed" in result["outcome"]
    assert result["growth"] < 100 << 20


def test_declared_total_beyond_the_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    assert check_declared_size(path) >= 4000
    with pytest.raises(UnsafeFileError, match="more than the cap of 1000 bytes"):
        check_declared_size(path, cap_bytes=1000)


def test_legacy_file_declaring_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(SMALL_NUMEL)}, path, _use_new_zipfile_serialization=False)
    assert check_declared_size(path) == SMALL_NUMEL * 4
    data = path.read_bytes()
    small = SMALL_NUMEL.to_bytes(4, "little")
    index = data.index(small)  # the first is the storage's numel in the persistent id
    path.write_bytes(data[:index] + BOMB_NUMEL.to_bytes(4, "little") + data[index + 4 :])
    with pytest.raises(UnsafeFileError, match="declares 1073741824 bytes of tensors but the file holds"):
        load_checkpoint(path)


def test_cap_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(100)}, path)
    monkeypatch.setenv("TIMBRE_MAX_CHECKPOINT_BYTES", "64")
    with pytest.raises(UnsafeFileError, match="TIMBRE_MAX_CHECKPOINT_BYTES"):
        load_checkpoint(path)
    monkeypatch.delenv("TIMBRE_MAX_CHECKPOINT_BYTES")
    assert load_checkpoint(path)["w"].shape == (100,)


def test_index_declaring_more_vectors_than_it_holds_is_refused(tmp_path: Path) -> None:
    import faiss
    import numpy as np

    from infer.retrieval import load_index

    index = faiss.IndexFlatL2(8)
    index.add(np.zeros((10, 8), dtype=np.float32))
    data = bytearray(faiss.serialize_index(index).tobytes())
    good = tmp_path / "added_good.index"
    good.write_bytes(bytes(data))
    assert load_index(good).vectors.shape == (10, 8)
    data[8:16] = (1 << 40).to_bytes(8, "little")  # ntotal: a trillion vectors
    bomb = tmp_path / "added_bomb.index"
    bomb.write_bytes(bytes(data))
    with pytest.raises(UnsafeFileError, match="declares 1099511627776 vectors of dimension 8"):
        load_index(bomb)
