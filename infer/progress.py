"""Progress and cancel callbacks shared by every long call."""

from __future__ import annotations

from collections.abc import Callable

from infer.errors import Cancelled

ProgressFn = Callable[[float, str], None]
"""``progress(fraction, message)`` with ``fraction`` in [0, 1]."""

StopFn = Callable[[], bool]
"""``should_stop()`` returns True when the caller wants the work to stop."""


def report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    """Call ``progress`` if given, clamping ``fraction`` to [0, 1]."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def check_stop(should_stop: StopFn | None) -> None:
    """Raise :class:`Cancelled` if ``should_stop`` says so."""
    if should_stop is not None and should_stop():
        raise Cancelled("stopped on request")


def sub_progress(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    """Map a callee's [0, 1] progress onto the [start, end] part of the caller's."""
    if progress is None:
        return None

    def scaled(fraction: float, message: str) -> None:
        report(progress, start + (end - start) * fraction, message)

    return scaled
