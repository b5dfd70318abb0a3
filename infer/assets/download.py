"""A checksummed, resumable downloader for registry assets (standard library only).

Downloads stream into ``<final>.part`` next to the final file, resume with an HTTP ``Range``
request, are checked against the registry's sha256 (or size) and only then are moved into
place with ``os.replace``. Connecting (name lookup included) has a deadline and every read a
timeout, so an offline machine fails fast with a readable message.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from infer.assets.registry import (
    DEFAULT_REGISTRY,
    DOWNLOAD_CHUNK_BYTES,
    EXAMPLE_MIRROR_URL,
    MIRROR_ENV_VAR,
    PROGRESS_INTERVAL_S,
    READBACK_CHUNK_BYTES,
    USER_AGENT,
    Asset,
    Registry,
    download_command,
    file_size,
    find_asset,
    format_megabytes,
    local_path,
    part_path,
    pretrained_root,
    resolve_base_url,
    status_of,
)
from infer.errors import AssetError, Cancelled
from infer.progress import ProgressFn, StopFn, report

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# HTTP plumbing: urllib with a connect deadline (name lookup included) and a per-read timeout.


def _getaddrinfo_within(host: str, port: int, timeout_s: float) -> list[Any]:
    """``socket.getaddrinfo`` bounded in time (the resolver itself has no timeout)."""
    found: list[Any] = []
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)

    worker = threading.Thread(target=lookup, name="timbre-dns", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"name lookup for {host} took longer than {timeout_s:g} s")
    if failed:
        raise failed[0]
    return found


def _connect_within(
    address: tuple[str, int], timeout: float, source_address: tuple[str, int] | None = None
) -> socket.socket:
    """Like ``socket.create_connection`` but with one deadline covering lookup and connect."""
    host, port = address
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    for family, socktype, proto, _, sockaddr in _getaddrinfo_within(host, port, timeout):
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            break
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(remaining_s)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        return sock
    raise last_error or TimeoutError(f"could not connect to {host} within {timeout:g} s")


class _TimeoutsMixin:
    """Connect under ``timeout`` (the connect limit), then switch the socket to the read limit."""

    def __init__(self, host: str, *, read_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)  # type: ignore[call-arg]
        self._read_timeout_s = read_timeout_s
        self._create_connection = _connect_within

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self._read_timeout_s)  # type: ignore[attr-defined]


class _HTTPConnection(_TimeoutsMixin, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_TimeoutsMixin, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout_s: float) -> None:
        super().__init__()
        self._read_timeout_s = read_timeout_s

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, read_timeout_s=self._read_timeout_s), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout_s: float) -> None:
        super().__init__(context=ssl.create_default_context())
        self._read_timeout_s = read_timeout_s

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_HTTPSConnection, read_timeout_s=self._read_timeout_s)
        return self.do_open(connection, req, context=self._context)  # type: ignore[attr-defined]


def _build_opener(read_timeout_s: float) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_HTTPHandler(read_timeout_s), _HTTPSHandler(read_timeout_s))


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``bytes a-b/total`` or ``bytes */total``; None where absent."""
    if not value:
        return None, None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes" or "/" not in spec:
        return None, None
    span, _, total_text = spec.partition("/")
    first_text = span.partition("-")[0]
    first = int(first_text) if first_text.isdigit() else None
    total = int(total_text) if total_text.isdigit() else None
    return first, total


