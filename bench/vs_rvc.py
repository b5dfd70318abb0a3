"""Timbre against the reference RVC (classic branch 20240604), side by side on this machine.

Usage::

    git clone -b 20240604 https://github.com/RVC-Project/Retrieval-based-Voice-Conversion-WebUI rvc
    python bench/vs_rvc.py --rvc-dir rvc                   # speed table + stage-wise agreement
    python bench/vs_rvc.py --rvc-dir rvc --repeats 1 --duration 20 --f0-methods pm

Both sides convert the same input (``mixtures/long_us2_speech_180s.flac`` cut to ``--duration``)
with the same real-size random weights (``bench/_common.ensure_kit``: the voice ``.pth`` is RVC's
own format, ``rmvpe.pt`` and the IVF512 index are read by the reference unchanged) and RVC's CPU
settings (index_rate 0.75, filter_radius 3, rms_mix_rate 0.25, protect 0.33, x_pad 1, x_query 6,
x_center 38, x_max 41). The reference is imported from ``--rvc-dir`` at run time, never copied.

Each measurement is a fresh process (a warm-up conversion of 10 s, then one timed conversion);
the sides alternate, and which side goes first alternates by repeat; the table gives medians.
Both processes start with the huge-page allocator on (``THP_MEM_ALLOC_ENABLE=1``) unless
``--no-thp``. Per-stage times on the reference side come from forward hooks on its text encoder,
flow and decoder and from its own ``times`` list.

The reference's HuBERT is fairseq's, which does not install here; its stage runs Timbre's
HuBERT (``infer.content.hubert``, equal to fairseq on the goldens in ``tests/test_hubert.py``)
behind fairseq's ``extract_features`` call, so the HuBERT column is the same code on both sides.

The stage-wise comparison (``--stages``, on by default) runs both sides once more in fp32 with the
same random draws: the reference's ``torch.randn_like`` is patched from outside to draw from a
generator seeded like Timbre's, in the same order (prior noise, then NSF noise, per chunk). It
compares the synthesizer's content input (HuBERT + index blend + protect), RMVPE's salience
before the threshold, the F0 track, the decoder input z, and the audio.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "0" if "--no-thp" in sys.argv else "1")

import argparse
import json
import subprocess
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUT_DIR, ensure_kit, load_average, load_input, machine_line, median, snr_db

REPO_DIR = Path(__file__).resolve().parents[1]
WORK_DIR = OUT_DIR / "vs_rvc"
WARMUP_S = 10.0
SETTINGS = {"index_rate": 0.75, "filter_radius": 3, "rms_mix_rate": 0.25, "protect": 0.33}
CAPTURES = ("phone", "salience", "f0", "z")
TIME_AXIS = {"phone": 0, "salience": 0, "f0": -1, "z": -1}
INT16_SCALE = 32768.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rvc-dir", type=Path, help="a checkout of RVC's 20240604 branch")
    p.add_argument("--duration", type=float, default=60.0, help="input length in seconds")
    p.add_argument(
        "--f0-methods", nargs="+", default=["rmvpe", "pm"], help="RVC classic has pm, harvest, crepe, rmvpe"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-stages", action="store_true", help="skip the stage-wise comparison")
    p.add_argument("--no-speed", action="store_true", help="only the stage-wise comparison")
    p.add_argument("--no-thp", action="store_true", help="leave the huge-page allocator off")
    p.add_argument("--worker", choices=("rvc", "timbre"), help=argparse.SUPPRESS)
    p.add_argument("--f0", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None and args.rvc_dir is None:
        p.error("--rvc-dir is required: a checkout of RVC's 20240604 branch")
    if args.rvc_dir is not None and not (args.rvc_dir / "infer" / "modules" / "vc" / "pipeline.py").is_file():
        p.error(f"{args.rvc_dir} is not a checkout of RVC classic (no infer/modules/vc/pipeline.py)")
    return args


# ----------------------------------------------------------------------------- workers


class _Clock:
    """Seconds spent inside hooked modules, by stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def hook(self, module: Any, stage: str) -> None:
        module.register_forward_pre_hook(lambda *_: self._started.__setitem__(stage, time.perf_counter()))
        module.register_forward_hook(lambda *_: self._stop(stage))

    def _stop(self, stage: str) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - self._started[stage]


