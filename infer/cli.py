"""How `python -m infer` and `python -m train` end: one error line; a traceback only with `--debug`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from infer.errors import TimbreError
from infer.fsutil import describe_os_error

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def run_command(
    body: Callable[[], int],
    *,
    debug: bool,
    folder: str | Path | None = None,
    interrupted: str = "interrupted",
) -> int:
    """Run a CLI command; turn what it raises into one ``error:`` line on stderr and an exit code.

    Args:
        body: the command; returns the exit code.
        debug: re-raise instead (the full traceback), for ``--debug``.
        folder: the folder the command writes, named when an OS error carries no file name.
        interrupted: the line printed on Ctrl+C.

    Returns:
        ``body``'s code; 2 for a :class:`TimbreError` or a bad value, 1 for an OS or other error,
        130 on Ctrl+C.
    """
    try:
        return body()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except (TimbreError, ValueError) as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if debug:
            raise
        print(f"error: {describe_os_error(exc, folder)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run again with --debug for the details)", file=sys.stderr)
        return EXIT_FAILED
