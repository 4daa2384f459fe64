"""`craft study create`: pairs of images of two methods for the same label set and seed.

Label sets are drawn (seeded, with replacement) from the label sets of the real split's images,
restricted to the labels every run knows, so the study sees the dataset's label mix and
co-occurrences. For each label set every pair of runs makes one pair, both images generated with
the same seed. Optional control pairs put a real image of the split (resized to the generated
resolution) beside a generated image of the same label set. Pair order, left/right sides and image
ids are drawn from the study seed; which source is on which side goes to key.parquet only. Each
reader gets a random access token (not from the seed), returned once; the manifest keeps its hash.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from craft_ray.data import read_manifest, read_table
from craft_ray.data.images import encode_png
from craft_ray.errors import CraftError, StudyError
from craft_ray.knowledge.labels import get_dataset
from craft_ray.outputs import atomic_dir, check_output
from craft_ray.study.access import issue
from craft_ray.study.generate import generate_images
from craft_ray.study.layout import (
    IMAGES,
    KEY,
    KEY_SCHEMA,
    PAIRS,
    PAIRS_SCHEMA,
    REAL,
    Source,
    StudyManifest,
    check_reader_id,
    write_manifest,
    write_table,
)
from craft_ray.study.runs import StudyRun, check_same_dataset, open_run

Progress = Callable[[int, int], None]


def image_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), 13, int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def source_names(runs: list[StudyRun]) -> list[str]:
    names: list[str] = []
    for run in runs:
        name = run.name if run.name != REAL else f"{REAL}-run"
        while name in names:
            name = f"{name}#{sum(n.split('#')[0] == run.name for n in names) + 1}"
        names.append(name)
    return names


def _real_pool(data_uri: str, split: str, labels: list[str], with_images: bool) -> list[dict]:
    """Rows of the split with their label sets restricted to `labels` (rows left empty are dropped)."""
    columns = ["image_id", "labels", *(["image"] if with_images else [])]
    try:
        rows = read_table(data_uri, split, columns=columns).to_pylist()
    except CraftError as exc:
        raise StudyError(str(exc)) from None
    order = {label: j for j, label in enumerate(labels)}
    pool = []
    for row in rows:
        restricted = sorted((x for x in row["labels"] if x in order), key=order.get)
        if restricted:
            pool.append({**row, "labels": restricted})
    if not pool:
        raise StudyError(f"{data_uri} [{split}]: no image has any of the labels {labels}")
    return pool


def _real_image(png: bytes, channels: int, resolution: int) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        return np.asarray(img.resize((resolution, resolution), Image.LANCZOS))


def _check_args(run_dirs: list[str], n: int, controls: int, readers: list[str]) -> None:
    if len(run_dirs) < 2:
        raise StudyError("a study compares at least two runs (--runs RUN_A RUN_B ...)")
    resolved = [str(Path(r).expanduser().resolve()) for r in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise StudyError("the same run is given twice in --runs")
    if n < 1 or controls < 0:
        raise StudyError(f"--n must be at least 1 and --controls at least 0 (got {n}, {controls})")
    if not readers:
        raise StudyError("name at least one reader (--readers alice,bob): the app admits only those")
    for reader in readers:
        check_reader_id(reader)
    if len(set(readers)) != len(readers):
        raise StudyError("--readers: a reader id is given twice")


@dataclass
class StudyPlan:
    """Everything checked and drawn before any image is generated."""

    runs: list[StudyRun]
    names: list[str]
    manifest: StudyManifest
    label_sets: list[list[str]]
    seeds: list[int]
    real_rows: list[dict]
    rng: np.random.Generator
    tokens: dict[str, str]  # reader -> access token: shown once, only its hash is written


def plan_study(
    run_dirs: list[str],
    out: str | Path,
    n: int,
    seed: int,
    readers: list[str],
    controls: int = 0,
    split: str = "test",
    data: str | None = None,
    overwrite: bool = False,
) -> StudyPlan:
    """Check the inputs and the output, open the runs, draw label sets, seeds and control images."""
    _check_args(run_dirs, n, controls, readers)
    check_output(out, overwrite, kind="dir")
    runs = [open_run(r) for r in run_dirs]
    dataset, labels = check_same_dataset(runs)
    data_uri = data or runs[0].cfg.resolved().dataset.uri
    try:
        found = read_manifest(data_uri).dataset
    except CraftError as exc:
        raise StudyError(f"real data for label sets: {exc}") from None
    if found != dataset:
        raise StudyError(f"{data_uri} holds dataset '{found}' but the runs were trained on '{dataset}'")
    pool = _real_pool(data_uri, split, labels, with_images=controls > 0)
    rng = np.random.default_rng([int(seed), 1])
    label_sets = [pool[int(i)]["labels"] for i in rng.integers(0, len(pool), n)]
    real_rows = [pool[int(i)] for i in rng.integers(0, len(pool), controls)]
    names = source_names(runs)
    tokens, hashes = issue(readers)
    manifest = StudyManifest(
        dataset=dataset,
        data_uri=str(data_uri),
        split=split,
        labels=labels,
        n=n,
        seed=seed,
        controls=controls,
        pairs=n * len(runs) * (len(runs) - 1) // 2 + controls,
        sources=[_source(name, run) for name, run in zip(names, runs, strict=True)]
        + ([Source(name=REAL, method=REAL)] if controls else []),
        readers=readers,
        reader_tokens=hashes,
    )
    seeds = [image_seed(seed, i) for i in range(n)]
    return StudyPlan(runs, names, manifest, label_sets, seeds, real_rows, rng, tokens)


def write_study(plan: StudyPlan, out: str | Path, progress: Progress | None = None) -> StudyManifest:
    """Generate the images, shuffle pairs and sides, and write the study directory in one rename."""
    runs, names, n, seed = plan.runs, plan.names, plan.manifest.n, plan.manifest.seed
    generated, control_images = _generate(runs, plan.label_sets, plan.seeds, plan.real_rows, seed, progress)
    candidates = []  # (labels, seed, kind, [(source, image), (source, image)])
    for i in range(n):
        for a, b in combinations(range(len(runs)), 2):
            sides = [(names[a], generated[a][i]), (names[b], generated[b][i])]
            candidates.append((plan.label_sets[i], plan.seeds[i], "generated", sides))
    channels, resolution = get_dataset(plan.manifest.dataset).channels, runs[0].cfg.dataset.resolution
    for j, row in enumerate(plan.real_rows):
        real = _real_image(row["image"], channels, resolution)
        sides = [(REAL, real), (names[j % len(runs)], control_images[j])]
        candidates.append((row["labels"], image_seed(seed, n + j), "control", sides))
    assert len(candidates) == plan.manifest.pairs
    with atomic_dir(out) as tmp:
        _write_pairs(Path(tmp), candidates, plan.rng)
        write_manifest(Path(tmp), plan.manifest)
    return plan.manifest


def create_study(
    run_dirs: list[str],
    out: str | Path,
    n: int,
    seed: int,
    readers: list[str],
    controls: int = 0,
    split: str = "test",
    data: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> tuple[StudyManifest, dict[str, str]]:
    """The manifest and each reader's access token (the study keeps only their hashes)."""
    plan = plan_study(run_dirs, out, n, seed, readers, controls, split, data, overwrite)
    return write_study(plan, out, progress), plan.tokens


