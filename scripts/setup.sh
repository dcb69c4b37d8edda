#!/usr/bin/env bash
# Creates .venv (once) and installs editseg into it. Sourced by scripts/run.sh and scripts/test.sh.
# Torch: an already-importable torch is kept. Otherwise, with an NVIDIA GPU visible we let pip pick
# its default (CUDA) build; without one we ask for the CPU build (torch==2.13.0; set
# EDITSEG_TORCH_SPEC to override, and PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# on machines whose default index serves CUDA wheels only).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EDITSEG_VENV:-$repo_root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[editseg setup] creating virtual environment in $venv" >&2
    "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
stamp="$venv/.editseg-installed"
if [ ! -f "$stamp" ] || [ "$repo_root/pyproject.toml" -nt "$stamp" ]; then
    if ! "$vpy" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            torch_spec="${EDITSEG_TORCH_SPEC:-torch}"
        else
            torch_spec="${EDITSEG_TORCH_SPEC:-torch==2.13.0}"
        fi
        echo "[editseg setup] installing $torch_spec" >&2
        "$vpy" -m pip install -q "$torch_spec"
    fi
    echo "[editseg setup] installing editseg and its dependencies" >&2
    "$vpy" -m pip install -q -e "$repo_root[dev]"
    touch "$stamp"
fi