def _int_header(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _describe_network_error(exc: BaseException) -> str:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        detail = str(reason)
        return "timed out" if detail in ("", "timed out") else f"timed out: {detail}"
    if isinstance(reason, socket.gaierror):
        return f"name lookup failed: {reason.strerror or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    text = str(reason)
    return text or type(reason).__name__


class TooLargeError(AssetError):
    """A download is over its size limit (announced by the server or received)."""


class _Interrupted(Exception):
    """A transfer broke off; ``made_progress`` says whether this attempt wrote any bytes."""

    def __init__(self, reason: str, *, made_progress: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.made_progress = made_progress


class _Download:
    """One asset's transfer into its ``.part`` file; the caller holds the open, locked file."""

    def __init__(
        self,
        asset: Asset,
        url: str,
        final: Path,
        stream: BinaryIO,
        *,
        opener: urllib.request.OpenerDirector,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self.asset = asset
        self.url = url
        self.final = final
        self.part = part_path(final)
        self.stream = stream
        self.opener = opener
        self.progress = progress
        self.should_stop = should_stop
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.fetched_bytes = 0
        self.total: int | None = asset.size_bytes
        self.max_bytes: int | None = None
        self._last_report_s = 0.0

    # -- bookkeeping ---------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def _cancel(self) -> Cancelled:
        self.stream.flush()
        return Cancelled(
            f"download of {self.asset.name} stopped on request; {format_megabytes(self.offset)} are kept in "
            f"{self.part} and the next download resumes from there"
        )

    def _report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report_s < PROGRESS_INTERVAL_S:
            return
        self._last_report_s = now
        if self.total:
            message = f"{self.asset.name}: {format_megabytes(self.offset)} / {format_megabytes(self.total)}"
            report(self.progress, self.offset / self.total, message)
        else:
            report(self.progress, 0.0, f"{self.asset.name}: {format_megabytes(self.offset)}")

    def read_back(self) -> None:
        """Hash what an earlier attempt left in the ``.part`` file, so the digest covers it."""
        self.stream.seek(0)
        while chunk := self.stream.read(READBACK_CHUNK_BYTES):
            if self._stop_requested():
                raise self._cancel()
            self.hasher.update(chunk)
            self.offset += len(chunk)
        if self.offset:
            log.info("resuming %s from byte %d (%s)", self.asset.name, self.offset, self.part)

    def restart(self, why: str) -> None:
        """Throw away the ``.part`` contents and start from byte zero."""
        log.warning("restarting download of %s from zero: %s", self.asset.name, why)
        self.stream.truncate(0)
        self.stream.seek(0)
        self.hasher = hashlib.sha256()
        self.offset = 0

    def is_complete_locally(self) -> bool:
        return self.asset.size_bytes is not None and self.offset == self.asset.size_bytes

    def is_verified(self) -> bool:
        if self.asset.sha256 is not None:
            return self.hasher.hexdigest() == self.asset.sha256
        return self.asset.size_bytes is None or self.offset == self.asset.size_bytes

    # -- network -------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> AssetError:
        host = urllib.parse.urlsplit(self.url).hostname or self.url
        return AssetError(
            f"could not reach {host} ({_describe_network_error(exc)}): Timbre is offline or the hub is "
            f"blocked; set {MIRROR_ENV_VAR} to a mirror (e.g. {EXAMPLE_MIRROR_URL}) or copy the file to "
            f"{self.final}"
        )

    def _too_large(self, size: int) -> AssetError:
        return TooLargeError(
            f"{self.url} is over the size limit "
            f"({format_megabytes(size)} > {format_megabytes(self.max_bytes or 0)});"
            " raise the limit if you trust it"
        )

    def _http_failure(self, exc: urllib.error.HTTPError) -> AssetError:
        if exc.code == 404:
            hint = f"the server does not have {self.asset.url_path}; check {MIRROR_ENV_VAR}"
        elif exc.code in (401, 403):
            hint = "the server refused access; try another mirror"
        else:
            hint = "try again later or set a mirror"
        return AssetError(
            f"{self.url} answered HTTP {exc.code} ({exc.reason}): {hint}, or copy the file to {self.final}"
        )

    def _open(self) -> http.client.HTTPResponse | None:
        """Send the (range) request; None means the ``.part`` already holds the whole file."""
        for _ in range(3):
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if self.offset > 0:
                headers["Range"] = f"bytes={self.offset}-"
            request = urllib.request.Request(self.url, headers=headers)
            try:
                response = self.opener.open(request, timeout=self.connect_timeout_s)
            except urllib.error.HTTPError as exc:
                with exc:
                    if exc.code == 416 and self.offset > 0:
                        _, remote_size = _content_range(exc.headers.get("Content-Range"))
                        if remote_size == self.offset:
                            return None
                        self.restart(f"the server cannot serve bytes from {self.offset} on (HTTP 416)")
                        continue
                    raise self._http_failure(exc) from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc) from exc
            content_length = _int_header(response.headers.get("Content-Length"))
            if response.status == 206:
                first, total = _content_range(response.headers.get("Content-Range"))
                if first != self.offset:
                    response.close()
                    self.restart(f"the server answered a range starting at {first}, not {self.offset}")
                    continue
                if total is None and content_length is not None:
                    total = self.offset + content_length
            else:
                if self.offset > 0:
                    self.restart(f"the server ignored the range request (HTTP {response.status})")
                total = content_length
            if total is not None and self.asset.size_bytes is not None and total != self.asset.size_bytes:
                response.close()
                raise AssetError(
                    f"{self.url} serves {total} bytes but {self.asset.name} has {self.asset.size_bytes}; the "
                    f"mirror holds a different file. Unset {MIRROR_ENV_VAR} or copy the file to {self.final}"
                )
            self.total = total if total is not None else self.asset.size_bytes
            if self.max_bytes is not None and self.total is not None and self.total > self.max_bytes:
                response.close()
                raise self._too_large(self.total)
            return response
        raise AssetError(
            f"{self.url} kept answering inconsistent byte ranges; try again or use another mirror"
        )

    def fetch(self) -> None:
        """One request; returns when the body is fully written, raises _Interrupted if it broke off."""
        response = self._open()
        if response is None:
            return
        received = 0
        self._report(force=True)
        with response:
            while True:
                if self._stop_requested():
                    raise self._cancel()
                try:
                    chunk = response.read(DOWNLOAD_CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    self.stream.flush()
                    raise _Interrupted(_describe_network_error(exc), made_progress=received > 0) from exc
                if not chunk:
                    break
                if self.max_bytes is not None and self.offset + len(chunk) > self.max_bytes:
                    raise self._too_large(self.offset + len(chunk))
                self.stream.write(chunk)
                self.hasher.update(chunk)
                self.offset += len(chunk)
                self.fetched_bytes += len(chunk)
                received += len(chunk)
                self._report()
        self.stream.flush()
        if self.total is not None and self.offset < self.total:
            reason = f"connection closed after {self.offset} of {self.total} bytes"
            raise _Interrupted(reason, made_progress=received > 0)

    def finish(self) -> None:
        """fsync the ``.part`` and move it into place."""
        self.stream.flush()
        os.fsync(self.stream.fileno())
        if os.name == "nt":  # Windows cannot replace a file that is still open
            self.stream.close()
        os.replace(self.part, self.final)
        _fsync_directory(self.final.parent)

    def mismatch_error(self) -> AssetError:
        if self.asset.sha256 is not None:
            return AssetError(
                f"checksum mismatch for {self.asset.name} downloaded from {self.url}: expected sha256 "
                f"{self.asset.sha256}, got {self.hasher.hexdigest()}. The download was deleted; the server "
                f"or mirror sent a different file. Try again, unset {MIRROR_ENV_VAR}, or copy it by hand"
            )
        return AssetError(
            f"size mismatch for {self.asset.name} downloaded from {self.url}: expected "
            f"{self.asset.size_bytes} bytes, got {self.offset}. The download was deleted; try again or use "
            "another mirror"
        )


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        log.debug("fsync of %s not supported", directory)
    finally:
        os.close(fd)


def _lock_exclusively(stream: BinaryIO, asset: Asset, part: Path) -> None:
    """Refuse to write a ``.part`` that another download holds (POSIX advisory lock)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise AssetError(
            f"another download of {asset.name} is writing {part}; wait for it to finish"
        ) from exc


def download_asset(
    name: str,
    pretrained_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    registry: Registry = DEFAULT_REGISTRY,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    connect_timeout_s: float = 10.0,
    read_timeout_s: float = 30.0,
    max_resumes: int = 2,
) -> Path:
    """Download one asset into place and return its path (at once if already present).

    Streams to ``<final>.part``, resumes an earlier ``.part`` with an HTTP Range request, verifies
    the sha256 (or size when no hash is known) and then moves the file into place. A transfer that
    breaks off after making progress is resumed up to ``max_resumes`` times within this call.

    Raises:
        AssetError: unknown name, unreachable server (never waits longer than the timeouts), HTTP
            error, or checksum/size mismatch (the bad download is deleted).
        Cancelled: ``should_stop`` returned True; the ``.part`` stays for a later resume.
    """
    if connect_timeout_s <= 0 or read_timeout_s <= 0:
        raise AssetError("connect_timeout_s and read_timeout_s must be positive")
    if max_resumes < 0:
        raise AssetError("max_resumes must be >= 0")
    asset = find_asset(name, registry)
    root = pretrained_root(pretrained_dir)
    final = local_path(asset, root)
    url = asset.url(resolve_base_url(base_url))
    current = status_of(asset, root)
    if current.is_usable:
        log.info("%s already present at %s", asset.name, final)
        report(progress, 1.0, f"{asset.name}: already present")
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stream = open(part_path(final), "a+b")  # noqa: SIM115 (closed in the finally below)
    except OSError as exc:
        raise AssetError(f"cannot write to {final.parent} ({exc}); check the folder's permissions") from exc
    is_locked = False
    try:
        _lock_exclusively(stream, asset, part_path(final))
        is_locked = True
        transfer = _Download(
            asset,
            url,
            final,
            stream,
            opener=_build_opener(read_timeout_s),
            progress=progress,
            should_stop=should_stop,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        _run_transfer(transfer, max_resumes)
    except OSError as exc:
        raise AssetError(f"could not write {part_path(final)} ({exc}); check free disk space") from exc
    finally:
        if is_locked and not stream.closed and file_size(part_path(final)) == 0:
            part_path(final).unlink(missing_ok=True)  # nothing arrived: leave no empty .part behind
        stream.close()
    log.info("downloaded %s to %s", asset.name, final)
    report(progress, 1.0, f"{asset.name}: done")
    return final


class _UrlDownload(_Download):
    """A transfer from any http(s) URL (model imports): its own hints, no registry or mirror."""

    def _unreachable(self, exc: BaseException) -> AssetError:
        host = urllib.parse.urlsplit(self.url).hostname or self.url
        return AssetError(
            f"could not reach {host} ({_describe_network_error(exc)}): check the address and the network, "
            "or download the file yourself and import it from disk"
        )

    def _http_failure(self, exc: urllib.error.HTTPError) -> AssetError:
        return AssetError(f"{self.url} answered HTTP {exc.code} ({exc.reason}); check the address")


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    *,
    max_bytes: int,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 30.0,
    max_resumes: int = 2,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with HTTP Range on the next call).

    No checksum is known, so the file is complete when the server's length is reached; anything
    over ``max_bytes`` (announced or received) stops the transfer and deletes the partial file.

    Raises:
        AssetError: not an http(s) URL, unreachable (within ``connect_timeout_s``), HTTP error,
            over ``max_bytes``, or broke off (the ``.part`` stays for the next call to resume).
        Cancelled: ``should_stop`` returned True.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise AssetError(f"{url!r} is not an http(s) URL")
    final = Path(dest)
    # The transfer needs only a name and no size or checksum; the kind is never read here.
    asset = Asset(final.name, final.name, None, None, f"download of {url}", "content", source_url=url)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(part_path(final), "a+b") as stream:
        _lock_exclusively(stream, asset, part_path(final))
        transfer = _UrlDownload(
            asset,
            url,
            final,
            stream,
            opener=_build_opener(read_timeout_s),
            progress=progress,
            should_stop=should_stop,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        transfer.max_bytes = max_bytes
        try:
            _run_transfer(transfer, max_resumes, hint="import the same URL again to resume")
        except TooLargeError:
            stream.close()
            part_path(final).unlink(missing_ok=True)
            raise
    report(progress, 1.0, f"{final.name}: downloaded")
    return final


def _run_transfer(transfer: _Download, max_resumes: int, hint: str | None = None) -> None:
    transfer.read_back()
    if transfer.asset.size_bytes is not None and transfer.offset > transfer.asset.size_bytes:
        transfer.restart("the partial download is longer than the file")
    resumes_left = max_resumes
    rechecked_local = False
    while True:
        if not transfer.is_complete_locally():
            try:
                transfer.fetch()
            except _Interrupted as exc:
                if exc.made_progress and resumes_left > 0:
                    resumes_left -= 1
                    log.warning("download of %s broke off (%s); resuming", transfer.asset.name, exc.reason)
                    continue
                raise AssetError(
                    f"download of {transfer.asset.name} from {transfer.url} broke off ({exc.reason}); "
                    f"{format_megabytes(transfer.offset)} are kept in {transfer.part}. "
                    + (hint or f"Run `{download_command(transfer.asset.name)}` again to resume")
                ) from exc
        if transfer.is_verified():
            break
        if transfer.fetched_bytes == 0 and not rechecked_local:
            # The bytes all came from an earlier .part: start over once before blaming the server.
            rechecked_local = True
            transfer.restart("the earlier partial download does not match the checksum")
            continue
        error = transfer.mismatch_error()
        transfer.stream.close()
        transfer.part.unlink(missing_ok=True)
        raise error
    transfer.finish()
