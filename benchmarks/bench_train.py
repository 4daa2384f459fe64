"""Training-loop benchmarks on CPU.

    python benchmarks/bench_train.py memory     # CRAFT step time and peak memory vs T, K, checkpointing
    python benchmarks/bench_train.py memory --base sd15 --device cuda --resolution 512   # on a GPU node
    python benchmarks/bench_train.py overhead   # 1-worker Ray TorchTrainer vs the same loop in a plain process
    python benchmarks/bench_train.py            # both

Peak memory is the process's peak resident set (VmHWM) during the training steps minus its
resident set when the loop starts stepping (models built, data indexed): the memory the steps add.
Every configuration runs in a fresh subprocess.
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
            "batch_size": 1,
            "gradient_checkpointing": ckpt,
            "checkpoint_every": 10_000,
            "max_failures": 0,
        },
        "scaling": {"workers": workers, "cpus_per_worker": cpus},
        "storage": {"path": storage},
    }


def wall_per_step(records: list[dict]) -> float:
    """Wall time per step from the first to the last step's end: compute plus reporting waits."""
    return (records[-1]["timestamp"] - records[0]["timestamp"]) / (len(records) - 1)


def probe(args: argparse.Namespace) -> None:
    """(subprocess) run the real loop in a plain process; print step times and the memory added."""
    import torch

    from craft_ray.config import validate_config
    from craft_ray.train.loop import train_loop
    from craft_ray.train.session import LocalSession

    class MeasuringSession(LocalSession):
        def checkpoint_to_resume(self):
            if self.device.type == "cuda":  # GPU: the memory the steps allocate on the device
                torch.cuda.reset_peak_memory_stats()
                self.baseline = torch.cuda.memory_allocated() / 2**20
            else:  # CPU: reset the peak-RSS mark so only the steps count
                Path("/proc/self/clear_refs").write_text("5")
                self.baseline = _status_kib("VmRSS") / 1024
            return super().checkpoint_to_resume()

        def report(self, metrics, checkpoint_dir, name):
            if self.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated() / 2**20 - self.baseline
            else:
                peak = _status_kib("VmHWM") / 1024 - self.baseline
            for record in metrics.get("history") or [metrics]:
                record["peak_added_mib"] = peak
            super().report(metrics, None, None)

    cfg = validate_config(
        experiment(
            args.data, args.out, args.base, args.steps, args.T, args.K, args.ckpt, resolution=args.resolution
        )
    )
    session = MeasuringSession(args.out, device=args.device)
    train_loop(cfg, session)
    result = {
        "step_s": statistics.median(m["step_time_s"] for m in session.metrics[1:]),
        "wall_s": wall_per_step(session.metrics),
        "peak_added_mib": max(m["peak_added_mib"] for m in session.metrics),
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
    rows = []
    for ckpt in (True, False):
        for K in (1, 2, 5):
            for T in (10, 25, 50):
                r = run_probe(
                    data, args.base, args.steps, T, K, ckpt, device=args.device, resolution=args.resolution
                )
                rows.append(["on" if ckpt else "off", K, T, r["step_s"], r["peak_added_mib"]])
                print(rows[-1], flush=True)
    report(
        f"CRAFT step on {args.device}, UNet '{args.base}', {args.resolution} px, batch 1, CFG",
        ["grad ckpt", "K", "T", "step s", "peak added MiB"],
        rows,
        args.json,
    )


def overhead(args: argparse.Namespace, data: str) -> None:
    import ray

    from craft_ray.config import validate_config
    from craft_ray.train.trainer import run_training

    steps, T = args.steps + 6, 10
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
    parser.add_argument("--json", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--T", type=int, default=10)
    parser.add_argument("--K", type=int, default=1)
    parser.add_argument("--ckpt", action="store_true")
    parser.add_argument(
        "--device", default="cpu", help="cpu | cuda (GPU: peak = torch.cuda.max_memory_allocated)"
    )
    parser.add_argument(
        "--resolution", type=int, default=64, help="image side; sd15 at 512 gives 64x64 latents"
    )
    args = parser.parse_args()
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
