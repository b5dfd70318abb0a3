"""Live conversion on this CPU: per-block compute, late blocks, algorithmic and measured latency.

Part 1 (engine): the real-size v2 40k model (random weights, HuBERT base, IVF index; the bench
kit of ``bench/_common.py``) streams a speech file block by block at the default precision.
For each block and context size: per-block compute p50/p95/p99, the share of late blocks
(compute longer than the block, i.e. a live stream would fall behind) and the algorithmic
latency (block + crossfade + SOLA search).

Part 2 (``--browser``): the studio runs with the same model, headless Chromium's fake
microphone plays the file into the Live tab, and the tab's *Measure latency* button times noise
bursts through the whole loop (AudioWorklet -> WebSocket -> engine -> WebSocket -> playback).

    python bench/live.py [--blocks 0.1 0.25 0.5] [--contexts 0.5 1.0 2.5] [--browser --browser-block 0.25]
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import OUT_DIR, REPO_DIR, ensure_kit, load_input

from infer.pipeline import Converter, ConvertParams, Resources, load_voice
from infer.stream import StreamConfig, StreamEngine


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    p.add_argument("--contexts", type=float, nargs="+", default=[0.5, 1.0, 2.5])
    p.add_argument("--seconds", type=float, default=20.0, help="audio streamed per setting")
    p.add_argument("--f0-method", default="fcpe")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--browser", action="store_true", help="also measure the browser loop")
    p.add_argument("--browser-block", type=float, default=0.25)
    p.add_argument("--browser-context", type=float, default=0.5)
    return p.parse_args(argv)


def _cpu_line() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    native = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]
    return f"{fields.get('Model name', '?').strip()}; {', '.join(native)}"


def engine_rows(args: argparse.Namespace) -> list[str]:
    kit = ensure_kit()
    voice = load_voice(kit.model_path, kit.index_path)
    converter = Converter(voice, Resources(pretrained_dir=kit.pretrained_dir, precision=args.precision))
    params = ConvertParams(f0_method=args.f0_method, seed=0)
    audio = load_input(args.seconds + 3.0)
    rows = []
    for block_s in args.blocks:
        for context_s in args.contexts:
            engine = StreamEngine(converter, params, StreamConfig(block_s=block_s, context_s=context_s))
            n = engine.block_samples_16k
            warmup = 3
            for i in range(min(warmup, audio.shape[0] // n)):
                engine.process(audio[i * n : (i + 1) * n])
            engine.stats.compute_s.clear()
            count = int(args.seconds * 16000) // n
            for i in range(warmup, warmup + count):
                engine.process(audio[i * n : (i + 1) * n])
            stats = engine.stats
            late = sum(t > block_s for t in stats.compute_s) / len(stats.compute_s)
            cells = [
                f"{block_s:.2f}",
                f"{context_s:.1f}",
                str(len(stats.compute_s)),
                *(f"{stats.percentile_ms(q):.0f}" for q in (50, 95, 99)),
                f"{100 * late:.1f}",
                f"{engine.config.algorithmic_latency_s * 1000:.0f}",
                converter.precision,
            ]
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    return rows


def browser_latency(args: argparse.Namespace) -> str:
    """The Live tab's measured loop latency with the bench model (one Chromium run)."""
    import shutil

    import soundfile as sf
    import soxr
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO_DIR))
    from tests.test_app_e2e import AppProcess
    from tests.test_browser import CHROMIUM_FLAGS, find_chromium

    kit = ensure_kit()
    root = Path(tempfile.mkdtemp(prefix="timbre-live-bench-"))
    (root / "models" / "bench").mkdir(parents=True)
    shutil.copy(kit.model_path, root / "models" / "bench" / "bench.pth")
    shutil.copytree(kit.pretrained_dir, root / "pretrained")
    mic = root / "mic.wav"
    audio = load_input(30.0)
    sf.write(mic, soxr.resample(audio, 16000, 48000), 48000, subtype="PCM_16")
    app = AppProcess(root)
    app.start()
    flags = [
        *CHROMIUM_FLAGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True, args=flags)
        page = browser.new_context(permissions=["microphone"]).new_page()
        page.set_default_timeout(120_000)
        page.goto(app.url)
        page.get_by_role("tab", name="Live", exact=True).click()
        page.locator("#live-start").wait_for()
        page.locator("#live-f0").select_option(args.f0_method)
        for elem_id, value in (("live-block", args.browser_block), ("live-context", args.browser_context)):
            page.evaluate(
                "([id, v]) => { const e = document.getElementById(id); e.value = v; "
                "e.dispatchEvent(new Event('input')); }",
                [elem_id, value],
            )
        page.locator("#live-start").click()
        page.wait_for_function("window.timbreLive.status === 'streaming'")
        time.sleep(8.0)  # warm up
        page.locator("#live-measure").click()
        page.wait_for_function("window.timbreLive.measuredLatencyMs !== null", timeout=120_000)
        measured = page.evaluate("window.timbreLive.measuredLatencyMs")
        stats = page.evaluate("window.timbreLive.stats")
        text = page.locator("#live-latency").inner_text()
        browser.close()
    finally:
        playwright.stop()
        app.stop()
    setting = f"block {args.browser_block} s, context {args.browser_context} s"
    server = f"server compute p50 {stats['compute_p50_ms']} / p95 {stats['compute_p95_ms']} ms"
    return (
        f"browser loop, {setting}: measured {measured} ms end to end ({text}); {server}, "
        f"dropped {stats['dropped']}, algorithmic {stats['algorithmic_latency_ms']} ms"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {_cpu_line()}; torch threads {args.threads}; f0 {args.f0_method}")
    header = (
        "block s",
        "context s",
        "blocks",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "late %",
        "algorithmic ms",
        "arithmetic",
    )
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = engine_rows(args)
    lines = [*rows]
    if args.browser:
        line = browser_latency(args)
        print(line)
        lines.append(line)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "live.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
