"""Training-loop benchmarks on CPU.

    python benchmarks/bench_train.py memory     # CRAFT step time and peak memory vs T, K, checkpointing
    python benchmarks/bench_train.py memory --base sd15 --device cuda --resolution 512   # on a GPU node
    python benchmarks/bench_train.py memory --base sd15 --device cuda --resolution 512 --T 10,50 --K 1,5
    python benchmarks/bench_train.py overhead   # 1-worker Ray TorchTrainer vs the same loop in a plain process
    python benchmarks/bench_train.py            # both

Peak memory is the process's peak resident set (VmHWM) during the training steps minus its
resident set when the loop starts stepping (models built, data indexed): the memory the steps add.
On CUDA it is `torch.cuda.max_memory_allocated` minus the allocation when stepping starts.
Every configuration runs in a fresh subprocess.

Model FLOP utilisation (`--flops`, on by default with `--device cuda`): one extra step after the
timed ones runs under `torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products,
convolutions and attention of everything the step runs (sampling without gradient, the K steps
with gradient and their backward, VAE decode, the reward VLM). With gradient checkpointing that
count includes the recomputed forwards (hardware FLOPs); MFU divides the *model* FLOPs of the
same T and K, the count without checkpointing, by the step time and the card's dense bf16 peak
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
        },
        "scaling": {"workers": workers, "cpus_per_worker": cpus},
        "storage": {"path": storage},
    }


def wall_per_step(records: list[dict]) -> float:
    """Wall time per step from the first to the last step's end: compute plus reporting waits."""
    return (records[-1]["timestamp"] - records[0]["timestamp"]) / (len(records) - 1)


def probe(args: argparse.Namespace) -> None:
    """(subprocess) run the real loop in a plain process; print step times, the memory added and,
    with --flops, the FLOPs of one more step."""
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

        def checkpoint_to_resume(self):
            if self.device.type == "cuda":  # GPU: the memory the steps allocate on the device
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
                peak = torch.cuda.max_memory_allocated() / 2**20 - self.baseline
            else:
                peak = _status_kib("VmHWM") / 1024 - self.baseline
            for record in metrics.get("history") or [metrics]:
                record["peak_added_mib"] = peak
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
        )
    )
    session = MeasuringSession(args.out, args.device, args.steps, args.flops)
    train_loop(cfg, session)
    timed = session.metrics[: args.steps]
    result = {
        "step_s": statistics.median(m["step_time_s"] for m in timed[1:]),
        "wall_s": wall_per_step(timed),
        "peak_added_mib": max(m["peak_added_mib"] for m in timed),
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
) -> dict:
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
            *(["--flops"] if flops else []),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_data(root: Path) -> str:
    from craft_ray.data.phantoms import make_phantom_dataset

    target = root / "chest"
    if not (target / "manifest.json").exists():
        make_phantom_dataset("chest", 64, target, size=64, seed=0)
    return str(target)


def memory(args: argparse.Namespace, data: str) -> None:
    flops = args.flops if args.flops is not None else args.device == "cuda"
    results = {}
    for ckpt in (True, False):
        for K in args.K_values:
            for T in args.T_values:
                r = run_probe(
                    data,
                    args.base,
                    args.steps,
                    T,
                    K,
                    ckpt,
                    device=args.device,
                    resolution=args.resolution,
                    flops=flops,
                    batch=args.batch,
                )
                results[ckpt, K, T] = r
                print([ckpt, K, T, r], flush=True)
    device_name = next(iter(results.values()))["device_name"]
    peak = args.peak_tflops or peak_tflops(device_name)
    rows = []
    for (ckpt, K, T), r in results.items():
        row = ["on" if ckpt else "off", K, T, r["step_s"], r["peak_added_mib"]]
        if flops:
            model_flops = results.get((False, K, T), r)["step_flops"]  # no recomputation
            achieved = r["step_flops"] / r["step_s"] / 1e12
            row += [r["step_flops"] / 1e12, achieved]
            row.append(model_flops / r["step_s"] / 1e12 / peak if peak else float("nan"))
        rows.append(row)
    columns = ["grad ckpt", "K", "T", "step s", "peak added MiB"]
    if flops:
        columns += ["TFLOP/step (counted)", "TFLOP/s", "MFU"]
    report(
        f"CRAFT step on {device_name}, UNet '{args.base}', {args.resolution} px, batch {args.batch}, CFG"
        + (f"; MFU against {peak} TFLOP/s dense bf16" if flops and peak else ""),
        columns,
        rows,
        args.json,
    )


def overhead(args: argparse.Namespace, data: str) -> None:
    import ray

    from craft_ray.config import validate_config
    from craft_ray.train.trainer import run_training

    steps, T = args.steps + 6, 10
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for threads in (1, 2):
        plain = run_probe(data, "tiny", steps, T, 1, True, threads=threads)
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
    parser.add_argument("--batch", type=int, default=1, help="images per step (the UNet sees 2x: CFG)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--T", default="10,25,50", help="sampler steps: a value, or a comma list for memory")
    parser.add_argument("--K", default="1,2,5", help="steps with gradient: a value, or a comma list")
    parser.add_argument(
        "--flops",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count FLOPs and report MFU (default: on with --device cuda)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (default: by name)"
    )
    parser.add_argument("--ckpt", action="store_true")
    parser.add_argument(
        "--device", default="cpu", help="cpu | cuda (GPU: peak = torch.cuda.max_memory_allocated)"
    )
    parser.add_argument(
        "--resolution", type=int, default=64, help="image side; sd15 at 512 gives 64x64 latents"
    )
    args = parser.parse_args()
    args.T_values = [int(v) for v in str(args.T).split(",")]
    args.K_values = [int(v) for v in str(args.K).split(",")]
    args.T, args.K = args.T_values[0], args.K_values[0]
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
