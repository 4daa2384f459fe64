"""Training-loop benchmarks on CPU.

    python benchmarks/bench_train.py memory     # CRAFT step time and peak memory vs T, K, checkpointing
    python benchmarks/bench_train.py memory --base sd15 --device cuda --resolution 512   # on a GPU node
    python benchmarks/bench_train.py memory --base sd15 --device cuda --resolution 512 --T 10,50 --K 1,5
    python benchmarks/bench_train.py memory --base sd15 --device cuda --resolution 512 --T 50 --K 1,5 \
        --batch 8,1 --ckpt on --variants fp32,bf16,bf16+compile      # the precision options (issue 22)
    python benchmarks/bench_train.py overhead   # 1-worker Ray TorchTrainer vs the same loop in a plain process
    python benchmarks/bench_train.py            # both

Peak memory is the process's peak resident set (VmHWM) during the training steps minus its
resident set when the loop starts stepping (models built, data indexed): the memory the steps add.
On CUDA it is `torch.cuda.max_memory_allocated` minus the allocation when stepping starts.
Every configuration runs in a fresh subprocess. "Peak total" is the whole peak during the steps
(resident models included: what `training.weight_dtype` shrinks); "setup s" runs from building the
models to the first step (with `compile`: the warm-up step that compiles every graph).

Variants (`--variants`, a comma list): a weight dtype (`fp32`, `bf16`, `fp16`: `training.weight_dtype`)
with `+cl` (`training.channels_last`), `+compile` (`training.compile`), `+aot` (compile backend
aot_eager instead of inductor, for CPU), `+nocg` (no CUDA graphs for the no-gradient calls).
The "compiled" column is the run's own `compiled` metric: 0 means compilation failed and the run
fell back to eager (see its stderr).

Model FLOP utilisation (`--flops`, on by default with `--device cuda`): for each (T, K) one extra
probe (fp32 eager, batch 1, no checkpointing) runs one step after its timed ones under
`torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products, convolutions and
attention of everything the step runs (sampling without gradient, the K steps with gradient and
their backward, VAE decode, the reward VLM). That is the step's *model* FLOPs (no recomputation;
the same for every variant: a dtype, a memory layout or a compiler does not change the math, and a
compiled graph would hide its kernels from the counter). A step of batch B does B times that (measured
on the H200: 8.00x at batch 8). MFU = B x the count / step time / the card's dense bf16 peak
(`--peak-tflops`, known cards looked up by name).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

HERE = Path(__file__).parent
LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device_name: str) -> float | None:
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name in device_name:
            return peak
    return None


def experiment(
    data: str,
    storage: str,
    base: str,
    steps: int,
    T: int,
    K: int,
    ckpt: bool,
    workers: int = 1,
    cpus: float = 1,
    resolution: int = 64,
    report_every: int = 10,
    batch_size: int = 1,
    **training: object,
) -> dict:
    return {
        "name": f"bench-T{T}-K{K}-{int(ckpt)}-{base}",
        "method": "craft",
        "seed": 0,
        "dataset": {"name": "chexpert", "uri": data, "resolution": resolution, "labels": LABELS},
        "model": {"base": base},
        "training": {
            "steps": steps,
            "sampler_steps": T,
            "backprop_steps": K,
            "batch_size": batch_size,
            "gradient_checkpointing": ckpt,
            "checkpoint_every": 10_000,
            "report_every": report_every,
            "max_failures": 0,
            **training,
        },
        "scaling": {"workers": workers, "cpus_per_worker": cpus},
        "storage": {"path": storage},
    }


VARIANT_FLAGS = {"cl", "compile", "aot", "nocg"}


def variant_training(variant: str) -> dict:
    """'bf16+cl+compile' -> the training keys it sets (see the module docstring)."""
    dtype, *flags = variant.split("+")
    unknown = [f for f in flags if f not in VARIANT_FLAGS]
    if dtype not in ("fp32", "bf16", "fp16") or unknown:
        raise SystemExit(
            f"bad variant {variant!r}: a dtype (fp32|bf16|fp16) then +{'/+'.join(sorted(VARIANT_FLAGS))}"
        )
    keys: dict = {"weight_dtype": dtype}
    if "cl" in flags:
        keys["channels_last"] = True
    if "compile" in flags:
        keys["compile"] = True
        keys["compile_backend"] = "aot_eager" if "aot" in flags else "inductor"
        keys["compile_cudagraphs"] = "nocg" not in flags
    return keys


def wall_per_step(records: list[dict]) -> float:
    """Wall time per step from the first to the last step's end: compute plus reporting waits."""
    return (records[-1]["timestamp"] - records[0]["timestamp"]) / (len(records) - 1)


