"""The ``timbre`` command: one name for the studio and both command lines.

``timbre studio`` is ``python app.py``, ``timbre train ...`` is ``python -m train ...``, and every
other subcommand is the ``python -m infer`` command of the same name; each keeps its own flags
(``timbre convert --help``), so nothing here parses more than the subcommand's name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PROG = "timbre"


@dataclass(frozen=True)
class Subcommand:
    """One ``timbre`` subcommand: the program it hands the rest of the line to."""

    name: str
    help: str
    target: str  # "studio", "train" or "infer"


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("studio", "start the web studio (python app.py)", "studio"),
    Subcommand("convert", "convert audio files into a voice", "infer"),
    Subcommand("cover", "a song cover: separate, convert the vocals, remix", "infer"),
    Subcommand("separate", "split songs into vocals and instrumental", "infer"),
    Subcommand("live", "convert the microphone live (local audio devices)", "infer"),
    Subcommand("stream", "a file through the live engine", "infer"),
    Subcommand("train", "train a voice model (python -m train)", "train"),
    Subcommand("import", "import a model zip or .pth, from a file or a URL", "infer"),
    Subcommand("export-onnx", "export a voice's synthesizer to ONNX", "infer"),
    Subcommand("assets", "pretrained files: status and downloads", "infer"),
)
BY_NAME = {sub.name: sub for sub in SUBCOMMANDS}


def version() -> str:
    """The installed distribution's version, else the checkout's (``infer.__version__``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("timbre")
    except PackageNotFoundError:
        import infer

        return infer.__version__


def usage() -> str:
    """The top-level help: the subcommands, one a line."""
    width = max(len(sub.name) for sub in SUBCOMMANDS)
    rows = "\n".join(f"  {sub.name:<{width}}  {sub.help}" for sub in SUBCOMMANDS)
    return (
        f"usage: {PROG} [--version] SUBCOMMAND [ARGS...]\n\n"
        "Timbre: a studio for training and converting voices (RVC-compatible).\n\n"
        f"subcommands:\n{rows}\n\n"
        f"`{PROG} SUBCOMMAND --help` shows each one's flags."
    )


def _runner(target: str) -> Callable[[list[str], str], int]:
    if target == "studio":
        from ui.server import main as studio_main

        return studio_main
    if target == "train":
        from train.__main__ import main as train_main

        return train_main
    from infer.__main__ import main as infer_main

    return infer_main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``timbre`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"{PROG} {version()}")
        return 0
    sub = BY_NAME.get(args[0])
    if sub is None:
        print(usage(), file=sys.stderr)
        print(f"\n{PROG}: error: unknown subcommand {args[0]!r}", file=sys.stderr)
        return 2
    rest = args[1:]
    prog = PROG if sub.target == "infer" else f"{PROG} {sub.name}"
    if sub.target == "infer":
        rest = [sub.name, *rest]
    runner = _runner(sub.target)
    try:
        return runner(rest, prog)
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
