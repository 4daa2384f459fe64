#!/usr/bin/env bash
# The GPU checks of issue 22 in one call on a lent GPU machine (H200: ends within BUDGET_S = 525 s),
# results in $OUT (the device tool brings back up to 8 files):
#   summary.txt   one line per stage: time, exit status, what it found
#   env.json      card, driver, CUDA, Python and package versions; whether vLLM imports
#   train.log     `craft train` of experiments/gpu/sd15_craft.yaml on one GPU worker, 20 steps (T = 10)
#   evaluate.log  `craft evaluate` of that run: Ray Data with its GPU actor pools
#   bench.json    bench_train.py memory --base sd15 --device cuda, 512 px, T = 50, K = 1 then 5,
#   bench.log     batch 8 then 1, variants bf16 | fp32 | bf16+compile | bf16+cl, gradient checkpointing
#                 on, MFU; it gets the time the other stages left (rows most wanted first; a deadline
#                 cuts the rest, marked "not run" or "stopped")
#   results.json  the run's per-step metrics (step time, loss, compiled, ...) and the evaluation's tables
#
# Before the call, here (a machine that reaches PyPI): bash benchmarks/gpu_wheels.sh   (-> .whl/)
# The call:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Part of it: STAGES="bench" or "train evaluate" (default: all); rows: BENCH_VARIANTS, BENCH_K,
# BENCH_BATCH, BENCH_DEADLINE_S; TRAIN_COMPILE=true compiles the training run too.
# Dry run without a GPU (tiny sizes, the same stages and files): DEVICE=cpu bash benchmarks/gpu_check.sh
# (OUT defaults to ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
START=$SECONDS
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$REPO/gpu-out}
WORK=${WORK:-$(mktemp -d /tmp/craft-gpu-check.XXXXXX)}
STAGES=${STAGES:-setup env train evaluate bench}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
PY=${PYTHON:-python3}

if [ "$DEVICE" = cuda ]; then
  BUDGET_S=${BUDGET_S:-525}
  BENCH=(--base sd15 --device cuda --resolution 512 --T 50 --K "${BENCH_K:-1,5}" --batch "${BENCH_BATCH:-8,1}"
         --variants "${BENCH_VARIANTS:-bf16,fp32,bf16+compile,bf16+cl}" --ckpt-values on --flops)
  BENCH_DEADLINE_S=${BENCH_DEADLINE_S:-100000}  # i.e. what is left of BUDGET_S
  PROBE_TIMEOUT_S=${PROBE_TIMEOUT_S:-400}
  TRAIN_CAP_S=130
  EVAL_CAP_S=130
  TRAIN_SET="training: {steps: 20, sampler_steps: 10, checkpoint_every: 10, report_every: 5, compile: ${TRAIN_COMPILE:-false}}"
  SIZE_SET=""
  EVAL_SET="evaluation: {n_per_label: 2, sampler_steps: 10, classifier_epochs: 5}"
else  # the dry run: tiny models on CPU, the same code paths (compile with aot_eager: inductor's C++ build is minutes)
  BUDGET_S=${BUDGET_S:-1500}
  BENCH=(--base tiny --device cpu --resolution 32 --T 2 --K 1 --batch 2
         --variants "${BENCH_VARIANTS:-bf16+compile+aot,bf16,fp32}" --ckpt-values on --flops)
  BENCH_DEADLINE_S=${BENCH_DEADLINE_S:-600}
  PROBE_TIMEOUT_S=${PROBE_TIMEOUT_S:-300}
  TRAIN_CAP_S=600
  EVAL_CAP_S=600
  TRAIN_SET="training: {steps: 2, sampler_steps: 2, batch_size: 2, checkpoint_every: 1, report_every: 1, compile: ${TRAIN_COMPILE:-false}, compile_backend: aot_eager}"
  SIZE_SET="model: {base: tiny}
dataset: {resolution: 32}
scaling: {gpus_per_worker: 0, cpus_per_worker: 1}"
  EVAL_SET="evaluation: {n_per_label: 1, sampler_steps: 2, classifier_epochs: 1}"
fi

elapsed() { echo $((SECONDS - START)); }
left() { echo $((BUDGET_S - (SECONDS - START))); }
note() { echo "[$(elapsed) s] $*" | tee -a "$OUT/summary.txt"; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }
capped() { local cap=$1 l; l=$(left); [ "$l" -lt "$cap" ] && cap=$l; [ "$cap" -lt 1 ] && cap=1; echo "$cap"; }

note "gpu_check: DEVICE=$DEVICE STAGES='$STAGES' BUDGET_S=$BUDGET_S WORK=$WORK"

# 1. packages: the carried wheels (and trimmed Ray) into /tmp/site, ahead of the machine's own
if wants setup && [ -d .whl ]; then
  rm -rf /tmp/site && mkdir -p /tmp/site
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
     && "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall('/tmp/site', filter='tar')" .whl/ray-*-trimmed.tar.xz; then
    note "setup: wheels installed into /tmp/site ($(ls .whl | wc -l) files)"
  else
    note "setup: FAILED to install .whl (see above); continuing with the machine's packages"
  fi
  export PYTHONPATH=/tmp/site:$REPO
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
CRAFT=("$PY" -m craft_ray.cli)

# 2. the machine
if wants env; then
  "$PY" - "$OUT/env.json" <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import importlib, json, os, platform, subprocess, sys
