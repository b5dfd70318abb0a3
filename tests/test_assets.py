"""Tests for infer.assets: registry, status, and the resumable downloader against a local server."""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from infer.__main__ import add_assets_parser, run_assets_command
from infer.assets import (
    DEFAULT_BASE_URL,
    DEFAULT_REGISTRY,
    MIRROR_ENV_VAR,
    PRETRAINED_DIR_ENV_VAR,
    Asset,
    asset_status,
    default_pretrained_dir,
    download_asset,
    find_asset,
    make_registry,
    pretrained_pair,
    pretrained_path,
    resolve_asset,
    resolve_base_url,
)
from infer.assets import download as assets_download
from infer.errors import AssetError, Cancelled

_RNG = np.random.default_rng(1234)
BIG = _RNG.integers(0, 256, size=200_000, dtype=np.uint8).tobytes()
SMALL = _RNG.integers(0, 256, size=4_096, dtype=np.uint8).tobytes()
NOHASH = _RNG.integers(0, 256, size=3_000, dtype=np.uint8).tobytes()
NOSIZE = _RNG.integers(0, 256, size=5_000, dtype=np.uint8).tobytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TINY_REGISTRY = make_registry(
    [
        Asset("big.bin", "files/big.bin", len(BIG), _sha(BIG), "big test file", "content"),
        Asset("sub/small.bin", "files/small.bin", len(SMALL), _sha(SMALL), "small test file", "pitch"),
        Asset("nohash.bin", "files/nohash.bin", len(NOHASH), None, "file without a hash", "pretrained_g"),
        Asset("nosize.bin", "files/nosize.bin", None, _sha(NOSIZE), "file without a size", "pretrained_d"),
    ]
)
PAYLOADS = {
    "/files/big.bin": BIG,
    "/files/small.bin": SMALL,
    "/files/nohash.bin": NOHASH,
    "/files/nosize.bin": NOSIZE,
}


@dataclass
class ServerState:
    """What the handler serves and what it saw."""

    mode: str = "normal"  # normal | ignore_range | wrong
    cut_after_bytes: int | None = None
    cuts_left: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RangeHandler(BaseHTTPRequestHandler):
    """Serves PAYLOADS with Range support, a redirect under /redirect/, and fault modes."""

    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        with self.state.lock:
            self.state.statuses.append(status)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        cut = None
        with self.state.lock:
            if self.state.cuts_left > 0 and status in (200, 206):
                self.state.cuts_left -= 1
                cut = self.state.cut_after_bytes
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        with self.state.lock:
            self.state.requests.append((self.path, range_header))
        if self.path.startswith("/redirect/"):
            self._send(302, b"", {"Location": self.path[len("/redirect") :]})
            return
        data = PAYLOADS.get(self.path)
        if data is None:
            self._send(404, b"not here", {})
            return
        if self.state.mode == "wrong":
            data = bytes(b ^ 0xFF for b in data)
        if range_header and self.state.mode != "ignore_range":
            first = int(range_header.removeprefix("bytes=").rstrip("-"))
            if first >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            headers = {"Content-Range": f"bytes {first}-{len(data) - 1}/{len(data)}"}
            self._send(206, data[first:], headers)
            return
        self._send(200, data, {})


@dataclass
class LocalHub:
    url: str
    state: ServerState


