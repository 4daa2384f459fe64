"""Data-layer throughput: phantom generation (one core) and CheXpert-layout conversion.

python benchmarks/bench_data.py [--n 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report, single_threaded_math, timed, use_cores  # noqa: E402


def make_chexpert_tree(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    from craft_ray.knowledge.labels import CHEXPERT

    base = root / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT.labels]
    lines = [",".join(header)]
    rng = np.random.default_rng(0)
    for i in range(n):
        rel = f"CheXpert-v1.0-small/train/patient{i // 2:05d}/study1/view{i % 2 + 1}_frontal.jpg"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 40, (390, 320), dtype=np.uint8)
        ramp = np.linspace(60, 200, 320, dtype=np.uint8)[None, :]
        Image.fromarray(noise + ramp).save(path, quality=90)
        labels = ["1.0" if rng.random() < 0.2 else "" for _ in CHEXPERT.labels]
        lines.append(",".join([rel, "Male", "50", "Frontal", "AP", *labels]))
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="images in the conversion tree")
    parser.add_argument("--phantoms", type=int, default=1000, help="phantom images per modality at 64 px")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from craft_ray.data.converters import ConvertOptions, convert
    from craft_ray.data.phantoms import GENERATORS, make_phantom_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        counter = iter(range(10_000))
        use_cores(1)
        for size, n in ((64, args.phantoms), (256, max(args.phantoms // 10, 50))):
            for modality in GENERATORS:
                seconds = timed(
                    lambda m=modality, s=size, k=n: make_phantom_dataset(
                        m, k, tmp_path / f"p{next(counter)}", s
                    ),
                    2,
                )
                rows.append([f"phantom {modality}", f"{size} px", n, seconds, n / seconds])
        tree = make_chexpert_tree(tmp_path / "src", args.n)
        use_cores(None)
        for threads in (1, 4):
            seconds = timed(
                lambda t=threads: convert(
                    "chexpert", tree, tmp_path / f"c{next(counter)}", ConvertOptions(size=64, threads=t)
                ),
                1,
            )
            rows.append(
                [
                    f"convert chexpert ({threads} thread(s))",
                    "320x390 -> 64",
                    args.n,
                    seconds,
                    args.n / seconds,
                ]
            )
    report("data layer throughput", ["task", "size", "images", "seconds", "images/s"], rows, args.json)


if __name__ == "__main__":
    single_threaded_math()
    main()
