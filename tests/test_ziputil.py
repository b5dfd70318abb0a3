"""Tests for infer.ziputil: malicious archives are refused and leave nothing behind."""

from __future__ import annotations

import stat
import struct
import time
import zipfile
from pathlib import Path

import pytest

from infer.errors import UnsafeFileError
from infer.ziputil import safe_extract_zip

LIMITS = {"max_total_bytes": 10_000_000, "max_files": 100, "max_member_bytes": 5_000_000}


def _make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_refused(tmp_path: Path, zip_path: Path, match: str, **limits: int) -> None:
    before = _tree(tmp_path)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeFileError, match=match):
        safe_extract_zip(zip_path, dest, **{**LIMITS, **limits})
    assert _tree(tmp_path) == before, "an error must leave nothing behind"
    assert not dest.exists()


def test_extracts_allowed_members_and_reports_skipped(tmp_path: Path) -> None:
    zip_path = _make_zip(
        tmp_path / "data.zip",
        [
            ("a.wav", b"RIFF-one"),
            ("sub/dir/b.FLAC", b"flac-two"),
            ("win\\c.mp3", b"mp3-three"),
            ("notes.txt", b"hello"),
            ("__MACOSX/._a.wav", b"junk"),
            ("sub/", b""),
        ],
    )
    result = safe_extract_zip(
        zip_path, tmp_path / "out", **LIMITS, allowed_suffixes=frozenset({".wav", "flac", ".MP3"})
    )
    out = tmp_path / "out"
    assert [p.relative_to(out).as_posix() for p in result.extracted] == [
        "a.wav",
        "sub/dir/b.FLAC",
        "win/c.mp3",
    ]
    assert (out / "a.wav").read_bytes() == b"RIFF-one"
    assert (out / "sub" / "dir" / "b.FLAC").read_bytes() == b"flac-two"
    assert (out / "win" / "c.mp3").read_bytes() == b"mp3-three"
    assert result.total_bytes == len(b"RIFF-one") + len(b"flac-two") + len(b"mp3-three")
    reasons = {s.name: s.reason for s in result.skipped}
    assert set(reasons) == {"notes.txt", "__MACOSX/._a.wav"}
    assert "'.txt'" in reasons["notes.txt"]
    assert reasons["__MACOSX/._a.wav"] == "macOS metadata"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zip", "out"], "staging folder left behind"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.wav", r"'\.\./evil\.wav'.*'\.\.'"),
        ("good/../../evil.wav", r"'\.\.'"),
        ("..\\evil.wav", r"'\.\.'"),
        ("/tmp/evil.wav", "absolute path"),
        ("\\\\server\\share\\evil.wav", "absolute path"),
        ("C:\\evil.wav", "Windows drive"),
        ("c:evil.wav", "Windows drive"),
        ("./.", "names no file"),
    ],
)
def test_refuses_escaping_names(tmp_path: Path, name: str, match: str) -> None:
    zip_path = _make_zip(tmp_path / "evil.zip", [("ok.wav", b"fine"), (name, b"pwned")])
    _assert_refused(tmp_path, zip_path, match)
    assert not (tmp_path.parent / "evil.wav").exists()
    assert not Path("/tmp/evil.wav").exists()


def test_refuses_escaping_names_even_when_they_would_be_skipped(tmp_path: Path) -> None:
    zip_path = _make_zip(tmp_path / "evil.zip", [("../evil.txt", b"pwned")])
    with pytest.raises(UnsafeFileError, match=r"'\.\.'"):
        safe_extract_zip(zip_path, tmp_path / "out", **LIMITS, allowed_suffixes=frozenset({".wav"}))


