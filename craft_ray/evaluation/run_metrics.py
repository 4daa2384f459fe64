"""The metrics of one evaluated run (metrics.json) and its comparison with a baseline."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from craft_ray.cas.calibration import Calibration
from craft_ray.cas.score import build_evaluator
from craft_ray.config import ExperimentConfig
from craft_ray.data.images import decode_png
from craft_ray.data.reading import image_to_tensor
from craft_ray.errors import EvaluationError
from craft_ray.evaluation.grids import image_grid
from craft_ray.evaluation.metrics import (
    SCORE_COLUMNS,
    audit_table,
    auroc_table,
    cas_tables,
    memorisation_table,
    out_of_family_table,
    tail_reduction,
    tail_table,
)
from craft_ray.evaluation.paired import OOFSpec, RealScores, RunScores, paired_comparison, run_intervals
from craft_ray.evaluation.real import RealData
from craft_ray.evaluation.references import References
from craft_ray.evaluation.stats import bootstrap_difference
from craft_ray.evaluation.store import CALIBRATION, PAIRS_PNG
from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import get_dataset
from craft_ray.models.classifier import ClassifierCard, fit_classifier, targets_for

ProgressFn = Callable[[int, int], None]
STEPS = 5


def run_metrics(
    table: pa.Table,
    scores: pa.Table,
    cfg: ExperimentConfig,
    labels: list[str],
    refs: References,
    real: RealData,
    out_dir: Path,
    progress: ProgressFn,
) -> dict[str, Any]:
    """All metric tables of one run. `table` has the image bytes, `scores` the scores."""
    ev = cfg.evaluation
    boot = {"n_boot": ev.n_boot, "level": ev.ci_level, "seed": ev.seed}
    label_sets = scores.column("labels").to_pylist()
    columns = {
        c: np.asarray(scores.column(c).to_numpy(zero_copy_only=False), dtype=float) for c in SCORE_COLUMNS
    }
    progress(0, STEPS)
    metrics: dict[str, Any] = {
        "model": scores.schema.metadata[b"craft_ray.source"].decode(),
        "dataset": cfg.dataset.name,
        "labels": labels,
        "images": scores.num_rows,
        "n_per_label": ev.n_per_label,
        "split": ev.split,
        "seed": ev.seed,
        "ci_level": ev.ci_level,
        "n_boot": ev.n_boot,
        "calibration": refs.calibration_note,
        "evaluator": refs.calibration.evaluator.to_dict(),  # the CAS actually used (the calibration's)
        "thresholds": {k: v for k, v in refs.calibration.thresholds.items() if k in labels},
        "threshold_q": refs.calibration.q,
        "cas": cas_tables(columns, label_sets, labels, **boot),
    }
    metrics["tail"] = tail_table(columns["cas"], label_sets, refs.calibration.thresholds, labels, ev.ci_level)
    metrics["out_of_family"] = {
        "classifier": refs.classifier_note,
        "labels": list(refs.classifier.labels),
        "multilabel": refs.classifier.card.multilabel,
        **out_of_family_table(
            np.asarray(scores.column("oof_prob").to_pylist()),
            scores.column("oof_agreement").to_pylist(),
            label_sets,
            refs.classifier.labels,
            labels,
            **boot,
            multilabel=refs.classifier.card.multilabel,
        ),
    }
    add_intervals(metrics, scores, refs, labels, ev)
    progress(1, STEPS)
    metrics["downstream"] = downstream(table, cfg, labels, real)
    progress(3, STEPS)
    metrics["memorisation"] = memorisation(table, scores, cfg, refs, real, out_dir)
    progress(4, STEPS)
    knowledge = load_knowledge(refs.calibration.evaluator.checklists)
    questions = {item.id: item.question for item in knowledge.all_items()}
    metrics["audit"] = audit_table(
        scores.column("audit_items").to_pylist(),
        scores.column("audit_p").to_pylist(),
        questions,
        "mllm" if refs.calibration.evaluator.mllm else "vlm-surrogate",
        ev.ci_level,
    )
    if refs.calibration.evaluator.mllm:
        metrics["audit"]["model"] = refs.calibration.evaluator.mllm
    else:
        metrics["audit"]["model"] = refs.calibration.evaluator.vlm
    progress(STEPS, STEPS)
    return metrics


def real_scores(calibration: Calibration) -> RealScores | None:
    """The calibration's real images (None for a version-1 file, which did not keep them)."""
    real = calibration.real
    if not real:
        return None
    return RealScores(np.asarray(real["cas"], dtype=float), [list(x) for x in real["labels"]], calibration.q)


