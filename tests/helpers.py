"""Paths to the shared fixtures and corpus, and small helpers shared by tests."""

from __future__ import annotations

import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("TIMBRE_SHARED_DIR", REPO_DIR.parent / "shared"))
RVC_FIXTURES = SHARED_DIR / "fixtures" / "rvc"
MANIFESTS_DIR = RVC_FIXTURES / "manifests"
SYNTH_GOLDEN_DIR = Path(os.environ.get("TIMBRE_FIXTURES_DIR", RVC_FIXTURES / "synth_golden"))
PIPELINE_GOLDEN_DIR = RVC_FIXTURES / "pipeline_golden"
HUBERT_FIXTURES = RVC_FIXTURES / "hubert"
RMVPE_FIXTURES = RVC_FIXTURES / "rmvpe"
VOICES_DIR = SHARED_DIR / "data" / "voices"
EDGE_DIR = VOICES_DIR / "edge"


def synth_golden(version: str, *, use_f0: bool, sample_rate: int | None = None) -> Path:
    """The first synthesizer golden ``.pth`` of that kind, found by its content, not its name."""
    from infer.models import load_voice_model

    for path in sorted(SYNTH_GOLDEN_DIR.glob("*.pth")):
        meta = load_voice_model(path).metadata
        if (meta.version, meta.use_f0) == (version, use_f0) and sample_rate in (None, meta.sample_rate):
            return path
    raise FileNotFoundError(
        f"no {version} {'f0' if use_f0 else 'no-f0'} synthesizer golden in {SYNTH_GOLDEN_DIR}"
    )
