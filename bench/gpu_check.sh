#!/usr/bin/env bash
# The GPU check in one command, for the GPU machine (docs/gpu.md says how to call it there).
#
#   bench/gpu_check.sh [--wheels DIR] [gpu_check.py flags: --out DIR, --steps a,b, --rehearse]
#
# 1. installs the carried wheels (bench/gpu_wheels.sh made them; default build/gpu-wheels)
#    offline into /tmp/gpu-check-site, without touching the machine's own packages;
# 2. runs bench/gpu_check.py with this checkout's sources first on the path (the workers
#    inherit it), its output also in console.log beside the results.
# Results go to --out, else $OUT (the device tool's folder), else ./gpu-check-out.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=build/gpu-wheels
SITE=/tmp/gpu-check-site
OUT_DIR=${OUT:-$PWD/gpu-check-out}
ARGS=()
while (($#)); do
  case $1 in
    --wheels) WHEELS=$2; shift 2 ;;
    --out) OUT_DIR=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/console.log") 2>&1

echo "[gpu-check] $(date -u +%FT%TZ) on $(hostname): installing wheels from $WHEELS"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  # --no-deps: the list is complete (gpu_wheels.sh), and pip must not look for anything else.
  timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/*.whl || echo "[gpu-check] wheel install FAILED"
else
  echo "[gpu-check] no wheels in $WHEELS: using the packages already installed"
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" - <<'PY' || echo "[gpu-check] an import FAILED: the steps that need it will fail"
import importlib
for name in ("modelyard", "pydantic", "starlette", "uvicorn", "orjson", "simdjson", "grpc",
             "google.protobuf", "httpx", "numpy", "torch", "pytest"):
    module = importlib.import_module(name)
    print(f"  {name} {getattr(module, '__version__', '')} {getattr(module, '__file__', '')}")
PY
# Inside the device tool's 600 s per command, counted from this script's start, with time
# for the driver to pack what it measured before the hard stop.
left=$((590 - SECONDS))
timeout --kill-after=5 "$left" "$PY" bench/gpu_check.py --out "$OUT_DIR" \
  --deadline-s $((left - 25)) "${ARGS[@]}"
code=$?
echo "[gpu-check] $(date -u +%FT%TZ) done, exit $code; results in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
exit $code
