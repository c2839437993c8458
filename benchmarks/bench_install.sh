#!/usr/bin/env bash
# Size and install time of a fresh core venv (pip install .) and a full one (pip install '.[all]'),
# side by side in one run, then `geoseg demo` in the core venv. From the repository root:
#   bash benchmarks/bench_install.sh [WORKDIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
for kind in core all; do
  env="$WORK/venv-$kind"
  rm -rf "$env"
  spec="$ROOT"
  [ "$kind" = all ] && spec="$ROOT[all]"
  start=$(date +%s.%N)
  python3 -m venv "$env"
  "$env/bin/pip" install -q "$spec" >/dev/null 2>&1
  end=$(date +%s.%N)
  size=$(du -sm "$env" | cut -f1)
  printf '%s venv: %s MB, install %.0f s\n' "$kind" "$size" "$(echo "$end - $start" | bc)"
done
cd "$WORK"
rm -rf demo-core
"$WORK/venv-core/bin/geoseg" demo demo-core 2>&1 | grep -E "IoU|predict|vectorize"
