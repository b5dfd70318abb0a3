"""A voice's synthesizer as ONNX, with RVC's input and output names, and the onnxruntime engine.

The exported graph is RVC's ``SynthesizerTrnMsNSFsidM`` contract (``infer/modules/onnx/export.py``
in RVC), so tools that run RVC ONNX voices run these too:

======================  =================  =======================================================
name                    shape, dtype       meaning
======================  =================  =======================================================
``phone``               [1, T, C] float32  content features at 100 frames/s (C: 768, 256 or 384)
``phone_lengths``       [1] int64          valid frames (T)
``pitch``               [1, T] int64       coarse pitch 1..255 (pitch models only)
``pitchf``              [1, T] float32     f0 in Hz, 0 when unvoiced (pitch models only)
``ds``                  [1] int64          speaker id
``rnd``                 [1, inter, T] f32  prior noise, used as given: ``z_p = m_p + exp(logs_p) * rnd``
``audio`` (output)      [1, 1, T*hop] f32  waveform at the model's rate
======================  =================  =======================================================

T is dynamic (axes ``phone:1``, ``pitch:1``, ``pitchf:1``, ``rnd:2``, ``audio:2``). ``inter`` is 192 for
RVC's presets. RVC's torch path scales its noise by 0.66666; callers that want its output pass
``rnd = 0.66666 * randn`` (the engine here does). The NSF source noise, which RVC's graph draws
inside (so no two runs agree), is taken from ``rnd`` here (:func:`nsf_noise_from`), which makes a
run reproducible and lets the torch model be checked against the graph on the same noise.

A content-encoder graph is not exported: HuBERT/ContentVec's convolutional feature extractor and
12-layer transformer export, but Timbre's encoders run chunked with their own padding and the
fp32/bf16 choice per CPU, and the content stage is under a fifth of a conversion's time on the
CPU, so the synthesizer graph is where onnxruntime pays (see bench/convert_speed.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from infer.errors import TimbreError
from infer.synthesizer import Synthesizer

log = logging.getLogger(__name__)

INPUT_NAMES_F0 = ("phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd")
INPUT_NAMES_NO_F0 = ("phone", "phone_lengths", "ds", "rnd")
OUTPUT_NAME = "audio"
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "phone": {1: "frames"},
    "pitch": {1: "frames"},
    "pitchf": {1: "frames"},
    "rnd": {2: "frames"},
    "audio": {2: "samples"},
}
OPSET_VERSION = 17
EXAMPLE_FRAMES = 200
ONNX_CACHE_ENV_VAR = "TIMBRE_ONNX_CACHE"


class OnnxError(TimbreError):
    """ONNX export or onnxruntime failed, or is not installed."""


def nsf_noise_from(rnd: Tensor, hop: int, inter_channels: int | None = None) -> Tensor:
    """The NSF source noise the graph derives from ``rnd``: (1, inter, T) -> (1, T*hop, 1).

    ``rnd``'s values, frame-major, repeated until they cover T*hop samples: white noise with the
    period of the whole input, so no pattern is audible. ``inter_channels`` (``rnd.shape[1]``)
    is passed as a Python int when tracing, so the repeat count is a constant of the graph.
    """
    frames = rnd.shape[2]
    flat = rnd.transpose(1, 2).reshape(1, -1)  # (1, T*inter)
    inter = int(rnd.shape[1]) if inter_channels is None else inter_channels
    repeats = -(-hop // inter)  # ceil, in Python integers
    return flat.repeat(1, repeats)[:, : frames * hop].unsqueeze(-1)


class RvcOnnxGraph(nn.Module):
    """The synthesizer behind RVC's ONNX signature (see the module docstring)."""

    def __init__(self, synthesizer: Synthesizer) -> None:
        super().__init__()
        self.synthesizer = synthesizer
        self.use_f0 = synthesizer.config.use_f0
        self.hop = synthesizer.config.hop_length

    def forward(self, *inputs: Tensor) -> Tensor:
        """RVC's inputs in order -> audio (1, 1, T*hop)."""
        if self.use_f0:
            phone, phone_lengths, pitch, pitchf, ds, rnd = inputs
        else:
            phone, phone_lengths, ds, rnd = inputs
            pitch = pitchf = None
        synth = self.synthesizer
        g = synth.speaker_embedding(ds)
        m_p, logs_p, x_mask = synth.prior(phone, phone_lengths, pitch, g)
        z_p = (m_p + torch.exp(logs_p) * rnd) * x_mask
        z = synth.flow_reverse(z_p, x_mask, g)
        inter = self.synthesizer.config.inter_channels
        sine_noise = nsf_noise_from(rnd, self.hop, inter) if self.use_f0 else None
        return synth.decode(z * x_mask, pitchf, g, sine_noise=sine_noise)


