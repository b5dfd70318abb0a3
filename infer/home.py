"""Where Timbre's folders are, the same way from a checkout and from ``pip install .``.

- models, data: ``--models-dir`` / ``--data-dir``, else ``$TIMBRE_MODELS_DIR`` / ``$TIMBRE_DATA_DIR``,
  else ``models/`` and ``data/`` under the home folder: ``$TIMBRE_HOME``, else the current directory.
- pretrained base files: ``--pretrained-dir``, else ``$TIMBRE_PRETRAINED_DIR``, else a checkout's own
  ``pretrained/`` folder, else ``pretrained/`` under the home folder.
- the studio's own files (CSS, the Live tab's scripts, probe phrases): a checkout's ``assets/``,
  installed the ``timbre_assets`` package (the same files, shipped as package data).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

HOME_ENV_VAR = "TIMBRE_HOME"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the ``infer`` package: the checkout, or ``site-packages`` when installed."""
ASSETS_PACKAGE = "timbre_assets"
"""The name ``assets/`` is installed under (see ``pyproject.toml``)."""


def home_dir() -> Path:
    """``$TIMBRE_HOME``, else the current directory: the base of the default models/data folders."""
    override = os.environ.get(HOME_ENV_VAR, "").strip()
    return Path(override).expanduser().absolute() if override else Path.cwd()


def is_checkout() -> bool:
    """True when running from a source checkout (its ``pretrained/README.md`` sits beside ``infer/``)."""
    return (SOURCE_ROOT / "pretrained" / "README.md").is_file()


def assets_dir() -> Path:
    """The folder of the studio's own files: a checkout's ``assets/``, else the installed package."""
    local = SOURCE_ROOT / "assets"
    if local.is_dir():
        return local
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return local  # neither: paths under it will report a missing file by name


def asset_path(*parts: str) -> Path:
    """A file of the studio's own, e.g. ``asset_path('live', 'live.js')``."""
    return assets_dir().joinpath(*parts)
