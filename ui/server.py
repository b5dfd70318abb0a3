"""The studio's server: ``python app.py`` flags, the login, the queue and the launch; :func:`build_app`.

``python app.py [--host 127.0.0.1] [--port 7860] [--auth user:password | --auth-file F]
[--models-dir D] [--data-dir D] [--pretrained-dir D] [--dataset-root D ...] [--max-upload-size 1gb]``

A tab is one module under :mod:`ui.tabs` with ``build(demo, studio)``, listed once in
:data:`TABS`. Nothing heavy happens while the page is built: no model is loaded, nothing
downloaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from infer.catalog import resolve_data_dir, resolve_models_dir
from infer.home import asset_path
from ui.live import LiveContext, live_routes
from ui.studio import Studio, StudioPaths
from ui.tabs import assets, convert, cover, live, models, train

CSS_PATH = asset_path("studio.css")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD_SIZE = "1gb"
"""The default cap on one uploaded file (``--max-upload-size``; Gradio refuses larger ones)."""
DEFAULT_CONCURRENCY = 4  # light handlers (lists, polls, renames)
QUEUE_IDLE_POLL_S = 0.2
"""How often Gradio's queue looks for work when it has none: an event starts at most this late.
Its own Linux default, 1 ms, costs ~8 % of a core on an idle studio (see bench/idle.py)."""
PROGRESS_IDLE_POLL_S = 0.5
"""How often the queue sends pending progress (Gradio's Linux default: every 10 ms, also when idle)."""
QUEUE_MAX_SIZE = 64
TABS = (convert, cover, live, train, models, assets)
LIVE_HEAD = '<script src="/timbre/live/static/live.js" defer></script>'
"""The Live tab's client, loaded with the page (it builds its panel when the tab appears)."""
"""The page's tabs, in order: each module's ``build(demo, studio)`` lays one out."""


def build_app(
    models_dir: Path,
    data_dir: Path,
    pretrained_dir: Path | None = None,
    dataset_roots: Sequence[str | Path] = (),
) -> gr.Blocks:
    """Build the studio. Nothing heavy happens here: no model is loaded, nothing downloaded.

    ``dataset_roots``: server folders the Train tab may read besides ``data_dir/datasets``
    (``$TIMBRE_DATASET_ROOTS`` adds more; see :mod:`ui.folders`).
    """
    if pretrained_dir is None:
        from infer.assets import default_pretrained_dir

        pretrained_dir = default_pretrained_dir()
    paths = StudioPaths(
        Path(models_dir), Path(data_dir), Path(pretrained_dir), tuple(str(p) for p in dataset_roots)
    )
    studio = Studio(paths)
    studio.store.recover_interrupted()
    with gr.Blocks(title="Timbre studio", analytics_enabled=False) as demo:
        gr.Markdown("# Timbre studio", elem_classes="timbre-header")
        with gr.Tabs():
            for tab in TABS:
                tab.build(demo, studio)
    demo.timbre_live = LiveContext(Path(models_dir), Path(pretrained_dir))  # type: ignore[attr-defined]
    return demo


def parse_auth(value: str) -> tuple[str, str]:
    """``user:password`` -> (user, password); the password may contain ':'."""
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise ValueError("credentials must look like user:password, with a non-empty user and password")
    return user.strip(), password


def read_auth_file(path: str | Path) -> list[tuple[str, str]]:
    """One ``user:password`` per line; blank lines and lines starting with '#' are ignored."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            pairs.append(parse_auth(text))
        except ValueError as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
    if not pairs:
        raise ValueError(f"{path} holds no user:password line")
    return pairs


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, auth: Sequence[tuple[str, str]] | None) -> bool:
    """Log a warning (and return True) when serving beyond this machine without a login."""
    if is_loopback(host) or auth:
        return False
    logging.warning(
        "serving on %s without --auth: anyone who can reach this address can use the studio, "
        "read its models and start jobs; add --auth user:password or --auth-file FILE",
        host,
    )
    return True


def launch(
    demo: gr.Blocks,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    auth: list[tuple[str, str]] | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    data_dir: Path | None = None,
    max_upload_size: str = MAX_UPLOAD_SIZE,
) -> Any:
    """Queue settings and launch options shared by ``main`` and the tests.

    ``data_dir``'s outputs and exports folders are the only extra folders the page may download
    from (besides Gradio's defaults: its cache, the working directory and the temp folder).
    ``max_upload_size`` (e.g. ``"1gb"``, ``"500mb"``) caps every uploaded file.
    """
    warn_if_exposed(host, auth)
    allowed = [] if data_dir is None else [str(Path(data_dir) / "outputs"), str(Path(data_dir) / "exports")]
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    quiet_idle_queue(demo)
    live_context = getattr(demo, "timbre_live", None)
    routes = live_routes(live_context) if live_context is not None else []
    return demo.launch(
        app_kwargs={"routes": routes},
        head=LIVE_HEAD if routes else None,
        server_name=host,
        server_port=port,
        auth=auth or None,
        auth_message="Timbre studio: sign in" if auth else None,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=False,
        max_file_size=max_upload_size,
        ssr_mode=False,
        theme=gr.themes.Soft(),
        css_paths=[CSS_PATH],
        footer_links=["api", "settings"],
        allowed_paths=allowed,
    )


def quiet_idle_queue(demo: gr.Blocks) -> bool:
    """Slow the polling of Gradio's queue when it is free, so an idle studio uses ~0 % CPU.

    Gradio exposes no setting for these intervals; they are attributes of its queue object. If
    a Gradio version renames them, the studio still runs (only busier when idle) and this
    returns False, with a warning in the log.
    """
    queue = getattr(demo, "_queue", None)
    names = ("sleep_when_free", "progress_update_sleep_when_free")
    if queue is None or not all(hasattr(queue, n) for n in names):
        logging.warning(
            "this Gradio version's queue has no idle poll settings; the idle studio uses more CPU"
        )
        return False
    queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_IDLE_POLL_S)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_IDLE_POLL_S)
    return True


def build_parser(prog: str = "python app.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Timbre studio (web UI)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--auth", default=None, help="require this login, as user:password")
    group.add_argument("--auth-file", type=Path, default=None, help="file of user:password lines")
    parser.add_argument(
        "--models-dir", default=None, help="voice models folder (default $TIMBRE_MODELS_DIR or ./models)"
    )
    parser.add_argument("--data-dir", default=None, help="jobs, outputs and experiments (default ./data)")
    parser.add_argument("--pretrained-dir", default=None, help="pretrained base files (default ./pretrained)")
    parser.add_argument(
        "--dataset-root",
        action="append",
        default=[],
        metavar="FOLDER",
        help="a server folder the Train tab may read datasets from (repeatable; also "
        "$TIMBRE_DATASET_ROOTS); the data folder's datasets/ is always allowed",
    )
    parser.add_argument(
        "--max-upload-size",
        type=upload_size,
        default=MAX_UPLOAD_SIZE,
        help=f"largest file one upload may be, e.g. 500mb, 2gb (default {MAX_UPLOAD_SIZE})",
    )
    return parser


def upload_size(value: str) -> str:
    """``--max-upload-size``'s value as Gradio reads it (a number and kb/mb/gb), or an argparse error."""
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgtb")
    unit = text[len(number) :]
    if not (number.isdigit() and int(number) > 0 and unit in ("b", "kb", "mb", "gb", "tb")):
        raise argparse.ArgumentTypeError(f"{value!r} is not a size like 500mb or 2gb")
    return text


def main(argv: list[str] | None = None, prog: str = "python app.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    auth: list[tuple[str, str]] | None = None
    try:
        if args.auth is not None:
            auth = [parse_auth(args.auth)]
        elif args.auth_file is not None:
            auth = read_auth_file(args.auth_file)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    data_dir = resolve_data_dir(args.data_dir)
    demo = build_app(
        resolve_models_dir(args.models_dir),
        data_dir,
        Path(args.pretrained_dir).expanduser() if args.pretrained_dir else None,
        dataset_roots=args.dataset_root,
    )
    launch(
        demo,
        host=args.host,
        port=args.port,
        auth=auth,
        data_dir=data_dir,
        max_upload_size=args.max_upload_size,
        prevent_thread_lock=True,
    )
    # Gradio's own wait wakes every 0.1 s; an Event wait sleeps until Ctrl+C (or a signal ends us).
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        logging.info("stopping the studio")
    finally:
        demo.close()
    return 0
