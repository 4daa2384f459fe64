"""The two references an evaluation scores against, resolved once per command and shared by every
run compared: the CAS calibration (per-label thresholds, realism reference) and the out-of-family
classifier. Each comes from the config when it names one; otherwise it is made once on the real
data and cached in the evaluation directory, with a note saying so."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from craft_ray.cas.calibration import Calibration, calibrate
from craft_ray.cas.score import EvaluatorSpec
from craft_ray.config import ExperimentConfig
from craft_ray.errors import ConfigError, EvaluationError
from craft_ray.evaluation.store import CALIBRATION, CLASSIFIER, EvalStore
from craft_ray.models.classifier import Classifier, resolve_classifier, train_classifier

ProgressFactory = Callable[[str], AbstractContextManager[Callable[[int, int], None]]]


def evaluation_spec(cfg: ExperimentConfig) -> EvaluatorSpec:
    """The evaluator of an evaluation: `evaluation.vlm` (else the run's reward VLM: its numbers are
    then in-reward), the run's MLLM, the evaluation's CAS weights (the same for every method
    compared, whatever its reward weights), the dataset's label space."""
    return EvaluatorSpec(
        cfg.dataset.name,
        list(cfg.dataset.label_space),
        cfg.evaluation.vlm or cfg.model.vlm,
        cfg.model.mllm,
        cfg.model.mllm_model,
        cfg.evaluation.weights.as_dict(),
        [],
    )


def calibration_option(cfg: ExperimentConfig) -> str:
    """What the request says about the calibration (part of an evaluation's identity)."""
    if cfg.evaluation.calibration:
        return cfg.evaluation.calibration
    if cfg.reward.calibration and _usable(cfg.reward.calibration, evaluation_spec(cfg)):
        return cfg.reward.calibration
    return f"auto:{cfg.dataset.uri}[{cfg.dataset.val_split}]"


def _usable(path: str, spec: EvaluatorSpec) -> bool:
    try:
        return Calibration.load(path).evaluator == spec
    except ConfigError:
        return False


@dataclass
class References:
    calibration: Calibration
    calibration_note: str
    classifier: Classifier
    classifier_note: str

    def digest(self) -> str:
        card, weights = self.classifier.to_bytes()
        h = hashlib.sha256(json.dumps(asdict(self.calibration), sort_keys=True).encode())
        h.update(weights)
        return h.hexdigest()[:16]

    def save(self, directory: Path) -> None:
        self.calibration.save(directory / CALIBRATION)
        self.classifier.save(directory / CLASSIFIER)


def resolve_calibration(
    cfg: ExperimentConfig, store: EvalStore, progress: ProgressFactory
) -> tuple[Calibration, str]:
    spec, option = evaluation_spec(cfg), calibration_option(cfg)
    if not option.startswith("auto:"):
        cal = Calibration.load(option)
        if cal.evaluator.dataset != cfg.dataset.name:
            raise EvaluationError(
                f"calibration {option} is for dataset '{cal.evaluator.dataset}', the run is '{cfg.dataset.name}'"
            )
        return cal, f"{option} (q={cal.q}, {cal.data} [{cal.split}])"
    cached = store.existing(CALIBRATION)
    if cached is not None:
        cal = Calibration.load(cached)
        if cal.evaluator == spec and cal.data == cfg.dataset.uri and cal.split == cfg.dataset.val_split:
            return cal, f"made by craft evaluate on {cal.data} [{cal.split}], q={cal.q}"
    with progress(f"calibrating CAS on {cfg.dataset.val_split}") as update:
        cal = calibrate(spec, cfg.dataset.uri, cfg.dataset.val_split, progress=update)
    return cal, f"made by craft evaluate on {cal.data} [{cal.split}], q={cal.q}"


def resolve_out_of_family(
    cfg: ExperimentConfig, labels: list[str], store: EvalStore, progress: ProgressFactory
) -> tuple[Classifier, str]:
    ev = cfg.evaluation
    if ev.classifier:
        clf = resolve_classifier(ev.classifier)
        note = f"{ev.classifier}"
    else:
        cached = store.existing(CLASSIFIER)
        clf = Classifier.load(cached) if cached is not None else None
        trained = clf.card.trained_on if clf else {}
        if (
            clf is None
            or trained.get("uri") != cfg.dataset.uri
            or clf.card.training.get("epochs") != ev.classifier_epochs
        ):
            with progress(f"training the out-of-family CNN on {cfg.dataset.train_split}") as update:
                clf = train_classifier(
                    cfg.dataset.uri,
                    cfg.dataset.train_split,
                    list(cfg.dataset.label_space),
                    resolution=cfg.dataset.resolution,
                    epochs=ev.classifier_epochs,
                    seed=ev.seed,
                    progress=update,
                )
        note = (
            f"CNN trained by craft evaluate on {clf.card.trained_on['uri']} [{clf.card.trained_on['split']}], "
            f"{clf.card.trained_on['images']} real images"
        )
    if clf.card.dataset != cfg.dataset.name:
        raise EvaluationError(
            f"classifier {ev.classifier} is for '{clf.card.dataset}', the run is '{cfg.dataset.name}'"
        )
    missing = [label for label in labels if label not in clf.labels]
    if missing:
        raise EvaluationError(f"classifier {ev.classifier or ''} does not know the label(s) {missing}")
    return clf, note


def resolve_references(
    cfg: ExperimentConfig, labels: list[str], store: EvalStore, progress: ProgressFactory
) -> References:
    cal, cal_note = resolve_calibration(cfg, store, progress)
    clf, clf_note = resolve_out_of_family(cfg, labels, store, progress)
    return References(cal, cal_note, clf, clf_note)