def probe(args: argparse.Namespace) -> None:
    """(subprocess) run the real loop in a plain process; print step times, the memory added and,
    with --flops, the FLOPs of one more step."""
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from craft_ray.config import validate_config
    from craft_ray.train.loop import train_loop
    from craft_ray.train.session import LocalSession

    class MeasuringSession(LocalSession):
        """Marks the memory when stepping starts; with `count_flops`, the step after the timed
        ones runs under a FlopCounterMode (reports come after every step: report_every=1)."""

        def __init__(self, out: str, device: str, timed_steps: int, count_flops: bool):
            super().__init__(out, device=device)
            self.timed_steps, self.count_flops = timed_steps, count_flops
            self.counter: FlopCounterMode | None = None
            self.step_flops: float | None = None
            self.started = time.perf_counter()

        def checkpoint_to_resume(self):
            self.setup_s = time.perf_counter() - self.started  # models built (and compiled)
            if self.device.type == "cuda":  # GPU: the memory the steps allocate on the device
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.baseline = torch.cuda.memory_allocated() / 2**20
            else:  # CPU: reset the peak-RSS mark so only the steps count
                Path("/proc/self/clear_refs").write_text("5")
                self.baseline = _status_kib("VmRSS") / 1024
            return super().checkpoint_to_resume()

        def report(self, metrics, checkpoint_dir, name):
            if self.counter is not None:  # the counted step has just ended
                self.counter.__exit__(None, None, None)
                self.step_flops = float(self.counter.get_total_flops())
                self.counter = None
            if self.device.type == "cuda":
                total = torch.cuda.max_memory_allocated() / 2**20
            else:
                total = _status_kib("VmHWM") / 1024
            for record in metrics.get("history") or [metrics]:
                record["peak_added_mib"] = total - self.baseline
                record["peak_total_mib"] = total
            super().report(metrics, None, None)
            if self.count_flops and len(self.metrics) == self.timed_steps:
                self.counter = FlopCounterMode(display=False)
                self.counter.__enter__()

    steps = args.steps + (1 if args.flops else 0)
    cfg = validate_config(
        experiment(
            args.data,
            args.out,
            args.base,
            steps,
            args.T,
            args.K,
            args.ckpt,
            resolution=args.resolution,
            report_every=1 if args.flops else 10,
            batch_size=args.batch,
            **variant_training(args.variant),
        )
    )
    session = MeasuringSession(args.out, args.device, args.steps, args.flops)
    train_loop(cfg, session)
    timed = session.metrics[: args.steps]
    result = {
        "step_s": statistics.median(m["step_time_s"] for m in timed[1:]),
        "wall_s": wall_per_step(timed),
        "peak_added_mib": max(m["peak_added_mib"] for m in timed),
        "peak_total_mib": max(m["peak_total_mib"] for m in timed),
        "setup_s": session.setup_s,
        "compiled": timed[-1].get("compiled"),
        "step_flops": session.step_flops,
        "device_name": torch.cuda.get_device_name() if session.device.type == "cuda" else "cpu",
    }
    print(json.dumps(result))


