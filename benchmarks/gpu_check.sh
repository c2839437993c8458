#!/usr/bin/env bash
# GPU figures for the speed issue in one short device call (the lent machines have no geoseg
# dependencies beyond torch/timm/numpy/scipy and cannot reach PyPI, so the missing ones travel
# as wheels).
#
# Here, once per checkout (downloads about 35 MB of cp312 manylinux wheels into .whl/, which
# .git/info/exclude keeps out of git):
#
#     bash benchmarks/gpu_check.sh fetch
#
# Then with the device tool, carrying the wheels (about 5-7 minutes on an H100):
#
#     run(command="bash benchmarks/gpu_check.sh run", carry=[".whl"], timeout_s=600)
#
# It prints, and writes under $OUT: the GPU, bench_backends.py on CUDA (model-only and end
# to end on the same tiles, fp32 vs autocast, the 85 % target), `geoseg tune --device cuda`,
# and nvidia-smi's utilisation samples taken while the benchmarks ran.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  rasterio==1.4.4
  pyproj==3.7.2
  shapely==2.2.0
  affine==3.0.1
  segmentation-models-pytorch==0.6.0
  click-plugins==1.1.1.2
  cligj==0.7.2
)

case "${1:-run}" in
fetch)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
  du -sh .whl
  ;;
run)
  out="${OUT:-/tmp/geoseg-gpu}"
  mkdir -p "$out"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheels did not install; run 'fetch' here first"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 GEOSEG_CACHE_DIR=/tmp/geoseg-cache
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    | tee "$out/gpu.txt"
  python3 -c "import torch, rasterio, geoseg; print('torch', torch.__version__, 'cuda',
    torch.cuda.is_available(), 'rasterio', rasterio.__version__, 'gdal', rasterio.__gdal_version__)" \
    | tee -a "$out/gpu.txt" || exit 1
  nvidia-smi dmon -s u -d 1 > "$out/dmon.txt" 2>&1 &
  dmon=$!
  timeout 420 python3 benchmarks/bench_backends.py --device cuda --size 8192 --rounds 3 \
    --workdir /tmp/geoseg-bench 2>&1 | tee "$out/bench_backends.txt"
  timeout 90 python3 -m geoseg tune --device cuda --seconds 4 2>&1 | tee "$out/tune.txt"
  kill "$dmon" 2>/dev/null
  # Utilisation while the benchmarks ran: mean and share of samples at >= 90 % SM busy.
  awk '$1 ~ /^[0-9]+$/ { n++; s += $2; if ($2 >= 90) b++ }
       END { if (n) printf "SM utilisation: mean %.0f %%, >= 90 %% in %.0f %% of %d samples\n",
             s / n, 100 * b / n, n }' "$out/dmon.txt" | tee "$out/utilisation.txt"
  ;;
*)
  echo "usage: $0 fetch|run" >&2
  exit 2
  ;;
esac
