"""The house's dependency direction: ui -> train -> infer, ui -> infer; never upward, no gradio below ui."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_DIR

FORBIDDEN = {
    "infer": ("train", "ui", "gradio", "gradio_client"),
    "train": ("ui", "gradio", "gradio_client"),
}


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (function-level ones included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_rooms_never_import_upward(package: str) -> None:
    offending = [
        f"{path.relative_to(REPO_DIR)} imports {name}"
        for path in sorted((REPO_DIR / package).rglob("*.py"))
        for name in sorted(_imported_modules(path))
        if _top(name) in FORBIDDEN[package]
    ]
    assert not offending, offending


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from ui.forms import Form\n    import gradio as gr\n")
    assert _imported_modules(sample) == {"os", "ui.forms", "gradio"}


def test_the_job_worker_runs_without_gradio() -> None:
    assert "gradio" not in {_top(n) for n in _imported_modules(REPO_DIR / "ui" / "jobs.py")}
    assert "gradio" not in {_top(n) for n in _imported_modules(REPO_DIR / "ui" / "__init__.py")}
