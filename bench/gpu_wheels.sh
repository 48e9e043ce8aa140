#!/usr/bin/env bash
# The wheels the GPU machine lacks, for its Python 3.12 on x86-64 Linux, in build/gpu-wheels.
#
# The GPU machine (see docs/gpu.md) has Python 3.12 with torch (CUDA), onnxruntime (CPU),
# numpy, pytest, pytest-timeout, hypothesis, httpx, anyio, h11, click, uvloop, psutil, pyyaml,
# prometheus-client, grpcio and protobuf, and no network. Everything else modelyard's server and
# its CUDA tests import travels as wheels, pinned to the versions this checkout is tested with
# (grpcio and protobuf too: the generated gRPC stubs need grpcio >= 1.81.1, which that machine's
# own grpcio may not be). numpy and torch never travel: a second numpy would shadow the one its
# torch was built against.
#
#   bench/gpu_wheels.sh [DIR]      # default DIR: build/gpu-wheels (build/ is git-ignored)
#
# Ends non-zero when a wheel cannot be had for that platform or the folder is over the 64 MiB
# the device tool carries in all (the working tree counts towards the same limit).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-build/gpu-wheels}
# The checkout's virtualenv where there is one: it has `wheel`, which building modelyard's needs.
if [[ -x .venv/bin/python ]]; then DEFAULT_PY=.venv/bin/python; else DEFAULT_PY=python3; fi
PY=${PYTHON:-$DEFAULT_PY}
LIMIT_MIB=${LIMIT_MIB:-48}   # of the 64 MiB: the rest is left for the working tree itself

# name==version: what `pip list` shows in this checkout's virtualenv (pyproject.toml's ranges).
PACKAGES=(
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing_extensions==4.16.0
  starlette==1.10.0 anyio==4.16.0 uvicorn==0.54.0 httptools==0.9.0
  orjson==3.13.0 pysimdjson==7.0.2
  grpcio==1.85.3 protobuf==6.33.6 hpack==4.2.0
)

rm -rf "$DIR"
mkdir -p "$DIR"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$DIR" "${PACKAGES[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
# modelyard itself, from this checkout (pure Python: one wheel for every platform).
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DIR" . >/dev/null

# They install together on that interpreter's tags (what the GPU machine's pip will check).
check=$(mktemp -d)
"$PY" -m pip install --quiet --no-index --no-deps --only-binary=:all: --target "$check" \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 "$DIR"/*.whl
rm -rf "$check"

total=$(du -sb "$DIR" | cut -f1)
echo "wheels in $DIR:"
ls -l "$DIR" | awk 'NR>1 {printf "  %8.2f MiB  %s\n", $5/1048576, $9}' | sort -rn
printf 'total: %.1f MiB of the %d MiB allowed for wheels\n' "$(echo "$total/1048576" | bc -l)" "$LIMIT_MIB"
if (( total > LIMIT_MIB * 1048576 )); then
  echo "too big for the device tool's carry limit: drop the largest optional wheels" >&2
  exit 1
fi
