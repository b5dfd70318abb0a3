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
