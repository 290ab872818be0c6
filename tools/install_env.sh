#!/usr/bin/env bash
# Create (or reuse) ./.venv and install difflid with its pinned stack.
# Usage: bash tools/install_env.sh [--dev]     (--dev adds pytest, ruff and the test references: guided-diffusion,
#                                              diffusers, onnx, onnxscript, onnxruntime)
#
# Why this script and not a bare `pip install -e .`:
#  * basicsr 1.4.2 is an sdist whose setup_requires lists torch; with build isolation pip would build
#    it inside a throw-away env holding a second multi-GB torch. We install torch first and build
#    everything with --no-build-isolation, which needs setuptools and wheel up to date.
#  * torch 2.14.1 / torchvision 0.29.1 are the newest pair whose torchvision imports on CPU here.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
# pip -q still warns about every unused local index location; keep the log readable (exit codes are kept)
pip_install() { $py -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pip_install -U setuptools wheel
pip_install --no-build-isolation torch==2.14.1 torchvision==0.29.1
pip_install --no-build-isolation -e ".${extra}"
$py -c "import difflid; print('difflid', difflid.__version__, 'installed in .venv')"