@pytest.fixture(autouse=True)
def _no_proxy_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(MIRROR_ENV_VAR, raising=False)
    monkeypatch.delenv(PRETRAINED_DIR_ENV_VAR, raising=False)


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    state = ServerState()
    handler = type("BoundRangeHandler", (RangeHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield LocalHub(f"http://127.0.0.1:{server.server_address[1]}", state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _download(name: str, root: Path, hub: LocalHub, **kwargs: object) -> Path:
    return download_asset(name, root, base_url=hub.url, registry=TINY_REGISTRY, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# registry and paths


def test_default_registry_covers_hub_files_with_layout() -> None:
    names = set(DEFAULT_REGISTRY)
    assert len(names) == 27  # 26 hub files and the Mel-Band RoFormer separator
    assert {"hubert_base.pt", "rmvpe.pt"} <= names
    for folder, hub_folder in (("pretrained_v1", "pretrained"), ("pretrained_v2", "pretrained_v2")):
        for prefix in ("f0", ""):
            for role in ("G", "D"):
                for rate in (32, 40, 48):
                    asset = DEFAULT_REGISTRY[f"{folder}/{prefix}{role}{rate}k.pth"]
                    assert asset.url_path == f"{hub_folder}/{prefix}{role}{rate}k.pth"
                    assert asset.kind == ("pretrained_g" if role == "G" else "pretrained_d")
    # Every entry carries a published sha256; sizes only where published.
    assert all(asset.sha256 is not None and len(asset.sha256) == 64 for asset in DEFAULT_REGISTRY.values())
    assert DEFAULT_REGISTRY["hubert_base.pt"].size_bytes == 189_507_909
    assert (
        DEFAULT_REGISTRY["rmvpe.pt"].sha256
        == "6d62215f4306e3ca278246188607209f09af3dc77ed4232efdd069798c4ec193"
    )
    assert DEFAULT_REGISTRY["pretrained_v2/f0G40k.pth"].size_bytes == 73_106_273
    assert DEFAULT_REGISTRY["pretrained_v2/G40k.pth"].size_bytes is None
    assert DEFAULT_REGISTRY["hubert_base.pt"].url(DEFAULT_BASE_URL) == (
        "https://huggingface.co/lj1995/VoiceConversionWebUI/resolve/main/hubert_base.pt"
    )


def test_pretrained_path_layout_and_lookup(tmp_path: Path) -> None:
    assert pretrained_path("hubert_base.pt", tmp_path) == tmp_path / "hubert_base.pt"
    assert pretrained_path("pretrained_v2/f0G40k.pth", tmp_path) == tmp_path / "pretrained_v2" / "f0G40k.pth"
    assert pretrained_path("pretrained_v1/D32k.pth", tmp_path) == tmp_path / "pretrained_v1" / "D32k.pth"
    assert find_asset("rmvpe.pt").kind == "pitch"
    with pytest.raises(AssetError, match=r"ambiguous.*pretrained_v1/f0G40k\.pth"):
        find_asset("f0G40k.pth")
    with pytest.raises(AssetError, match="unknown asset"):
        find_asset("nothing.pt")
    assert pretrained_pair("v2", 40_000, use_f0=True) == (
        "pretrained_v2/f0G40k.pth",
        "pretrained_v2/f0D40k.pth",
    )
    assert pretrained_pair("v1", 32_000, use_f0=False) == ("pretrained_v1/G32k.pth", "pretrained_v1/D32k.pth")
    with pytest.raises(AssetError, match="sample rate"):
        pretrained_pair("v2", 44_100, use_f0=True)


def test_asset_validation_and_duplicates() -> None:
    with pytest.raises(AssetError, match="relative path"):
        Asset("../evil.pt", "evil.pt", None, None, "x", "content")
    with pytest.raises(AssetError, match="sha256"):
        Asset("a.pt", "a.pt", None, "ABC", "x", "content")
    with pytest.raises(AssetError, match="kind"):
        Asset("a.pt", "a.pt", None, None, "x", "vocoder")
    one = Asset("a.pt", "a.pt", 1, None, "x", "content")
    with pytest.raises(AssetError, match="twice"):
        make_registry([one, one])


def test_default_pretrained_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    default = default_pretrained_dir()
    assert default.name == "pretrained"
    assert (default.parent / "infer" / "assets" / "registry.py").is_file()
    monkeypatch.setenv(PRETRAINED_DIR_ENV_VAR, str(tmp_path / "elsewhere"))
    assert default_pretrained_dir() == tmp_path / "elsewhere"
    assert pretrained_path("rmvpe.pt") == tmp_path / "elsewhere" / "rmvpe.pt"


def test_base_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_url() == DEFAULT_BASE_URL
    monkeypatch.setenv(MIRROR_ENV_VAR, "https://hf-mirror.com/lj1995/VoiceConversionWebUI/resolve/main/")
    assert resolve_base_url() == "https://hf-mirror.com/lj1995/VoiceConversionWebUI/resolve/main"
    assert resolve_base_url("http://example.test/x") == "http://example.test/x"
    monkeypatch.setenv(MIRROR_ENV_VAR, "ftp://nope")
    with pytest.raises(AssetError, match=MIRROR_ENV_VAR):
        resolve_base_url()


# ---------------------------------------------------------------------------------------------
# status and resolve


def test_status_reports_each_state(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(BIG)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "small.bin.part").write_bytes(SMALL[:1000])
    (tmp_path / "nohash.bin").write_bytes(NOHASH)
    (tmp_path / "nosize.bin").write_bytes(b"short")
    by_name = {status.name: status for status in asset_status(tmp_path, TINY_REGISTRY)}
    assert by_name["big.bin"].state == "present"
    assert by_name["big.bin"].size_bytes == len(BIG)
    assert by_name["big.bin"].expected_size_bytes == len(BIG)
    assert by_name["sub/small.bin"].state == "partial"
    assert by_name["sub/small.bin"].size_bytes == 1000
    assert by_name["sub/small.bin"].path == tmp_path / "sub" / "small.bin"
    assert by_name["nohash.bin"].state == "unverified"
    # No size known, hash known: judged present by size; a re-hash catches it.
    assert by_name["nosize.bin"].state == "present"
    verified = {s.name: s.state for s in asset_status(tmp_path, TINY_REGISTRY, verify_checksum=True)}
    assert verified["nosize.bin"] == "bad_checksum"
    assert verified["big.bin"] == "present"
    (tmp_path / "big.bin").write_bytes(BIG[:10])
    (tmp_path / "sub" / "small.bin.part").unlink()
    by_name = {status.name: status for status in asset_status(tmp_path, TINY_REGISTRY)}
    assert by_name["big.bin"].state == "bad_size"
    assert by_name["sub/small.bin"].state == "missing"
    assert by_name["sub/small.bin"].size_bytes is None


def test_resolve_asset_messages(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as missing:
        resolve_asset("hubert_base.pt", tmp_path)
    message = str(missing.value)
    assert "python -m infer assets download hubert_base.pt" in message
    assert str(tmp_path / "hubert_base.pt") in message
    assert MIRROR_ENV_VAR in message
    (tmp_path / "big.bin").write_bytes(BIG[:5])
    with pytest.raises(AssetError, match="5 bytes but 200000"):
        resolve_asset("big.bin", tmp_path, TINY_REGISTRY)
    (tmp_path / "big.bin").write_bytes(BIG)
    assert resolve_asset("big.bin", tmp_path, TINY_REGISTRY) == tmp_path / "big.bin"


# ---------------------------------------------------------------------------------------------
# downloads


def test_full_download_verified_and_placed(tmp_path: Path, hub: LocalHub) -> None:
    seen: list[tuple[float, str]] = []
    path = _download("sub/small.bin", tmp_path, hub, progress=lambda f, m: seen.append((f, m)))
    assert path == tmp_path / "sub" / "small.bin"
    assert path.read_bytes() == SMALL
    assert not (tmp_path / "sub" / "small.bin.part").exists()
    assert hub.state.requests == [("/files/small.bin", None)]
    assert seen[-1] == (1.0, "sub/small.bin: done")
    assert any(message == "sub/small.bin: 0.0 MB / 0.0 MB" for _, message in seen)
    # Already present: no new request.
    assert _download("sub/small.bin", tmp_path, hub) == path
    assert len(hub.state.requests) == 1


def test_interrupted_then_resumed_with_range(tmp_path: Path, hub: LocalHub) -> None:
    hub.state.cut_after_bytes = 70_000
    hub.state.cuts_left = 1
    with pytest.raises(AssetError, match="broke off") as broke:
        _download("big.bin", tmp_path, hub, max_resumes=0)
    assert "python -m infer assets download big.bin" in str(broke.value)
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == 70_000
    assert not (tmp_path / "big.bin").exists()
    path = _download("big.bin", tmp_path, hub)
    assert hub.state.requests[-1] == ("/files/big.bin", "bytes=70000-")
    assert hub.state.statuses[-1] == 206
    assert _sha(path.read_bytes()) == _sha(BIG)
    assert not part.exists()


def test_broken_transfer_resumes_within_one_call_through_redirect(tmp_path: Path, hub: LocalHub) -> None:
    hub.state.cut_after_bytes = 50_000
    hub.state.cuts_left = 1
    path = download_asset("big.bin", tmp_path, base_url=f"{hub.url}/redirect", registry=TINY_REGISTRY)
    assert path.read_bytes() == BIG
    assert hub.state.requests == [
        ("/redirect/files/big.bin", None),
        ("/files/big.bin", None),
        ("/redirect/files/big.bin", "bytes=50000-"),
        ("/files/big.bin", "bytes=50000-"),
    ]


def test_wrong_checksum_deletes_and_names_both_hashes(tmp_path: Path, hub: LocalHub) -> None:
    hub.state.mode = "wrong"
    with pytest.raises(AssetError) as mismatch:
        _download("big.bin", tmp_path, hub)
    message = str(mismatch.value)
    assert _sha(BIG) in message
    assert _sha(bytes(b ^ 0xFF for b in BIG)) in message
    assert f"{hub.url}/files/big.bin" in message
    assert not (tmp_path / "big.bin").exists()
    assert not (tmp_path / "big.bin.part").exists()


def test_wrong_size_without_hash_is_rejected(tmp_path: Path, hub: LocalHub) -> None:
    registry = make_registry([Asset("nohash.bin", "files/nohash.bin", 2_999, None, "x", "content")])
    with pytest.raises(AssetError, match=r"serves 3000 bytes but nohash\.bin has 2999"):
        download_asset("nohash.bin", tmp_path, base_url=hub.url, registry=registry)
    assert not (tmp_path / "nohash.bin").exists()
    # With the right size the unhashed file is accepted and reported unverified.
    _download("nohash.bin", tmp_path, hub)
    assert {s.name: s.state for s in asset_status(tmp_path, TINY_REGISTRY)}["nohash.bin"] == "unverified"


def test_offline_closed_port_fails_fast(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    start = time.monotonic()
    with pytest.raises(AssetError) as offline:
        download_asset("big.bin", tmp_path, base_url=f"http://127.0.0.1:{port}", registry=TINY_REGISTRY)
    elapsed_s = time.monotonic() - start
    assert elapsed_s < 3.0
    message = str(offline.value)
    assert "could not reach 127.0.0.1" in message
    assert "connection refused" in message
    assert MIRROR_ENV_VAR in message
    assert str(tmp_path / "big.bin") in message
    assert list(tmp_path.iterdir()) == []  # no empty .part left behind


def test_silent_server_hits_read_timeout(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # the kernel completes the handshake; nobody ever answers
    port = listener.getsockname()[1]
    try:
        start = time.monotonic()
        with pytest.raises(AssetError, match=r"could not reach 127\.0\.0\.1 \(timed out"):
            download_asset(
                "big.bin",
                tmp_path,
                base_url=f"http://127.0.0.1:{port}",
                registry=TINY_REGISTRY,
                connect_timeout_s=1.0,
                read_timeout_s=0.4,
            )
        elapsed_s = time.monotonic() - start
    finally:
        listener.close()
    assert 0.3 < elapsed_s < 3.0


def test_slow_name_lookup_is_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def stuck_resolver(*args: object, **kwargs: object) -> list[object]:
        time.sleep(1.5)
        raise socket.gaierror(socket.EAI_AGAIN, "resolver gave up")

    monkeypatch.setattr(assets_download.socket, "getaddrinfo", stuck_resolver)
    start = time.monotonic()
    with pytest.raises(AssetError, match=r"could not reach hub\.invalid \(timed out: name lookup"):
        download_asset(
            "big.bin", tmp_path, base_url="http://hub.invalid", registry=TINY_REGISTRY, connect_timeout_s=0.3
        )
    assert time.monotonic() - start < 1.2


def test_concurrent_download_of_same_file_is_refused(tmp_path: Path, hub: LocalHub) -> None:
    fcntl = pytest.importorskip("fcntl")
    part = tmp_path / "big.bin.part"
    part.write_bytes(BIG[:100])
    with open(part, "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(AssetError, match=r"another download of big\.bin"):
            _download("big.bin", tmp_path, hub)
    assert hub.state.requests == []
    assert part.read_bytes() == BIG[:100]


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, hub: LocalHub) -> None:
    hub.state.mode = "ignore_range"
    (tmp_path / "big.bin.part").write_bytes(b"\x00" * 1000)  # stale bytes that must be thrown away
    path = _download("big.bin", tmp_path, hub)
    assert hub.state.requests == [("/files/big.bin", "bytes=1000-")]
    assert hub.state.statuses == [200]
    assert path.read_bytes() == BIG
    assert not (tmp_path / "big.bin.part").exists()


@pytest.mark.parametrize(
    ("part_bytes", "expected_requests"),
    [
        (NOSIZE, [("/files/nosize.bin", f"bytes={len(NOSIZE)}-")]),
        (
            NOSIZE + b"extra",
            [("/files/nosize.bin", f"bytes={len(NOSIZE) + 5}-"), ("/files/nosize.bin", None)],
        ),
    ],
    ids=["part_complete", "part_too_long"],
)
def test_range_not_satisfiable(
    tmp_path: Path, hub: LocalHub, part_bytes: bytes, expected_requests: list[tuple[str, str | None]]
) -> None:
    (tmp_path / "nosize.bin.part").write_bytes(part_bytes)
    path = _download("nosize.bin", tmp_path, hub)
    assert hub.state.requests == expected_requests
    assert hub.state.statuses[0] == 416
    assert path.read_bytes() == NOSIZE


def test_complete_part_is_verified_without_network(tmp_path: Path) -> None:
    (tmp_path / "big.bin.part").write_bytes(BIG)
    path = download_asset("big.bin", tmp_path, base_url="http://127.0.0.1:9", registry=TINY_REGISTRY)
    assert path.read_bytes() == BIG


def test_cancel_keeps_part_and_resume_finishes(tmp_path: Path, hub: LocalHub) -> None:
    calls = {"n": 0}

    def stop_after_two_chunks() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled, match=r"big\.bin\.part"):
        _download("big.bin", tmp_path, hub, should_stop=stop_after_two_chunks)
    part = tmp_path / "big.bin.part"
    kept = part.stat().st_size
    assert kept == 2 * assets_download.DOWNLOAD_CHUNK_BYTES
    assert part.read_bytes() == BIG[:kept]
    assert not (tmp_path / "big.bin").exists()
    path = _download("big.bin", tmp_path, hub)
    assert hub.state.requests[-1] == ("/files/big.bin", f"bytes={kept}-")
    assert path.read_bytes() == BIG


def test_mirror_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub: LocalHub) -> None:
    monkeypatch.setenv(MIRROR_ENV_VAR, hub.url + "/")
    path = download_asset("sub/small.bin", tmp_path, registry=TINY_REGISTRY)
    assert path.read_bytes() == SMALL
    assert hub.state.requests == [("/files/small.bin", None)]


def test_http_404_names_url(tmp_path: Path, hub: LocalHub) -> None:
    registry = make_registry([Asset("gone.bin", "files/gone.bin", None, None, "x", "content")])
    with pytest.raises(AssetError, match="HTTP 404"):
        download_asset("gone.bin", tmp_path, base_url=hub.url, registry=registry)
    assert not (tmp_path / "gone.bin").exists()


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infer")
    add_assets_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_status_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rmvpe.pt.part").write_bytes(b"x" * 10)
    args = _parser().parse_args(["assets", "status", "--dir", str(tmp_path)])
    assert run_assets_command(args) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:-1]}
    assert len(lines) == 27
    assert lines["hubert_base.pt"] == "missing"
    assert lines["rmvpe.pt"] == "partial"
    assert "0 of 27 present" in out
    assert str(tmp_path) in out


def test_cli_download_and_errors(tmp_path: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(
        ["assets", "download", "small.bin", "big.bin", "--mirror", hub.url, "--dir", str(tmp_path)]
    )
    assert run_assets_command(args, registry=TINY_REGISTRY) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "sub" / "small.bin").read_bytes() == SMALL
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert f"big.bin: {tmp_path / 'big.bin'}" in captured.out
    assert "100%" in captured.err  # tqdm bar

    args = parser.parse_args(["assets", "download", "nope.bin", "--dir", str(tmp_path)])
    assert run_assets_command(args, registry=TINY_REGISTRY) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown asset 'nope.bin'")
    assert len(err.splitlines()) == 1

    args = parser.parse_args(["assets", "download", "--dir", str(tmp_path)])
    assert run_assets_command(args, registry=TINY_REGISTRY) == 1
    assert "--all" in capsys.readouterr().err

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    os.remove(tmp_path / "big.bin")
    args = parser.parse_args(
        ["assets", "download", "--all", "--mirror", f"http://127.0.0.1:{port}", "--dir", str(tmp_path)]
    )
    assert run_assets_command(args, registry=TINY_REGISTRY) == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1
    assert "could not reach 127.0.0.1" in err_lines[0]