def oof_spec(metrics: dict[str, Any]) -> OOFSpec | None:
    oof = metrics.get("out_of_family", {})
    return OOFSpec(list(oof["labels"]), bool(oof["multilabel"])) if "labels" in oof else None


def add_intervals(metrics: dict[str, Any], scores: pa.Table, refs: References, labels: list[str], ev) -> None:
    """Bootstrap intervals that resample the generated images and, for the tail, the real
    calibration images behind the thresholds (their noise is part of a tail share's uncertainty);
    the out-of-family AUROC's intervals too."""
    real = real_scores(refs.calibration)
    intervals = run_intervals(
        RunScores.from_table(scores),
        labels,
        refs.calibration.thresholds,
        real,
        oof_spec(metrics),
        ev.n_boot,
        ev.ci_level,
        ev.seed,
    )
    method = (
        "bootstrap over the generated images and the real calibration images (threshold noise included)"
        if real is not None
        else "Wilson score interval (the calibration file keeps no real scores: threshold noise not included; recalibrate)"
    )
    for group, row in metrics["tail"].items():
        row["ci_method"] = method
        if real is not None and f"tail:{group}" in intervals:
            row["ci_binomial"] = row["ci"]
            row["ci"] = intervals[f"tail:{group}"]["ci"]
    auroc = metrics["out_of_family"]["auroc"]
    if "oof_auroc:macro" in intervals:
        auroc["macro_ci"] = intervals["oof_auroc:macro"]["ci"]
        auroc["per_label_ci"] = {
            label: intervals[f"oof_auroc:{label}"]["ci"]
            for label in auroc["per_label"]
            if f"oof_auroc:{label}" in intervals
        }


def _images(table: pa.Table, channels: int) -> torch.Tensor:
    return torch.stack([image_to_tensor(png, channels) for png in table.column("image").to_pylist()])


def downstream(table: pa.Table, cfg: ExperimentConfig, labels: list[str], real: RealData) -> dict[str, Any]:
    """AUROC on the real test split of the CNN trained on the generated images (labels as
    conditioned) and of the same CNN trained on as many real training images."""
    spec = get_dataset(cfg.dataset.name)
    ev = cfg.evaluation
    gen_images, gen_sets = _images(table, spec.channels), table.column("labels").to_pylist()
    real_images, real_sets = real.train_subset(len(gen_sets), ev.seed, single_label=not spec.multilabel)
    test_images, test_sets = real.test
    if not spec.multilabel:
        keep = [i for i, ls in enumerate(test_sets) if len(ls) == 1]
        test_images, test_sets = test_images[keep], [test_sets[i] for i in keep]
    out: dict[str, Any] = {
        "n_generated": len(gen_sets),
        "n_real": len(real_sets),
        "n_test": len(test_sets),
        # per label, test images that have it: an AUROC needs at least one with and one without
        "test_positives": {label: sum(label in ls for ls in test_sets) for label in labels},
    }
    for name, images, sets in (("generated", gen_images, gen_sets), ("real", real_images, real_sets)):
        card = ClassifierCard(
            spec.name,
            labels,
            spec.multilabel,
            spec.channels,
            cfg.dataset.resolution,
            32,
            trained_on={"origin": name, "images": len(sets)},
        )
        clf = fit_classifier(
            images, targets_for(sets, labels), card, epochs=ev.classifier_epochs, seed=ev.seed
        )
        out[name] = auroc_table(clf.predict_proba(test_images), test_sets, labels)
    return out


