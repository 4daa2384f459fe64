"""CAS throughput on CPU: evaluation images/s and reward forward+backward time per image.

python benchmarks/bench_cas.py [--vlms tiny,small] [--batches 1,8,32] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report, timed  # noqa: E402


def reward_backward(evaluator, x, labels) -> None:
    xg = x.clone().requires_grad_(True)
    evaluator.score(xg, labels).total.sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vlms", default="tiny,small")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from craft_ray.cas import CASEvaluator
    from craft_ray.models import build_vlm

    labels_cycle = [
        ["Cardiomegaly"],
        ["No Finding"],
        ["Pleural Effusion", "Support Devices"],
        ["Lung Opacity"],
    ]
    rows = []
    for name in args.vlms.split(","):
        vlm = build_vlm(name)
        params = sum(p.numel() for p in vlm.parameters()) / 1e6
        evaluator = CASEvaluator("chexpert", vlm)
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.rand(batch, 1, args.size, args.size)
            labels = [labels_cycle[i % 4] for i in range(batch)]
            evaluate = partial(evaluator.score, x, labels, evaluate=True)
            backward = partial(reward_backward, evaluator, x, labels)
            evaluate(), backward()  # warm-up (also fills the text-embedding cache)
            t_eval, t_grad = timed(evaluate, 3), timed(backward, 3)
            rows.append(
                [name, f"{params:.1f}M", batch, batch / t_eval, 1000 * t_eval / batch, 1000 * t_grad / batch]
            )
    report(
        f"CAS on CPU ({torch.get_num_threads()} torch threads, {args.size} px chest images, 4 dimensions)",
        ["VLM", "params", "batch", "eval images/s", "eval ms/image", "fwd+bwd ms/image"],
        rows,
        args.json,
    )


if __name__ == "__main__":
    main()