def _peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def _captured(store: dict[str, list[np.ndarray]], name: str) -> Callable[[Any], None]:
    def keep(value: Any) -> None:
        store.setdefault(name, []).append(
            np.array(value.detach().float().cpu() if hasattr(value, "detach") else value)
        )

    return keep


class _FairseqFace:
    """Timbre's HuBERT behind fairseq's ``extract_features`` / ``final_proj`` (what RVC calls)."""

    def __init__(self, model: Any, clock: _Clock) -> None:
        self.model, self.clock = model, clock
        self.final_proj = model.final_proj

    def extract_features(
        self, source: Any, padding_mask: Any = None, output_layer: int = 12
    ) -> tuple[Any, Any]:
        started = time.perf_counter()
        out = self.model(source, output_layer=output_layer)
        self.clock.seconds["hubert"] = self.clock.seconds.get("hubert", 0.0) + time.perf_counter() - started
        return out, padding_mask


def _hide_timbre_packages() -> None:
    """Keep the already-imported Timbre modules alive under other names, then forget ``infer``.

    RVC's package is also called ``infer``; imported Timbre modules hold their own references,
    so they keep working after their ``sys.modules`` entries move aside.
    """
    for name in [n for n in sys.modules if n == "infer" or n.startswith("infer.")]:
        sys.modules["_timbre_" + name] = sys.modules.pop(name)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_DIR]


