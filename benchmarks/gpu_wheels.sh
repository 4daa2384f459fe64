#!/usr/bin/env bash
# Prepare .whl/ for benchmarks/gpu_check.sh: run HERE (a machine that reaches PyPI), once, from the
# repository root. The lent GPU machine (/work/.library/device) reaches no package index and has
# Python 3.12 with torch 2.11, transformers 5.17, pyarrow, scipy, matplotlib, typer, rich, accelerate,
# but not Ray, diffusers, pydantic, jsonschema (Ray), tensorboardX (Ray Train), importlib_metadata
# (diffusers) or typing_extensions >= 4.16 (pydantic); peft is carried at the project's pin. Its own
# transformers 5.17 is used (the project needs >= 5.10.4; 5.25 with its huggingface_hub would not fit).
# A call carries at most 64 MiB with the working tree (~15 MB): Ray's wheel alone is 79 MB, so it
# travels trimmed (no Java jars, RLlib, Ray LLM or dashboard web build: none is used here) and
# xz-compressed, ~29 MB; the rest are plain wheels, ~11 MB.
#   bash benchmarks/gpu_wheels.sh            # then: du -sh .whl  (~39 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$1" "${@:2}"
}
download .whl diffusers==0.42.1 peft==0.21.2 pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 \
  typing_inspection==0.4.5 jsonschema==4.26.0 jsonschema_specifications==2025.9.1 referencing==0.37.0 \
  rpds_py==2026.9.1 tensorboardX==2.6.5 importlib_metadata==8.7.0 zipp==4.1.2 typing_extensions==4.16.0
if [ ! -f .whl/ray-2.60.0-trimmed.tar.xz ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  download "$tmp" ray==2.60.0
  mkdir "$tmp/x"
  (cd "$tmp/x" && unzip -q "$tmp"/ray-2.60.0-*.whl)
  rm -rf "$tmp/x/ray/jars" "$tmp/x/ray/rllib" "$tmp/x/ray/llm" "$tmp/x/ray/dashboard/client/build"
  tar -C "$tmp/x" -cf - . | xz -T0 -6 > .whl/ray-2.60.0-trimmed.tar.xz.part
  mv .whl/ray-2.60.0-trimmed.tar.xz.part .whl/ray-2.60.0-trimmed.tar.xz
fi
du -sh .whl
