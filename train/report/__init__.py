"""Report card of a trained voice model: probe clips converted by every saved checkpoint, then measured.

Probes:

* **held-out clips**: before training, :func:`ensure_heldout` sets aside a few evenly spread
  dataset segments (``heldout.json`` in the experiment folder); the fit, index and diffusion
  stages leave them out. They are the training voice itself, so they measure reconstruction.
* **probe phrases**: ``assets/probes/phrases.tsv`` names short sentences of other voices in the
  shared test corpus, with their text. Only the text is shipped (there is no offline TTS to render
  it); the clips are read at report time from the corpus folder (:func:`default_probe_audio_dir`)
  when it is present. A phrase of the voice the model was trained on is skipped.

Every probe is converted by every saved checkpoint (``weights/<name>_e<epoch>_s<step>.pth`` and the
final ``<name>.pth``) with sampler ``'off'``, seed 0 and RVC's default knobs, and measured with
:mod:`infer.metrics`:

* ``similarity_to_target``: cosine between the output's d-vector and the training voice's mean
  d-vector (up to :data:`TARGET_EMBEDDING_CLIPS` training segments, re-normalised);
  ``similarity_to_source``: the same against the probe clip itself;
* ``f0_rmse_cents`` / ``voicing_error``: output F0 against the source F0 shifted by the probe's key
  shift: 0 for held-out clips; for phrases the whole semitones (within ±24) that move the
  source's median F0 to the training voice's (none for a model without pitch);
* ``cer``: character error rate of the output's Whisper tiny.en transcription against the
  phrase's text (held-out clips: against the transcription of the clip itself);
* ``has_speech``: the speaker encoder found speech in the output (else no similarity is given,
  and the checkpoint's means count that probe as similarity 0).

**Best checkpoint**: the highest mean ``similarity_to_target`` over all probes; checkpoints
within :data:`SIMILARITY_TIE` of the best are then ranked by the lowest mean CER, then the later
step. ``report.json`` and A/B previews (``report_audio/``: source and conversion by the best
checkpoint) are written into the experiment folder; the export stage copies both into the model
folder and ``report.json`` into the zip.
"""

from train.report.card import build_report
from train.report.config import (
    PREVIEW_DIRNAME,
    REPORT_FILENAME,
    SUMMARY_HEADERS,
    NoProbeError,
    ReportConfig,
    ReportError,
)
from train.report.measure import pick_best
from train.report.probes import (
    checkpoint_files,
    choose_heldout,
    default_probe_audio_dir,
    ensure_heldout,
    heldout_names,
    read_probe_phrases,
)
from train.report.read import load_report, report_audio_pairs, report_summary

__all__ = [
    "PREVIEW_DIRNAME",
    "REPORT_FILENAME",
    "SUMMARY_HEADERS",
    "NoProbeError",
    "ReportConfig",
    "ReportError",
    "build_report",
    "checkpoint_files",
    "choose_heldout",
    "default_probe_audio_dir",
    "ensure_heldout",
    "heldout_names",
    "load_report",
    "pick_best",
    "read_probe_phrases",
    "report_audio_pairs",
    "report_summary",
]