env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
try:
    env["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.TimeoutExpired) as exc:
    env["nvidia_smi"] = f"unavailable: {exc}"
for name in ("torch", "triton", "diffusers", "transformers", "peft", "ray", "pydantic", "pyarrow", "vllm"):
    try:
        module = importlib.import_module(name)
        env[name] = getattr(module, "__version__", "?") + f" ({os.path.dirname(module.__file__)})"
    except Exception as exc:  # noqa: BLE001 - absent or broken: say which
        env[name] = f"not importable: {type(exc).__name__}: {str(exc)[:200]}"
try:
    import torch
    env["cuda"] = torch.version.cuda
    env["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30 if env["gpu"] else None
except Exception as exc:  # noqa: BLE001
    env["gpu"] = f"error: {exc}"
json.dump(env, open(sys.argv[1], "w"), indent=2)
print("env:", env.get("gpu"), "|", env.get("nvidia_smi"), "| torch", env.get("torch", "")[:12],
      "| vllm:", env["vllm"][:80])
PYEOF
fi

# 3. craft train on one GPU worker, then craft evaluate of the run
RUN="$WORK/runs/gpu-sd15-craft"
if wants train; then
  "${CRAFT[@]}" data phantom --modality chest --n 96 --size 64 --out "$WORK/data/chest" > "$OUT/train.log" 2>&1
  cat > "$WORK/sd15.yaml" <<YAML
extends: [$REPO/experiments/gpu/sd15_craft.yaml]
dataset: {uri: $WORK/data/chest}
storage: {path: $WORK/runs}
$TRAIN_SET
$EVAL_SET
YAML
  CONFIG="$WORK/sd15.yaml"
  if [ -n "$SIZE_SET" ]; then  # the dry run's sizes, on top (a YAML mapping keeps one value per key)
    printf 'extends: [sd15.yaml]\n%s\n' "$SIZE_SET" > "$WORK/dry.yaml"
    CONFIG="$WORK/dry.yaml"
  fi
  cap=$(capped "$TRAIN_CAP_S")
  note "train: craft train of experiments/gpu/sd15_craft.yaml with $TRAIN_SET (cap ${cap} s)"
  timeout "$cap" "${CRAFT[@]}" train --config "$CONFIG" >> "$OUT/train.log" 2>&1
  status=$?
  note "train: exit $status; $(tail -n 3 "$OUT/train.log" | tr '\n' ' ' | cut -c1-300)"
fi
if wants evaluate; then
  cap=$(capped "$EVAL_CAP_S")
  note "evaluate: craft evaluate --run $RUN (cap ${cap} s)"
  timeout "$cap" "${CRAFT[@]}" evaluate --run "$RUN" > "$OUT/evaluate.log" 2>&1
  note "evaluate: exit $?; $(grep -iE 'error|actor|GPU' "$OUT/evaluate.log" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"
fi
if wants train || wants evaluate; then
  "$PY" - "$RUN" "$OUT/results.json" <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
run, out = Path(sys.argv[1]), {}
lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
out["train_metrics"] = [json.loads(line) for line in lines]
steps = [m["step_time_s"] for m in out["train_metrics"] if "step_time_s" in m]
if steps:
    out["train_step_s_median_after_first"] = statistics.median(steps[1:] or steps)
metrics = run / "eval" / "metrics.json"
out["evaluation"] = json.loads(metrics.read_text()) if metrics.exists() else None
placement = run / "placement.jsonl"
out["placement"] = placement.read_text().splitlines() if placement.exists() else None
json.dump(out, open(sys.argv[2], "w"), indent=2, default=str)
last = out["train_metrics"][-1] if out["train_metrics"] else {}
print(f"results: {len(steps)} train steps, median step {out.get('train_step_s_median_after_first')} s, "
      f"compiled={last.get('compiled')}, evaluation {'written' if out['evaluation'] else 'missing'}")
PYEOF
fi
# 4. the benchmark table, in the time left (every row a fresh process; the JSON is rewritten after each row)
if wants bench; then
  deadline=$(capped "$BENCH_DEADLINE_S")
  deadline=$((deadline - 15))  # leave time to write the table
  note "bench: ${BENCH[*]} (deadline ${deadline} s)"
  timeout $((deadline + 30)) "$PY" benchmarks/bench_train.py memory "${BENCH[@]}" --deadline-s "$deadline" \
    --probe-timeout-s "$PROBE_TIMEOUT_S" --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  note "bench: exit $?"
  "$PY" - "$OUT/bench.json" <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    sys.exit(f"bench: no table ({exc})")
cols = doc["columns"]
for row in doc["rows"]:
    r = dict(zip(cols, row))
    done = isinstance(r["step s"], (int, float))
    what = (f"{r['step s']:.3g} s/step, +{r['peak added MiB'] / 1024:.1f} GiB, total {r['peak total MiB'] / 1024:.1f} GiB, "
            f"setup {r['setup s']:.0f} s, compiled {r['compiled']}, MFU {r.get('MFU', float('nan')):.1%}"
            if done else str(r["step s"])[:160])
    print(f"  {r['variant']:>14} batch {r['batch']} K {r['K']} T {r['T']}: {what}")
PYEOF
fi

for f in "$OUT"/*.log; do  # the tool brings back files up to 16 MiB
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 8000000 ] && tail -c 8000000 "$f" > "$f.tmp" && mv "$f.tmp" "$f"
done
note "gpu_check: done in $(elapsed) s"