def _source(name: str, run: StudyRun) -> Source:
    t = run.cfg.training
    return Source(
        name=name,
        method=run.method,
        run=str(run.directory),
        base=str(run.card.get("base")),
        step=run.card.get("step"),
        sampler={"steps": t.sampler_steps, "guidance_scale": t.guidance_scale, "eta": t.eta},
    )


def _generate(
    runs: list[StudyRun],
    label_sets: list[list[str]],
    seeds: list[int],
    real_rows: list[dict],
    seed: int,
    progress: Progress | None,
) -> tuple[list[list[np.ndarray]], dict[int, np.ndarray]]:
    """Every run's images for the label sets, and control j's generated image (by run j mod k)."""
    n, total, done = len(seeds), len(seeds) * len(runs) + len(real_rows), 0
    generated, control_images = [], {}
    for k, run in enumerate(runs):
        mine = [j for j in range(len(real_rows)) if j % len(runs) == k]
        images = generate_images(
            run,
            label_sets + [real_rows[j]["labels"] for j in mine],
            seeds + [image_seed(seed, n + j) for j in mine],
        )
        generated.append(images[:n])
        control_images.update(zip(mine, images[n:], strict=True))
        done += len(images)
        if progress:
            progress(done, total)
    return generated, control_images


def _write_pairs(root: Path, candidates: list, rng: np.random.Generator) -> None:
    (root / IMAGES).mkdir()
    used: set[str] = set()

    def opaque_id() -> str:
        while (image_id := rng.bytes(8).hex()) in used:
            pass
        used.add(image_id)
        return image_id

    pairs, key = [], []
    for number, index in enumerate(rng.permutation(len(candidates)), start=1):
        labels, seed, kind, sides = candidates[int(index)]
        if rng.random() < 0.5:
            sides = sides[::-1]
        pair_id = f"p{number:04d}"
        ids = []
        for _, image in sides:
            ids.append(opaque_id())
            (root / IMAGES / f"{ids[-1]}.png").write_bytes(encode_png(image))
        pairs.append(
            {
                "pair_id": pair_id,
                "labels": list(labels),
                "seed": int(seed),
                "left_image": ids[0],
                "right_image": ids[1],
            }
        )
        key.append(
            {"pair_id": pair_id, "kind": kind, "left_source": sides[0][0], "right_source": sides[1][0]}
        )
    write_table(root / PAIRS, pairs, PAIRS_SCHEMA)
    write_table(root / KEY, key, KEY_SCHEMA)