def example_inputs(
    synthesizer: Synthesizer, frames: int = EXAMPLE_FRAMES, seed: int = 0
) -> dict[str, Tensor]:
    """Random inputs of RVC's names and shapes for ``synthesizer`` (for export and tests)."""
    c = synthesizer.config
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "phone": torch.randn(1, frames, c.content_dim, generator=gen),
        "phone_lengths": torch.tensor([frames], dtype=torch.long),
        "pitch": torch.randint(5, 255, (1, frames), generator=gen),
        "pitchf": 100.0 + 200.0 * torch.rand(1, frames, generator=gen),
        "ds": torch.tensor([0], dtype=torch.long),
        "rnd": 0.66666 * torch.randn(1, c.inter_channels, frames, generator=gen),
    }
    names = INPUT_NAMES_F0 if c.use_f0 else INPUT_NAMES_NO_F0
    return {name: inputs[name] for name in names}


def export_onnx(synthesizer: Synthesizer, output: str | os.PathLike[str]) -> Path:
    """Write ``synthesizer`` (fp32, CPU) as an RVC-signature ONNX graph to ``output`` (atomically)."""
    import copy

    try:
        import onnx
    except ImportError as exc:
        raise OnnxError("ONNX export needs the onnx package: pip install 'onnx>=1.16'") from exc
    output = Path(output)
    synth = copy.deepcopy(synthesizer).to("cpu", torch.float32).eval()
    graph = RvcOnnxGraph(synth)
    inputs = example_inputs(synth)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            torch.onnx.export(
                graph,
                tuple(inputs.values()),
                str(tmp),
                input_names=list(inputs),
                output_names=[OUTPUT_NAME],
                dynamic_axes={k: v for k, v in DYNAMIC_AXES.items() if k in inputs or k == OUTPUT_NAME},
                opset_version=OPSET_VERSION,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, output)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, TimbreError):
            raise
        raise OnnxError(f"ONNX export failed: {exc}") from exc
    log.info("wrote %s (%.1f MB)", output, output.stat().st_size / 1e6)
    return output


@dataclass
class OnnxSynthesizer:
    """An onnxruntime session over an exported synthesizer; ``run`` takes RVC's named inputs."""

    path: Path
    session: object
    input_names: tuple[str, ...]

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> OnnxSynthesizer:
        """Open ``path`` with onnxruntime on the CPU (``threads``: intra-op threads, default torch's)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise OnnxError("--engine onnx needs onnxruntime: pip install 'onnxruntime>=1.18'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxError(f"onnxruntime cannot load {path}: {exc}") from exc
        names = tuple(i.name for i in session.get_inputs())
        if names not in (INPUT_NAMES_F0, INPUT_NAMES_NO_F0):
            raise OnnxError(f"{path} is not an RVC-signature synthesizer (inputs {names})")
        return cls(Path(path), session, names)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """RVC's inputs by name (numpy) -> audio (1, 1, T*hop) float32."""
        feed = {name: inputs[name] for name in self.input_names}
        return self.session.run([OUTPUT_NAME], feed)[0]  # type: ignore[attr-defined]


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()[:16]


def default_onnx_cache() -> Path:
    """``$TIMBRE_ONNX_CACHE``, else ``~/.cache/timbre/onnx``: graphs exported for ``--engine onnx``."""
    override = os.environ.get(ONNX_CACHE_ENV_VAR, "").strip()
    return Path(override).expanduser() if override else Path.home() / ".cache" / "timbre" / "onnx"


def onnx_for_model(model_path: Path, synthesizer: Synthesizer, cache_dir: Path | None = None) -> Path:
    """``model_path``'s ONNX graph: ``<stem>.onnx`` beside it when newer, else one exported to the cache."""
    beside = model_path.with_suffix(".onnx")
    if beside.is_file() and beside.stat().st_mtime_ns >= model_path.stat().st_mtime_ns:
        return beside
    cached = (cache_dir or default_onnx_cache()) / f"{model_path.stem}-{_file_key(model_path)}.onnx"
    if not cached.is_file():
        log.info("exporting %s to ONNX for onnxruntime (once per model file)", model_path.name)
        export_onnx(synthesizer, cached)
    return cached
