#!/usr/bin/env bash
# Set up (or update) the project's virtual environment: .venv with torch, nerfstudio and vggsfm-ns.
#
#   scripts/install.sh            # idempotent: re-running only installs what is missing or changed
#
# Targets a fresh Debian/Ubuntu machine with Python 3.11 and access to the package registries
# (apt, PyPI). Environment overrides: PYTHON (interpreter, default python3.11), VENV (default .venv),
# VGGSFM_NS_SKIP_APT=1 (skip the system packages).
#
# Why the steps look like this (docs: /work/shared/notes/nerfstudio_env.md, README "Install"):
# * torch/torchvision come from PyPI with --isolated: PyPI's Linux builds are CUDA builds that also
#   run on CPU-only machines. A CPU-only torch wheel breaks PyPI's torchvision (its ops library
#   links CUDA torch), and with it nerfstudio's ns-train and transformers' vision models.
# * constraints.txt keeps pip from upgrading torch while resolving nerfstudio (that would pull a
#   different torch/torchvision pair and ~3 GB of CUDA libraries again).
# * apt: libusb-1.0-0 (open3d, imported by ns-process-data), chromium (viewer test), a C compiler
#   (nerfstudio builds two small sdists).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    PYTHON=python3  # any Python >= 3.10 works; 3.11 is the tested one
fi
VENV="${VENV:-.venv}"
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0

log() { printf '\033[1;34m[install]\033[0m %s\n' "$*"; }

# ---- system packages -----------------------------------------------------------------------
if [ "${VGGSFM_NS_SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    for pkg in libusb-1.0-0 chromium gcc g++; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ! "$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1; then
        missing+=("python3-venv")
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        log "apt-get install ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
fi

# ---- virtual environment -------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# ---- torch + torchvision (PyPI builds) -----------------------------------------------------
if ! "$PY" - "$TORCH_VERSION" "$TORCHVISION_VERSION" >/dev/null 2>&1 <<'PYCHECK'
import sys
import torch, torchvision
ok = torch.__version__.split("+")[0] == sys.argv[1] and torchvision.__version__.split("+")[0] == sys.argv[2]
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # fails with a mismatched CPU torch
sys.exit(0 if ok else 1)
PYCHECK
then
    log "pip install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (PyPI)"
    "$PY" -m pip install --isolated --disable-pip-version-check -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# ---- nerfstudio, vggsfm-ns and the test tools ----------------------------------------------
log "pip install -c constraints.txt .[nerfstudio,dev]"
"$PY" -m pip install --disable-pip-version-check -q -c constraints.txt ".[nerfstudio,dev]"

log "checking the installation"
"$PY" - <<'PYCHECK'
import importlib.metadata as md
import torch, torchvision, nerfstudio, pycolmap, vggsfm_ns  # noqa: F401
from nerfstudio.scripts.process_data import Commands
import typing
names = [a.__metadata__[0].name for a in typing.get_args(Commands)]
assert "vggsfm" in names, f"ns-process-data has no vggsfm subcommand: {names}"
print(f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), torchvision {torchvision.__version__}, "
      f"nerfstudio {md.version('nerfstudio')}, pycolmap {pycolmap.__version__}, vggsfm-ns {md.version('vggsfm-ns')}")
PYCHECK
log "done: $VENV is ready (ns-process-data vggsfm, vggsfm-ns)"
