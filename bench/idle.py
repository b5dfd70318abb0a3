"""Idle CPU of the studio: ``python app.py`` left alone, then with one headless Chromium tab open.

Samples ``/proc/<pid>/task/*/stat`` (user + system ticks) of the app's threads over a window
and prints the share of one core used, overall and per thread name. Usage:
``python bench/idle.py [--seconds 60]``; figures in bench/README.md. Needs chromium and
playwright for the second half (as tests/test_browser.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository's packages (tests.test_browser)
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def thread_ticks(pid: int) -> Counter[str]:
    """user+system ticks per thread name of ``pid`` (threads that ended are not counted)."""
    ticks: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        ticks[name] += int(fields[11]) + int(fields[12])
    return ticks


def measure(pid: int, seconds: float) -> tuple[float, dict[str, float]]:
    """Share of one core used by ``pid`` over ``seconds`` (total, and per thread name)."""
    before = thread_ticks(pid)
    time.sleep(seconds)
    after = thread_ticks(pid)
    per = {name: (after[name] - before.get(name, 0)) / TICKS_PER_S / seconds for name in after}
    return sum(per.values()), {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}


def start_app(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "app.py", "--port", str(port), "--models-dir", str(root / "models")]
    args += ["--data-dir", str(root / "data"), "--pretrained-dir", str(root / "pretrained")]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the studio did not start")


def report(label: str, total: float, per: dict[str, float]) -> None:
    threads = ", ".join(f"{name} {share * 100:.2f}%" for name, share in list(per.items())[:4])
    print(f"{label:<28} {total * 100:6.2f} % of a core   ({threads or 'no thread ran'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each window")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait before measuring")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="timbre-idle-"))
    port = free_port()
    proc = start_app(root, port)
    try:
        time.sleep(args.settle)
        report("idle, no browser", *measure(proc.pid, args.seconds))
        from playwright.sync_api import sync_playwright

        from tests.test_browser import CHROMIUM_FLAGS, find_chromium

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=find_chromium(), headless=True, args=CHROMIUM_FLAGS
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_load_state("load")
            time.sleep(args.settle)
            report("idle, one Chromium tab", *measure(proc.pid, args.seconds))
            page.get_by_role("tab", name="Train", exact=True).click()
            time.sleep(args.settle)
            report("idle, tab on Train", *measure(proc.pid, args.seconds))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