def memorisation(
    table: pa.Table, scores: pa.Table, cfg: ExperimentConfig, refs: References, real: RealData, out_dir: Path
) -> dict[str, Any]:
    ev = cfg.evaluation
    evaluator = None

    def embed(images: torch.Tensor) -> torch.Tensor:
        nonlocal evaluator
        if evaluator is None:
            evaluator = build_evaluator(refs.calibration.evaluator, refs.calibration.reference)
        return evaluator.embed(images)

    real_emb, real_ids = real.embeddings(real.train_split, ev.memorisation_embedding, embed)
    heldout, _ = real.embeddings(real.val_split, ev.memorisation_embedding, embed)
    auto = ev.copy_threshold == "auto"
    if auto and len(heldout) < 2:
        raise EvaluationError(
            f"evaluation.copy_threshold auto calibrates on the held-out split '{real.val_split}' of "
            f"{real.uri}, which has {len(heldout)} image(s); give a number instead"
        )
    generated = np.asarray(scores.column("embedding").to_pylist(), dtype=np.float32)
    result = memorisation_table(
        generated,
        real_emb,
        scores.column("image_id").to_pylist(),
        real_ids,
        None if auto else float(ev.copy_threshold),
        ev.top_pairs,
        ev.ci_level,
        heldout=heldout,
        q=ev.copy_quantile,
        n_boot=ev.n_boot,
        seed=ev.seed,
    )
    result["embedding"] = ev.memorisation_embedding
    if "heldout" in result:
        result["heldout"]["split"] = real.val_split
    result["grid"] = PAIRS_PNG
    pairs_grid(table, result["top_pairs"], real, out_dir / PAIRS_PNG, result["threshold"])
    return result


def pairs_grid(table: pa.Table, pairs: list[dict], real: RealData, path: Path, threshold: float) -> None:
    by_id = dict(zip(table.column("image_id").to_pylist(), table.column("image").to_pylist(), strict=True))
    labels = dict(zip(table.column("image_id").to_pylist(), table.column("labels").to_pylist(), strict=True))
    gen, ref, gen_caps, ref_caps = [], [], [], []
    for pair in pairs:
        image = decode_png(by_id[pair["generated"]])
        gen.append(image[..., 0] if image.shape[-1] == 1 else image)
        ref.append(real.image(real.train_index(pair["real"])))
        flag = " COPY" if pair["similarity"] >= threshold else ""
        gen_caps.append(f"{pair['generated']} ({', '.join(labels[pair['generated']])})")
        ref_caps.append(f"{pair['real']}\ncos {pair['similarity']:.3f}{flag}")
    image_grid(
        gen + ref,
        gen_caps + ref_caps,
        path,
        cols=len(pairs),
        title=f"Most similar generated / real training pairs (copy threshold {threshold:.3f})",
        row_labels=["generated", "nearest real"],
    )


def _identity_digest(directory: Path) -> str:
    return hashlib.sha256((directory / "eval.json").read_bytes()).hexdigest()[:16]


def comparison(main, base, cfg: ExperimentConfig, labels: list[str]) -> dict[str, Any]:
    """Tail reduction and CAS difference of `main` relative to `base` (RunResult objects)."""
    ev = cfg.evaluation
    a, b = main.scores, base.scores
    keys = ("image_id", "seed", "labels")
    paired = a.num_rows == b.num_rows and all(a.column(k).equals(b.column(k)) for k in keys)
    sets_a, sets_b = a.column("labels").to_pylist(), b.column("labels").to_pylist()
    cas_a, cas_b = a.column("cas").to_pylist(), b.column("cas").to_pylist()
    thresholds = main.metrics["thresholds"]
    mean_diff = bootstrap_difference(cas_b, cas_a, paired, ev.n_boot, ev.ci_level, ev.seed)  # run - baseline
    calibration = Calibration.load(main.directory / CALIBRATION)
    differences = paired_comparison(
        RunScores.from_table(a),
        RunScores.from_table(b),
        labels,
        thresholds,
        real_scores(calibration),
        oof_spec(main.metrics),
        ev.n_boot,
        ev.ci_level,
        ev.seed,
    )
    return {
        "differences": differences,
        "baseline_dir": str(base.directory),
        "baseline_eval": _identity_digest(base.directory),
        "paired": paired,
        "tail": tail_reduction(
            (cas_a, sets_a), (cas_b, sets_b), thresholds, labels, paired, ev.n_boot, ev.ci_level, ev.seed
        ),
        "cas_mean_gain": {"value": mean_diff["points"], "ci": mean_diff["points_ci"]},
    }


def _json_default(value: Any) -> Any:  # numpy scalars in metric dicts
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics, indent=2, default=_json_default) + "\n"