def run_probe(
    data: str,
    base: str,
    steps: int,
    T: int,
    K: int,
    ckpt: bool,
    threads: int | None = None,
    device: str = "cpu",
    resolution: int = 64,
    flops: bool = False,
    batch: int = 1,
    variant: str = "fp32",
    timeout_s: float | None = None,
) -> dict:
    """One configuration in a fresh process; {"error": ...} instead of exiting when it fails or
    outlives `timeout_s` (a table of many rows keeps the rows that worked)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            __file__,
            "_probe",
            "--data",
            data,
            "--out",
            out,
            "--base",
            base,
            "--steps",
            str(steps),
            "--T",
            str(T),
            "--K",
            str(K),
            "--device",
            device,
            "--resolution",
            str(resolution),
            *(["--ckpt"] if ckpt else []),
            "--batch",
            str(batch),
            "--variants",
            variant,
            *(["--flops"] if flops else []),
        ]
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, env=env, check=False, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return {"error": f"stopped after {timeout_s:.0f} s (deadline or --probe-timeout-s)"}
    if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr, flush=True)
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return {"error": (lines[-1] if lines else f"exit status {result.returncode}")[:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_data(root: Path) -> str:
    from craft_ray.data.phantoms import make_phantom_dataset

    target = root / "chest"
    if not (target / "manifest.json").exists():
        make_phantom_dataset("chest", 64, target, size=64, seed=0)
    return str(target)


def memory(args: argparse.Namespace, data: str) -> None:
    """The table: for each K, batch, variant, checkpointing and T (in that nesting: list the rows
    that matter most first, `--deadline-s` cuts the rest), plus one FLOP-counting probe per (T, K)."""
    import time

    started = time.perf_counter()
    flops = args.flops if args.flops is not None else args.device == "cuda"
    reference: dict[tuple[int, int], dict] = {}  # (T, K) -> the FLOP-counting probe

    def time_left() -> float:
        return float("inf") if args.deadline_s is None else args.deadline_s - (time.perf_counter() - started)

    def probe_once(steps: int | None = None, **kwargs) -> dict:
        if time_left() < 20:  # the deadline is the table's end: a probe still running then is stopped
            return {"error": f"not run: --deadline-s {args.deadline_s:g} reached"}
        return run_probe(
            data,
            args.base,
            steps or args.steps,
            device=args.device,
            resolution=args.resolution,
            timeout_s=min(args.probe_timeout_s or float("inf"), time_left()),
            **kwargs,
        )

    rows, device_name = [], None
    columns = ["variant", "batch", "grad ckpt", "K", "T", "step s", "peak added MiB", "peak total MiB"]
    columns += ["setup s", "compiled"]
    if flops:
        columns += ["model TFLOP/step", "TFLOP/s", "MFU"]
    for K in args.K_values:
        for batch in args.batch_values:
            for variant in args.variant_values:
                for ckpt in args.ckpt_values:
                    for T in args.T_values:
                        if flops and (T, K) not in reference:
                            reference[T, K] = probe_once(T=T, K=K, ckpt=False, flops=True, batch=1, steps=2)
                            print(["FLOP reference, batch 1", K, T, reference[T, K]], flush=True)
                        r = probe_once(T=T, K=K, ckpt=ckpt, batch=batch, variant=variant)
                        print([variant, batch, ckpt, K, T, r], flush=True)
                        device_name = device_name or r.get("device_name")
                        row = [variant, batch, "on" if ckpt else "off", K, T]
                        if "error" in r:
                            rows.append(row + [r["error"]] + [""] * (len(columns) - 6))
                        else:
                            compiled = r.get("compiled")
                            row += [r["step_s"], r["peak_added_mib"], r["peak_total_mib"], r["setup_s"]]
                            row.append("-" if compiled is None else int(compiled))
                            if flops:
                                peak = args.peak_tflops or peak_tflops(r["device_name"])
                                counted = reference[T, K].get("step_flops")
                                model = counted * batch / 1e12 if counted else float("nan")
                                achieved = model / r["step_s"]
                                row += [model, achieved, achieved / peak if peak else float("nan")]
                            rows.append(row)
                        save(args.json, columns, rows, reference)  # after every row: a cut-off run keeps it
    peak = args.peak_tflops or peak_tflops(device_name or "")
    title = f"CRAFT step on {device_name}, UNet '{args.base}', {args.resolution} px, CFG" + (
        f"; MFU against {peak} TFLOP/s dense bf16" if flops and peak else ""
    )
    report(title, columns, rows)
    save(args.json, columns, rows, reference, title)


def save(json_path: str | None, columns: list, rows: list, reference: dict, title: str | None = None) -> None:
    """--json: the table so far and the FLOP-counting probes, written whole (temp name + rename)."""
    if not json_path:
        return
    path = Path(json_path)
    doc = {"title": title, "columns": columns, "rows": rows}
    doc["flop_reference"] = {f"T{T}K{K}": v for (T, K), v in reference.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def overhead(args: argparse.Namespace, data: str) -> None:
    import ray

    from craft_ray.config import validate_config
    from craft_ray.train.trainer import run_training

    steps, T = args.steps + 6, 10
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for threads in (1, 2):
        plain = run_probe(data, "tiny", steps, T, 1, True, threads=threads)
        if "error" in plain:
            sys.exit(plain["error"])
        with tempfile.TemporaryDirectory() as storage:
            cfg = validate_config(
                experiment(data, storage, "tiny", steps, T, 1, True, workers=1, cpus=threads)
            )
            summary = run_training(cfg)  # Ray gives the worker OMP_NUM_THREADS = its CPUs
        in_ray = {
            "step_s": statistics.median(r["step_time_s"] for r in summary.history[1:]),
            "wall_s": wall_per_step(summary.history),
        }
        rows.append([threads, "plain process", plain["step_s"], plain["wall_s"], 1.0])
        rows.append(
            [
                threads,
                "Ray TorchTrainer, 1 worker",
                in_ray["step_s"],
                in_ray["wall_s"],
                in_ray["wall_s"] / plain["wall_s"],
            ]
        )
    report(
        f"Ray Train overhead: CRAFT, tiny UNet, T={T}, K=1, {steps} steps, report every 10",
        ["threads", "where", "step s (median)", "wall s per step", "ratio"],
        rows,
        args.json,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="?", default="all", choices=["all", "memory", "overhead", "_probe"])
    parser.add_argument("--base", default="small")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--batch", default="1", help="images per step (the UNet sees 2x: CFG); a comma list for memory"
    )
    parser.add_argument("--json", default=None, help="memory: write the rows here after each one")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--T", default="10,25,50", help="sampler steps: a value, or a comma list for memory")
    parser.add_argument("--K", default="1,2,5", help="steps with gradient: a value, or a comma list")
    parser.add_argument(
        "--variants",
        default="fp32",
        help="memory: comma list of fp32|bf16|fp16 [+cl] [+compile] [+aot] [+nocg] (module docstring)",
    )
    parser.add_argument(
        "--ckpt-values",
        default="on,off",
        choices=["on,off", "off,on", "on", "off"],
        help="memory: gradient checkpointing, the values to measure",
    )
    parser.add_argument(
        "--flops",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count FLOPs and report MFU (default: on with --device cuda)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (default: by name)"
    )
    parser.add_argument("--ckpt", action="store_true", help="(a probe's own flag)")
    parser.add_argument(
        "--device", default="cpu", help="cpu | cuda (GPU: peak = torch.cuda.max_memory_allocated)"
    )
    parser.add_argument(
        "--resolution", type=int, default=64, help="image side; sd15 at 512 gives 64x64 latents"
    )
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="memory: the table ends this many seconds after it started (a probe still running is stopped)",
    )
    parser.add_argument(
        "--probe-timeout-s", type=float, default=None, help="memory: stop a probe running longer than this"
    )
    args = parser.parse_args()
    args.T_values = [int(v) for v in str(args.T).split(",")]
    args.K_values = [int(v) for v in str(args.K).split(",")]
    args.batch_values = [int(v) for v in str(args.batch).split(",")]
    args.variant_values = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in args.variant_values:
        variant_training(variant)  # a bad one stops here, before any probe
    args.ckpt_values = [v == "on" for v in args.ckpt_values.split(",")]
    args.T, args.K, args.batch = args.T_values[0], args.K_values[0], args.batch_values[0]
    args.variant = args.variant_values[0]
    if args.what == "_probe":
        probe(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        if args.what in ("all", "memory"):
            memory(args, data)
        if args.what in ("all", "overhead"):
            overhead(args, data)


if __name__ == "__main__":
    main()
