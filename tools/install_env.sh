#!/usr/bin/env bash
# Create (or reuse) ./.venv and install difflid with its pinned stack.
# Usage: bash tools/install_env.sh [--dev]     (--dev adds pytest, ruff and the test references: guided-diffusion,
#                                              diffusers, onnx, onnxscript, onnxruntime; the demo's gradio and
#                                              selenium, and, as root with apt-get, Debian's chromium and
#                                              chromium-driver for the demo's browser test)
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

# The demo's browser test (tests/test_web_demo.py) drives headless Chromium; it is skipped without it, so a browser
# that cannot be installed here is said in one line and never fails the install.
install_browser() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "note: the demo's browser test will be skipped: chromium/chromedriver are missing and installing them needs root (apt-get install chromium chromium-driver)"
  elif ! command -v apt-get >/dev/null; then
    echo "note: the demo's browser test will be skipped: chromium/chromedriver are missing and there is no apt-get to install them"
  elif ! apt_log=$( { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                        --no-install-recommends chromium chromium-driver; } 2>&1 ); then
    echo "note: the demo's browser test will be skipped: apt-get could not install chromium chromium-driver" \
         "($(printf '%s\n' "$apt_log" | tail -n 1))"
  else
    echo "installed chromium and chromedriver (Debian) for the demo's browser test"
  fi
}
if [ -n "$extra" ]; then
  install_browser
fi
