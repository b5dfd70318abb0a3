"""The ``timbre`` command's dispatch, and that pyproject.toml ships every package and studio file."""

from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infer import home
from ui import cli

REPO_DIR = Path(__file__).resolve().parents[1]


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"timbre \d+\.\d+\.\d+\S*", out), out
    assert out.endswith(cli.version())


def test_convert_help_is_the_infer_parser_under_the_timbre_name(capsys):
    assert cli.main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: timbre convert")
    assert "--model" in out and "--f0-method" in out and "--engine" in out


@pytest.mark.parametrize(
    ("argv", "prog", "flag"),
    [
        (["train", "--help"], "usage: timbre train", "fit"),
        (["studio", "--help"], "usage: timbre studio", "--models-dir"),
        (["assets", "--help"], "usage: timbre assets", "download"),
        (["import", "--help"], "usage: timbre import", "--max-size"),
        (["export-onnx", "--help"], "usage: timbre export-onnx", "--output"),
        (["cover", "--help"], "usage: timbre cover", "--separator"),
    ],
)
def test_every_subcommand_hands_over_to_its_program(capsys, argv, prog, flag):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(prog) and flag in out


def test_unknown_subcommand_and_usage_errors(capsys):
    assert cli.main(["transmogrify"]) == 2
    assert "unknown subcommand 'transmogrify'" in capsys.readouterr().err
    assert cli.main(["convert", "--no-such-flag"]) == 2
    assert cli.main([]) == 2
    assert "export-onnx" in capsys.readouterr().out


def test_every_timbre_subcommand_is_a_real_command():
    from infer.__main__ import build_parser

    infer_commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for sub in cli.SUBCOMMANDS:
        if sub.target == "infer":
            assert sub.name in infer_commands, sub.name


def test_python_dash_m_entry_points_still_work():
    for module in ("infer", "train"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0 and done.stdout.startswith(f"usage: python -m {module}"), done.stderr


def _pyproject() -> str:
    return (REPO_DIR / "pyproject.toml").read_text(encoding="utf-8")


def test_pyproject_lists_every_package_folder():
    block = re.search(r"^packages = \[(.*?)\]", _pyproject(), re.S | re.M)
    assert block is not None
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    found = {
        p.parent.relative_to(REPO_DIR).as_posix().replace("/", ".")
        for top in ("infer", "train", "ui")
        for p in (REPO_DIR / top).rglob("__init__.py")
    }
    assert listed == found | {home.ASSETS_PACKAGE}


def test_package_data_covers_the_files_the_studio_reads():
    patterns = re.search(r"^timbre_assets = \[(.*?)\]", _pyproject(), re.M)
    assert patterns is not None
    shipped = {
        Path(f).relative_to(REPO_DIR / "assets").as_posix()
        for pattern in re.findall(r'"([^"]+)"', patterns.group(1))
        for f in glob.glob(str(REPO_DIR / "assets" / pattern))
    }
    from train.report.config import PROBE_PHRASES_PATH
    from ui.live import STATIC_DIR

    needed = {"studio.css", "probes/phrases.tsv", *(f"live/{p.name}" for p in STATIC_DIR.glob("*.js"))}
    assert home.asset_path("probes", "phrases.tsv") == PROBE_PHRASES_PATH
    assert len(needed) >= 4 and needed <= shipped


def test_default_folders_follow_timbre_home(monkeypatch, tmp_path):
    from infer.assets import default_pretrained_dir
    from infer.catalog import resolve_data_dir, resolve_models_dir

    for var in ("TIMBRE_MODELS_DIR", "TIMBRE_DATA_DIR", "TIMBRE_PRETRAINED_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(home.HOME_ENV_VAR, str(tmp_path))
    assert resolve_models_dir(None) == tmp_path / "models"
    assert resolve_data_dir(None) == tmp_path / "data"
    assert default_pretrained_dir() == REPO_DIR / "pretrained"  # a checkout keeps its own
    monkeypatch.setattr(home, "SOURCE_ROOT", tmp_path / "site-packages")  # as installed
    assert default_pretrained_dir() == tmp_path / "pretrained"
    monkeypatch.delenv(home.HOME_ENV_VAR)
    monkeypatch.chdir(tmp_path)
    assert resolve_models_dir(None) == tmp_path / "models"
