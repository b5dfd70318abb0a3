"""Models from a URL, against a local HTTP server: ok, interrupted + resumed, too large, not a zip,
a ``../`` member, offline (a closed port, and a name that cannot resolve: ``.invalid``; an
unroutable address is no test where a transparent proxy answers for every host, as on CI here)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
import zipfile

import pytest

from infer.errors import AssetError, UnsafeFileError
from infer.library import ModelImportError
from infer.remote import import_model_source
from tests.fakes import tiny_synth_config, write_voice_model


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut_after: dict[str, int]  # path -> bytes sent before the first answer breaks off
    requests: list[tuple[str, str | None]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.server.cut_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[start:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-body
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut_after, httpd.requests = {}, {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("zip")
    pth = write_voice_model(root / "alice.pth", tiny_synth_config("v2", 40000, use_f0=True), name="alice")
    archive = root / "alice.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(pth, "alice/alice.pth")  # Applio's layout: one folder
    return archive.read_bytes()


def test_a_zip_from_a_url_is_imported_like_a_local_one(server, model_zip, tmp_path):
    server.files["/models/alice.zip"] = model_zip
    seen: list[float] = []
    name = import_model_source(
        _url(server, "/models/alice.zip"), tmp_path / "models", download_dir=tmp_path / "dl",
        progress=lambda f, _s: seen.append(f),
    )  # fmt: skip
    assert name == "alice"
    assert (tmp_path / "models" / "alice" / "alice.pth").is_file()
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    assert not list((tmp_path / "dl").iterdir())  # the download is not kept


def test_a_pth_url_with_its_index_url(server, tmp_path):
    pth = write_voice_model(tmp_path / "bob.pth", tiny_synth_config("v2", 40000, use_f0=True), name="bob")
    server.files["/bob.pth"] = pth.read_bytes()
    name = import_model_source(_url(server, "/bob.pth"), tmp_path / "models", download_dir=tmp_path / "dl")
    assert name == "bob" and (tmp_path / "models" / "bob" / "bob.pth").is_file()


def test_an_interrupted_download_resumes_with_a_range_request(server, model_zip, tmp_path):
    server.files["/alice.zip"] = model_zip
    server.cut_after["/alice.zip"] = len(model_zip) // 3
    name = import_model_source(_url(server, "/alice.zip"), tmp_path / "models", download_dir=tmp_path / "dl")
    assert name == "alice"
    ranges = [r for p, r in server.requests if p == "/alice.zip"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(model_zip) // 3}-"
    assert (tmp_path / "models" / "alice" / "alice.pth").read_bytes()[:2] == b"PK"


def test_a_download_that_keeps_breaking_leaves_a_part_for_the_next_try(server, model_zip, tmp_path):
    server.files["/alice.zip"] = model_zip
    server.cut_after["/alice.zip"] = 1000
    url = _url(server, "/alice.zip")
    import infer.assets.download as download

    original = download.download_url

    def no_resume(*args, **kwargs):
        return original(*args, **{**kwargs, "max_resumes": 0})

    import infer.remote as remote

    remote_download, remote.download_url = remote.download_url, no_resume
    try:
        with pytest.raises(AssetError, match=r"broke off.*again to resume"):
            import_model_source(url, tmp_path / "models", download_dir=tmp_path / "dl")
    finally:
        remote.download_url = remote_download
    (part,) = (tmp_path / "dl").glob("*.part")
    assert part.stat().st_size == 1000
    assert import_model_source(url, tmp_path / "models", download_dir=tmp_path / "dl") == "alice"
    assert server.requests[-1] == ("/alice.zip", "bytes=1000-")


def test_too_large_is_refused_before_and_while_downloading(server, model_zip, tmp_path):
    server.files["/alice.zip"] = model_zip
    with pytest.raises(AssetError, match="over the size limit"):
        import_model_source(
            _url(server, "/alice.zip"), tmp_path / "models", download_dir=tmp_path / "dl", max_bytes=1000
        )
    assert not list((tmp_path / "dl").glob("*"))  # nothing half-written stays
    assert not (tmp_path / "models" / "alice").exists()


def test_not_a_zip(server, tmp_path):
    server.files["/page.zip"] = b"<html>Sign in to download</html>"
    with pytest.raises(ModelImportError, match=r"neither a model zip nor a \.pth"):
        import_model_source(_url(server, "/page.zip"), tmp_path / "models", download_dir=tmp_path / "dl")


def test_a_member_escaping_the_folder_is_refused(server, model_zip, tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.pth", b"x" * 10)
        z.writestr("alice/alice.pth", b"y" * 10)
    server.files["/evil.zip"] = evil.read_bytes()
    with pytest.raises(UnsafeFileError):
        import_model_source(_url(server, "/evil.zip"), tmp_path / "models", download_dir=tmp_path / "dl")
    assert not (tmp_path / "escape.pth").exists() and not (tmp_path / "models" / "escape.pth").exists()


def test_http_404_is_one_line(server, tmp_path):
    with pytest.raises(AssetError, match="HTTP 404"):
        import_model_source(_url(server, "/nothing.zip"), tmp_path / "models", download_dir=tmp_path / "dl")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host", ["closed-port", "timbre-offline.invalid"])
def test_offline_fails_fast_with_a_clear_line(tmp_path, monkeypatch, host):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # a proxy would answer for the unroutable host
    url = f"http://127.0.0.1:{_closed_port()}/m.zip" if host == "closed-port" else f"http://{host}/m.zip"
    start = time.monotonic()
    with pytest.raises(AssetError, match="could not reach") as info:
        import_model_source(url, tmp_path / "models", download_dir=tmp_path / "dl", connect_timeout_s=1.0)
    assert time.monotonic() - start < 5.0
    assert "\n" not in str(info.value)
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