def test_refuses_symlink_member(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("voice.wav")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    zip_path = _make_zip(tmp_path / "link.zip", [("a.wav", b"x"), (link, b"/etc/passwd")])
    _assert_refused(tmp_path, zip_path, r"'voice\.wav'.*symbolic link")


def test_refuses_device_member(tmp_path: Path) -> None:
    fifo = zipfile.ZipInfo("pipe.wav")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    zip_path = _make_zip(tmp_path / "fifo.zip", [(fifo, b"")])
    _assert_refused(tmp_path, zip_path, r"'pipe\.wav'.*not a regular file")


def test_refuses_oversized_member(tmp_path: Path) -> None:
    zip_path = _make_zip(tmp_path / "big.zip", [("small.wav", b"x" * 10), ("big.wav", b"x" * 2000)])
    _assert_refused(tmp_path, zip_path, r"'big\.wav' in big\.zip declares 2000 bytes", max_member_bytes=1000)


def test_refuses_total_over_limit(tmp_path: Path) -> None:
    members = [(f"{i}.wav", b"y" * 400) for i in range(5)]
    zip_path = _make_zip(tmp_path / "many.zip", members)
    _assert_refused(tmp_path, zip_path, r"more than 1500 bytes.*'3\.wav'", max_total_bytes=1500)


def test_refuses_too_many_files(tmp_path: Path) -> None:
    members = [(f"{i}.wav", b"z") for i in range(12)]
    zip_path = _make_zip(tmp_path / "lots.zip", members)
    _assert_refused(tmp_path, zip_path, "holds 12 files, more than the limit of 10", max_files=10)


def test_refuses_duplicate_names_after_normalisation(tmp_path: Path) -> None:
    zip_path = _make_zip(tmp_path / "dup.zip", [("Dir/Take.wav", b"1"), ("dir\\take.WAV", b"2")])
    _assert_refused(tmp_path, zip_path, "same path as 'Dir/Take.wav'")


def test_refuses_file_that_is_also_a_folder(tmp_path: Path) -> None:
    zip_path = _make_zip(tmp_path / "clash.zip", [("a.wav", b"1"), ("a.wav/b.wav", b"2")])
    _assert_refused(tmp_path, zip_path, "both a file and a folder")


def _patch_declared_size(zip_path: Path, name: bytes, new_size: int) -> None:
    """Rewrite the uncompressed size of ``name`` in its local header and the central directory."""
    data = bytearray(zip_path.read_bytes())
    patched = 0
    for signature, size_offset, name_len_offset, name_offset in (
        (b"PK\x03\x04", 22, 26, 30),
        (b"PK\x01\x02", 24, 28, 46),
    ):
        pos = data.find(signature)
        while pos >= 0:
            (name_len,) = struct.unpack_from("<H", data, pos + name_len_offset)
            if bytes(data[pos + name_offset : pos + name_offset + name_len]) == name:
                struct.pack_into("<I", data, pos + size_offset, new_size)
                patched += 1
            pos = data.find(signature, pos + 4)
    assert patched == 2
    zip_path.write_bytes(bytes(data))


def test_refuses_bomb_that_understates_its_size(tmp_path: Path) -> None:
    zip_path = _make_zip(tmp_path / "bomb.zip", [("ok.wav", b"fine"), ("bomb.wav", bytes(3_000_000))])
    assert zip_path.stat().st_size < 20_000
    _patch_declared_size(zip_path, b"bomb.wav", 1000)
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.getinfo("bomb.wav").file_size == 1000
    _assert_refused(tmp_path, zip_path, r"'bomb\.wav' in bomb\.zip .*(lies about its size|zip bomb)")


def test_refuses_member_that_is_shorter_than_declared(tmp_path: Path) -> None:
    zip_path = _make_zip(tmp_path / "short.zip", [("short.wav", b"q" * 500)])
    _patch_declared_size(zip_path, b"short.wav", 800)
    _assert_refused(tmp_path, zip_path, r"'short\.wav'")


def test_refuses_non_zip_and_non_empty_target(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"this is not a zip archive")
    with pytest.raises(UnsafeFileError, match="not a readable zip archive"):
        safe_extract_zip(fake, tmp_path / "out", **LIMITS)
    good = _make_zip(tmp_path / "good.zip", [("a.wav", b"1")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeFileError, match="not an empty folder"):
        safe_extract_zip(good, busy, **LIMITS)
    assert _tree(busy) == {"keep.txt"}
    empty = tmp_path / "empty"
    empty.mkdir()
    result = safe_extract_zip(good, empty, **LIMITS)
    assert result.extracted == (empty / "a.wav",)
    assert (empty / "a.wav").read_bytes() == b"1"


def test_member_timestamp_becomes_mtime(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("take.wav", date_time=(2021, 3, 4, 5, 6, 8))
    zip_path = _make_zip(tmp_path / "t.zip", [(info, b"abc")])
    first = safe_extract_zip(zip_path, tmp_path / "one", **LIMITS).extracted[0]
    second = safe_extract_zip(zip_path, tmp_path / "two", **LIMITS).extracted[0]
    assert first.stat().st_mtime == second.stat().st_mtime
    assert time.localtime(first.stat().st_mtime)[:6] == (2021, 3, 4, 5, 6, 8)
