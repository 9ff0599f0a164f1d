#!/usr/bin/env bash
# The GPU check from a fresh copy of the working tree, with the models already built: a virtual
# environment with the server's pinned requirements (onnxruntime-gpu of the same version instead of
# onnxruntime, with its CUDA and cuDNN libraries) and the load tester's, then
# benchmarks/gpu_check.py: every model served with TUNESERVE_DEVICE=auto (and cuda, cpu), its
# answers compared with fp32's on the CPU, its throughput measured per provider.
#
#   benchmarks/gpu_check.sh [REPOSITORY] [gpu_check.py options ...]
#
# REPOSITORY is the built model repository (default: exported). Environment:
#   GPU_CHECK_VENV      where the environment goes (default /tmp/tuneserve-gpu-venv; made once, reused)
#   GPU_CHECK_WHEELS    a folder of wheels to install from without an index (a machine with no network)
#   GPU_CHECK_ORT       the ONNX Runtime to install, at serving/requirements.txt's version (default
#                       onnxruntime-gpu[cuda,cudnn]: with CUDA's and cuDNN's libraries as packages)
#   GPU_CHECK_TENSORRT  requirement for the TensorRT libraries the TensorRT provider loads (e.g.
#                       tensorrt-cu13-libs); unset, the provider reports that they are missing
#   GPU_CHECK_PYTHON    an interpreter that already has all of it: no environment is made
# The environment sees the system's packages, so a machine that has CUDA's libraries as Python
# packages (nvidia-*) does not download them again.
#
# Writes benchmarks/results/gpu.{json,md} (then `make bench-report` for docs/benchmarks.md). Exits 1
# when a model served on a GPU provider disagrees with the CPU or a server does not start.
# Without a GPU: `benchmarks/gpu_check.sh exported --providers CPUExecutionProvider --out /tmp/gpu`
# runs all of it but the GPU providers.
set -euo pipefail
cd "$(dirname "$0")/.."

repository=exported
if [[ $# -gt 0 && $1 != -* ]]; then
  repository=$1
  shift
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
  python=$GPU_CHECK_PYTHON
else
  venv=${GPU_CHECK_VENV:-/tmp/tuneserve-gpu-venv}
  python=$venv/bin/python
  [[ -x $python ]] || python3 -m venv --system-site-packages "$venv"
  requirements=$(mktemp)
  trap 'rm -f "$requirements"' EXIT
  sed -E "s/^onnxruntime==(.*)\$/${GPU_CHECK_ORT:-onnxruntime-gpu[cuda,cudnn]}==\\1/" serving/requirements.txt >"$requirements"
  printf '%s\n' "aiohttp>=3.9" "hdrhistogram>=0.10" "prometheus-client>=0.20" >>"$requirements"
  [[ -z ${GPU_CHECK_TENSORRT:-} ]] || echo "$GPU_CHECK_TENSORRT" >>"$requirements"
  from=()
  [[ -z ${GPU_CHECK_WHEELS:-} ]] || from=(--no-index --find-links "$GPU_CHECK_WHEELS")
  echo "installing the server's requirements with onnxruntime-gpu into $venv"
  started=$SECONDS
  "$python" -m pip install --quiet --disable-pip-version-check "${from[@]}" -r "$requirements"
  echo "installed in $((SECONDS - started)) s"
fi

"$python" - <<'EOF'
import onnxruntime as ort
print(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
EOF
exec "$python" benchmarks/gpu_check.py --repository "$repository" "$@"
