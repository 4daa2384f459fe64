"""Step times of the offline demo's training on the shipped phantom models, on CPU.

    python benchmarks/bench_phantom_step.py            # CRAFT (T=10, K=1) and lora_sft, batch 2
    python benchmarks/bench_phantom_step.py --threads 1 --steps 4

The real training loop in a plain process (no Ray), base `phantom` (the shipped diffusion base,
64 px -> 16x16x4 latents), reward VLM `phantom` (the chest model), chest phantoms, batch 2 per
step, CFG on. Step time is the median over the steps after the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def step_times(
    method: str, data: str, out: str, steps: int, T: int, K: int, vlm: str, base: str
) -> tuple[float, float]:
    from craft_ray.config import validate_config
    from craft_ray.train.loop import train_loop
    from craft_ray.train.session import LocalSession

    cfg = validate_config(
        {
            "name": f"bench-{method}",
            "method": method,
            "dataset": {"name": "chexpert", "uri": data, "resolution": 64, "labels": LABELS},
            "model": {"base": base, "vlm": vlm},
            "training": {
                "steps": steps,
                "sampler_steps": T,
                "backprop_steps": K,
                "batch_size": 2,
                "checkpoint_every": 10_000,
                "max_failures": 0,
            },
            "storage": {"path": out},
        }
    )
    started = time.perf_counter()
    session = LocalSession(out)
    train_loop(cfg, session)
    total = time.perf_counter() - started
    return statistics.median(m["step_time_s"] for m in session.metrics[1:]), total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--T", type=int, default=10)
    parser.add_argument("--K", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--vlm", default="phantom", help="reward VLM (default: the shipped chest model)")
    parser.add_argument("--base", default="phantom", help="diffusion base (default: the shipped one)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from craft_ray.data.phantoms import make_phantom_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "chest")
        make_phantom_dataset("chest", 64, Path(data), size=64, seed=0)
        for method in ("craft", "lora_sft"):
            step_s, total = step_times(
                method, data, str(Path(tmp) / method), args.steps, args.T, args.K, args.vlm, args.base
            )
            rows.append(
                [
                    method,
                    args.T if method == "craft" else "-",
                    args.K if method == "craft" else "-",
                    args.threads,
                    round(step_s, 3),
                    round(total, 1),
                ]
            )
            print(rows[-1], flush=True)
    report(
        f"phantom base + phantom:chest VLM, batch 2, {args.steps} steps",
        ["method", "T", "K", "threads", "step s (median)", "total s incl. set-up"],
        rows,
        args.json,
    )


if __name__ == "__main__":
    main()
