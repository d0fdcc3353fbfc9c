#!/usr/bin/env bash
# Creates the nnU-Net v2 virtual environment that bench/bench_realdata.py runs its third recipe in.
# nnU-Net is a benchmark-only extra: it is never a dependency of unet_pipeline.
#
# Usage: bash bench/setup_nnunet.sh [VENV]   (default: ../nnunet-venv beside the repository, the
# path bench_realdata.py looks for; or $UNET_BENCH_NNUNET_VENV)
# Python: $PYTHON (default python3), 3.10 or newer.
#
# Torch is installed first and pinned through a constraints file while nnunetv2 comes in, so pip
# keeps the CPU wheel instead of pulling a CUDA build of several GB. Here pip finds that CPU wheel
# in its local find-links folder; elsewhere point pip at a CPU build for the first install (e.g.
# PIP_INDEX_URL set to PyTorch's CPU wheel index) or accept the default build. nnunetv2 also pulls
# torchvision and timm; the PyPI torchvision built for another torch fails to import beside this
# one, and only nnU-Net's `primus` architectures need timm, so both are removed afterwards (the
# benchmark's child imports neither).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-${UNET_BENCH_NNUNET_VENV:-$here/../../nnunet-venv}}"
python="${PYTHON:-python3}"
torch_version="${NNUNET_TORCH_VERSION:-2.13.0}"

"$python" -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install --upgrade pip
"$pip" install "torch==$torch_version"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" > "$constraints"
"$pip" install -c "$constraints" nnunetv2
"$pip" uninstall -y torchvision timm || true
"$venv/bin/python" - <<'EOF'
import nnunetv2, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
print(f"nnU-Net v2 ready: torch {torch.__version__}, nnunetv2 at {nnunetv2.__path__[0]}")
EOF
echo "python for bench_realdata.py --nnunet-python: $(cd "$venv" && pwd)/bin/python"