def _run_rvc(args: argparse.Namespace, kit: Any, audio: np.ndarray, warmup: np.ndarray) -> dict[str, Any]:
    import torch

    from infer.content.hubert import build_hubert, read_hubert_checkpoint  # Timbre's, before hiding

    clock = _Clock()
    hubert_config, hubert_state = read_hubert_checkpoint(kit.pretrained_dir / "hubert_base.pt")
    hubert = build_hubert(hubert_config, hubert_state).eval()
    _hide_timbre_packages()
    sys.path.insert(0, str(args.rvc_dir.resolve()))
    os.environ["rmvpe_root"] = str(kit.pretrained_dir)  # noqa: SIM112 (the reference's own name)
    _stub_torchcrepe()
    from infer.lib.infer_pack.models import SynthesizerTrnMs768NSFsid  # the reference's
    from infer.modules.vc import pipeline as rvc_pipeline

    cpt = torch.load(kit.model_path, map_location="cpu", weights_only=True)
    cpt["config"][-3] = cpt["weight"]["emb_g.weight"].shape[0]
    net_g = SynthesizerTrnMs768NSFsid(*cpt["config"], is_half=False)
    del net_g.enc_q
    net_g.load_state_dict(cpt["weight"], strict=False)
    net_g.eval().float()
    for name in ("enc_p", "flow", "dec"):
        clock.hook(getattr(net_g, name), name)

    class Config:
        x_pad, x_query, x_center, x_max, is_half, device = 1, 6, 38, 41, False, "cpu"

    pipe = rvc_pipeline.Pipeline(cpt["config"][-1], Config())
    face = _FairseqFace(hubert, clock)
    store: dict[str, list[np.ndarray]] = {}
    if args.dump:
        _patch_rvc_for_dump(args.seed, rvc_pipeline, net_g, store)

    def run(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
        times = [0.0, 0.0, 0.0]
        out = pipe.pipeline(
            face, net_g, 0, x.copy(), "bench_input.wav", times, 0, args.f0, str(kit.index_path),
            SETTINGS["index_rate"], 1, SETTINGS["filter_radius"], cpt["config"][-1], 0,
            SETTINGS["rms_mix_rate"], "v2", SETTINGS["protect"],
        )  # fmt: skip
        return out.astype(np.float32) / INT16_SCALE, times

    if not args.dump:
        run(warmup)
    clock.seconds.clear()
    cpu0, started = time.process_time(), time.perf_counter()
    output, times = run(audio)
    wall = time.perf_counter() - started
    stages = {
        "hubert": clock.seconds.get("hubert", 0.0),
        "content": times[0],
        "f0": times[1],
        "text_encoder": clock.seconds.get("enc_p", 0.0),
        "flow": clock.seconds.get("flow", 0.0),
        "decoder": clock.seconds.get("dec", 0.0),
    }
    return {
        "wall": wall,
        "cpu": time.process_time() - cpu0,
        "stages": stages,
        "output": output,
        "store": store,
    }


def _stub_torchcrepe() -> None:
    """The reference imports torchcrepe at the top; its wheel needs torchaudio, broken here.

    crepe is not among the methods compared, so an empty module stands in (using it fails).
    """
    try:
        import torchcrepe  # noqa: F401
    except ImportError:
        sys.modules["torchcrepe"] = types.ModuleType("torchcrepe")


def _patch_rvc_for_dump(seed: int, rvc_pipeline: Any, net_g: Any, store: dict[str, list[np.ndarray]]) -> None:
    """Same random draws as Timbre's seeded generator, and captures of the intermediates."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch.randn_like = lambda t, **_: torch.randn(
        t.shape, generator=generator, dtype=t.dtype, device=t.device
    )
    net_g.enc_p.register_forward_pre_hook(lambda _m, a: _captured(store, "phone")(a[0][0]))
    net_g.dec.register_forward_pre_hook(lambda _m, a: _captured(store, "z")(a[0][0]))
    get_f0 = rvc_pipeline.Pipeline.get_f0

    def get_f0_kept(self: Any, *a: Any, **k: Any) -> Any:
        coarse, f0 = get_f0(self, *a, **k)
        _captured(store, "f0")(f0)
        return coarse, f0

    rvc_pipeline.Pipeline.get_f0 = get_f0_kept
    from infer.lib import rmvpe  # the reference's

    mel2hidden = rmvpe.RMVPE.mel2hidden
    rmvpe.RMVPE.mel2hidden = lambda self, mel: _kept(mel2hidden(self, mel), store, "salience")


def _kept(value: Any, store: dict[str, list[np.ndarray]], name: str) -> Any:
    _captured(store, name)(value[0])
    return value


def _run_timbre(args: argparse.Namespace, kit: Any, audio: np.ndarray, warmup: np.ndarray) -> dict[str, Any]:
    from infer import pipeline as timbre_pipeline
    from infer.pipeline import ConvertParams, Resources, convert, load_voice

    voice = load_voice(kit.model_path, kit.index_path)
    resources = Resources(pretrained_dir=kit.pretrained_dir, precision=args.precision)
    params = ConvertParams(f0_method=args.f0, seed=args.seed, **SETTINGS)
    store: dict[str, list[np.ndarray]] = {}
    if args.dump:
        _patch_timbre_for_dump(timbre_pipeline, voice, store)
    else:
        convert(warmup, voice, params, resources=resources)
    cpu0, started = time.process_time(), time.perf_counter()
    result = convert(audio, voice, params, resources=resources)
    wall = time.perf_counter() - started
    stages = {k: v for k, v in result.timings_s.items() if k not in ("total",)}
    return {
        "wall": wall,
        "cpu": time.process_time() - cpu0,
        "stages": stages,
        "output": result.audio,
        "store": store,
        "precision": result.precision,
    }


def _patch_timbre_for_dump(timbre_pipeline: Any, voice: Any, store: dict[str, list[np.ndarray]]) -> None:
    from infer.pitch import rmvpe

    synth = voice.synthesizer
    prior, decode = synth.prior, synth.decode

    def prior_kept(phone: Any, *a: Any, **k: Any) -> Any:
        _captured(store, "phone")(phone[0])
        return prior(phone, *a, **k)

    def decode_kept(z: Any, *a: Any, **k: Any) -> Any:
        _captured(store, "z")(z[0])
        return decode(z, *a, **k)

    synth.prior, synth.decode = prior_kept, decode_kept
    track = timbre_pipeline.Converter.track_pitch

    def track_kept(self: Any, *a: Any, **k: Any) -> Any:
        f0 = track(self, *a, **k)
        _captured(store, "f0")(f0)
        return f0

    timbre_pipeline.Converter.track_pitch = track_kept
    blocks = rmvpe.RmvpeExtractor._salience_blocks

    def blocks_kept(self: Any, audio: Any, *a: Any, **k: Any) -> Any:
        parts = sorted(blocks(self, audio, *a, **k), key=lambda item: item[0])
        _captured(store, "salience")(np.concatenate([b for _, b in parts]))
        yield from parts

    rmvpe.RmvpeExtractor._salience_blocks = blocks_kept


def _worker(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    kit = ensure_kit()
    audio = np.load(args.input)
    warmup = audio[: round(WARMUP_S * 16000)]
    run = _run_rvc if args.worker == "rvc" else _run_timbre
    with torch.inference_mode():
        result = run(args, kit, audio, warmup)
    np.save(args.result.with_suffix(".npy"), result.pop("output"))
    store = result.pop("store")
    if args.dump:
        np.savez(args.dump, **{k: np.concatenate(v, axis=TIME_AXIS[k]) for k, v in store.items()})
    result["peak_rss_gb"] = _peak_rss_gb()
    args.result.write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- orchestrator


def _spawn(
    args: argparse.Namespace, side: str, f0: str, precision: str, tag: str, dump: bool
) -> dict[str, Any]:
    result = WORK_DIR / f"{tag}.json"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", side, "--f0", f0, "--precision", precision,
        "--input", str(args.input_path), "--result", str(result), "--threads", str(args.threads),
        "--seed", str(args.seed),
    ]  # fmt: skip
    if args.rvc_dir is not None:
        cmd += ["--rvc-dir", str(args.rvc_dir)]
    if dump:
        cmd += ["--dump", str(WORK_DIR / f"{tag}.npz")]
    if args.no_thp:
        cmd.append("--no-thp")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if not args.no_thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side}/{f0} worker failed:\n{done.stderr[-4000:]}")
    data = json.loads(result.read_text())
    data["output"] = np.load(result.with_suffix(".npy"))
    return data


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _speed(args: argparse.Namespace) -> dict[tuple[str, str], np.ndarray]:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    sides = ("rvc", "timbre")
    for repeat in range(args.repeats):
        for f0 in args.f0_methods:
            order = sides if repeat % 2 == 0 else sides[::-1]
            for side in order:
                data = _spawn(args, side, f0, "auto", f"speed_{side}_{f0}_{repeat}", dump=False)
                runs.setdefault((side, f0), []).append(data)
                print(
                    f"  {side}/{f0} run {repeat + 1}: {data['wall']:.1f} s (load average {load_average()})",
                    flush=True,
                )
    print()
    stages = ("hubert", "content", "f0", "text_encoder", "flow", "decoder")
    header = [
        "side",
        "f0",
        "precision",
        "total s (runs)",
        "RTF",
        *[f"{s} s" for s in stages],
        "CPU s",
        "peak RSS GB",
    ]
    print(_row(header))
    print(_row(["---"] * len(header)))
    totals: dict[tuple[str, str], float] = {}
    for (side, f0), items in runs.items():
        walls = [d["wall"] for d in items]
        totals[(side, f0)] = median(walls)
        cells = [
            "reference RVC 20240604" if side == "rvc" else "Timbre",
            f0,
            "fp32" if side == "rvc" else items[0]["precision"],
            f"{median(walls):.1f} ({', '.join(f'{w:.1f}' for w in walls)})",
            f"{median(walls) / args.duration:.3f}",
            *[f"{median([d['stages'].get(s, 0.0) for d in items]):.2f}" for s in stages],
            f"{median([d['cpu'] for d in items]):.0f}",
            f"{median([d['peak_rss_gb'] for d in items]):.2f}",
        ]
        print(_row(cells))
    print()
    for f0 in args.f0_methods:
        ratio = totals[("timbre", f0)] / totals[("rvc", f0)]
        print(f"{f0}: Timbre / reference = {ratio:.3f} ({1 / ratio:.2f}x faster; goal 2x)")
    print(
        "Timbre's 'content' includes HuBERT and the index blend; the reference's 'content' is its "
        "times[0] (HuBERT + index read + blend). HuBERT is the same code on both sides (see the docstring)."
    )
    return {key: items[-1]["output"] for key, items in runs.items()}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.shape[0], b.shape[0])
    return float(np.max(np.abs(a[:n] - b[:n])))


def _f0_agreement(ref: np.ndarray, ours: np.ndarray) -> str:
    n = min(ref.shape[-1], ours.shape[-1])
    ref, ours = ref[..., :n].ravel(), ours[..., :n].ravel()
    vr, vo = ref > 0, ours > 0
    both = vr & vo
    cents = 1200 * np.abs(np.log2(ours[both] / ref[both])) if both.any() else np.zeros(1)
    agree = 100 * float(np.mean(vr == vo))
    med_ref = float(np.median(ref[vr])) if vr.any() else 0.0
    med_ours = float(np.median(ours[vo])) if vo.any() else 0.0
    return (
        f"voiced {int(vr.sum())} vs {int(vo.sum())} of {n}; voicing agrees on {agree:.2f}% of frames; "
        f"median F0 {med_ref:.1f} vs {med_ours:.1f} Hz; |cents| on frames voiced in both: "
        f"median {np.median(cents):.4f}, max {cents.max():.4f}"
    )


def _stages(args: argparse.Namespace) -> None:
    print()
    print("## Stage-wise agreement (fp32 both, same weights, input and random draws)")
    print()
    print(_row(["f0", "quantity", "shape (reference)", "SNR dB of Timbre vs reference", "max |diff|"]))
    print(_row(["---"] * 5))
    notes = []
    for f0 in args.f0_methods:
        ref = _spawn(args, "rvc", f0, "fp32", f"stages_rvc_{f0}", dump=True)
        ours = _spawn(args, "timbre", f0, "fp32", f"stages_timbre_{f0}", dump=True)
        ref_store = np.load(WORK_DIR / f"stages_rvc_{f0}.npz")
        our_store = np.load(WORK_DIR / f"stages_timbre_{f0}.npz")
        for name in CAPTURES:
            if name not in ref_store or name not in our_store:
                continue
            a, b = ref_store[name], our_store[name]
            shape = "x".join(str(s) for s in a.shape)
            common = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape, strict=True))
            diff = float(np.max(np.abs(a[common] - b[common]))) if a.size and b.size else float("nan")
            snr = snr_db(a[common].ravel(), b[common].ravel())
            print(
                _row(
                    [
                        f0,
                        name,
                        shape + ("" if a.shape == b.shape else f" (Timbre {'x'.join(map(str, b.shape))})"),
                        f"{snr:.1f}",
                        f"{diff:.3g}",
                    ]
                )
            )
            if name == "f0":
                notes.append(f"{f0} F0 track: {_f0_agreement(a, b)}")
        snr = snr_db(ref["output"], ours["output"])
        print(
            _row(
                [
                    f0,
                    "audio (reference int16 / 32768)",
                    str(ref["output"].shape[0]),
                    f"{snr:.1f}",
                    f"{_max_diff(ref['output'], ours['output']):.3g}",
                ]
            )
        )
    print()
    for line in notes:
        print(f"- {line}")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the tables."""
    args = _parse_args(argv)
    if args.worker:
        return _worker(args)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    ensure_kit()
    args.input_path = WORK_DIR / f"input_{args.duration:g}s.npy"
    np.save(args.input_path, load_input(args.duration))
    flags = sorted(f for f in _cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c", "sse4")))
    print(f"# vs_rvc: {args.duration:g} s input, {args.repeats} repeats, f0 {', '.join(args.f0_methods)}")
    print(f"machine: {machine_line(args.threads)}")
    print(f"CPU flags (vector): {' '.join(flags)}")
    print(f"reference: {args.rvc_dir.resolve()} ({_git_head(args.rvc_dir)})")
    print(f"load average at start: {load_average()}")
    print()
    if not args.no_speed:
        _speed(args)
    if not args.no_stages:
        _stages(args)
    return 0


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _git_head(path: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(path), "log", "-1", "--format=%h %d %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "not a git checkout"


if __name__ == "__main__":
    raise SystemExit(main())
