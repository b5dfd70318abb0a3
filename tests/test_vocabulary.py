"""Every choice comes from the one table: a fake F0 method and sampler show up everywhere at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infer import options
from infer.options import F0MethodSpec, SamplerSpec
from tests.helpers import REPO_DIR

FAKE_F0 = "fake-f0"
FAKE_SAMPLER = "fake-sampler"
# Vocabulary literals that must be written once (in infer/options.py or its adapters) at most.
VOCABULARY_LITERALS = (
    '("pm", "harvest"',
    '("off", "ddpm"',
    '("ddpm", "ddim"',
    '("prepare", "extract"',
    '("shallow", "noise")',
    '("v1", "v2")',
    '("full", "tiny")',
    '("auto", "fixed", "off")',
    '("auto", "fp32", "bf16")',
    '("hubert_base", "whisper-tiny-en")',
)
SOURCE_DIRS = ("infer", "train", "ui")


@pytest.fixture
def fake_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(options.F0_METHODS, FAKE_F0, F0MethodSpec(FAKE_F0, "a test's pitch method"))
    spec = SamplerSpec(FAKE_SAMPLER, "a test's sampler", options.TEACHER_HEAD, 10, 3)
    monkeypatch.setitem(options.SAMPLERS, FAKE_SAMPLER, spec)


def _choice_values(component: object) -> list[str]:
    return [value for _, value in component.choices]


def test_the_studio_offers_the_table(fake_vocabulary: None, tmp_path: Path) -> None:
    from ui.server import build_app

    demo = build_app(tmp_path / "models", tmp_path / "data", tmp_path / "pretrained")
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert FAKE_F0 in _choice_values(by_id["convert-f0"])
    assert FAKE_F0 in _choice_values(by_id["train-f0"])
    assert FAKE_SAMPLER in _choice_values(by_id["convert-sampler"])
    assert _choice_values(by_id["convert-f0"]) == ["auto", *options.F0_METHODS]


def test_the_conversion_cli_offers_the_table(fake_vocabulary: None) -> None:
    from infer.__main__ import build_parser

    args = build_parser().parse_args(
        [
            "convert",
            "in.wav",
            "-o",
            "out.wav",
            "-m",
            "v.pth",
            "--f0-method",
            FAKE_F0,
            "--sampler",
            FAKE_SAMPLER,
        ]
    )
    assert (args.f0_method, args.sampler) == (FAKE_F0, FAKE_SAMPLER)


def test_each_command_offers_its_engines() -> None:
    """convert takes CONVERT_ENGINES, stream and live take LIVE_ENGINES; nothing else."""
    from infer.__main__ import build_parser

    parser = build_parser()
    convert = ["convert", "in.wav", "-o", "out.wav", "-m", "v.pth"]
    stream = ["stream", "in.wav", "-o", "out.wav", "-m", "v.pth"]
    for engine in options.CONVERT_ENGINES:
        assert parser.parse_args([*convert, "--engine", engine]).engine == engine
    for command in (stream, ["live"]):
        for engine in options.LIVE_ENGINES:
            assert parser.parse_args([*command, "--engine", engine]).engine == engine
    for args in ([*convert, "--engine", "student"], [*stream, "--engine", "onnx"]):
        with pytest.raises(SystemExit):
            parser.parse_args(args)


def test_the_training_cli_offers_the_table(fake_vocabulary: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from train.__main__ import build_parser

    args = build_parser().parse_args(["run", "--name", "ann", "--f0-method", FAKE_F0])
    assert args.f0_method == FAKE_F0
    monkeypatch.setitem(options.SLICE_MODES, "fake-slicing", options.Choice("fake-slicing", "test"))
    assert (
        build_parser().parse_args(["fit", "--name", "a", "--slicing", "fake-slicing"]).slicing
        == "fake-slicing"
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--name", "ann", "--f0-method", "not-in-the-table"])


def test_the_validators_accept_the_table(fake_vocabulary: None, tmp_path: Path) -> None:
    from infer.params import ConvertParams, convert_params_from_form
    from infer.refine_params import RefineParams
    from train.settings import TrainSettings
    from ui.forms import convert_params_from_page

    assert ConvertParams(f0_method=FAKE_F0).f0_method == FAKE_F0
    assert RefineParams(sampler=FAKE_SAMPLER, steps=10).steps == 10
    with pytest.raises(ValueError, match="takes 1 to 10 steps"):
        RefineParams(sampler=FAKE_SAMPLER, steps=11)
    assert convert_params_from_form({"sampler": FAKE_SAMPLER, "steps": 3}).sampler == FAKE_SAMPLER
    page = convert_params_from_page({"f0_method": FAKE_F0, "sampler": FAKE_SAMPLER, "steps": 2})
    assert (page.f0_method, page.sampler, page.refine.steps) == (FAKE_F0, FAKE_SAMPLER, 2)
    settings = TrainSettings(name="ann", work_dir=tmp_path, models_dir=tmp_path, f0_method=FAKE_F0)
    assert settings.f0_method == FAKE_F0


def test_without_the_fake_it_is_refused_everywhere(tmp_path: Path) -> None:
    from infer.params import ConvertParams
    from train.settings import TrainSettings
    from ui.forms import StudioError, convert_params_from_page

    with pytest.raises(ValueError, match="f0_method must be one of"):
        ConvertParams(f0_method=FAKE_F0)
    with pytest.raises(StudioError, match="unknown F0 method"):
        convert_params_from_page({"f0_method": FAKE_F0})
    with pytest.raises(StudioError, match="unknown sampler"):
        convert_params_from_page({"sampler": FAKE_SAMPLER})
    with pytest.raises(Exception, match="F0 method must be one of"):
        TrainSettings(name="ann", work_dir=tmp_path, models_dir=tmp_path, f0_method=FAKE_F0)


def _sources() -> list[Path]:
    return [p for folder in SOURCE_DIRS for p in sorted((REPO_DIR / folder).rglob("*.py"))] + [
        REPO_DIR / "app.py"
    ]


@pytest.mark.parametrize("literal", VOCABULARY_LITERALS)
def test_each_vocabulary_literal_is_written_once_at_most(literal: str) -> None:
    pattern = re.compile(re.escape(literal))
    found = [
        f"{path.relative_to(REPO_DIR)}:{number}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert len(found) <= 1, f"{literal} is written in {found}: read it from infer/options.py"
