"""Held-out gates of the shipped models, computed with the CAS machinery itself.

VLM gate (per modality), on phantoms of a seed no training used:
- zero-shot label AUROC: P(present) of each label's finding phrase pair (what the pathology
  dimension scores) against the ground truth, macro-averaged over the phantom labels;
- pathology fidelity of the true label set above that of a wrong label set, per image.

A wrong label set is the hardest plausible mistake: for single-label datasets another class of
the phantom label space (drawn uniformly); for CheXpert (multi-label) the true set with one
phantom label flipped (drawn uniformly among the findings and devices), 'No Finding' then set
consistently (present exactly when no pathology is).

Item gate (`item_gate`), on phantoms of the same held-out seed with a share of implausible ones:
- per checklist item of the phantom labels, the AUROC of P(met) (the item's present/absent pair,
  what the checklist dimension scores) against the phantoms' item ground truth, on the plausible
  images; per anatomy/realism item the same over all images (an item violated only by defects);
  an item is "drawn" when each answer occurs at least MIN_ITEM_CLASS times;
- plausibility: an image's least-met anatomy or realism item (min P(met): one violated item makes an
  image implausible, which a mean over ten items would dilute) separates implausible from plausible
  images (AUROC, overall and per defect kind).
"""

from __future__ import annotations

import numpy as np
import torch

from craft_ray.cas.dimensions import Batch, PathologyFidelity, pair_probabilities
from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import DatasetSpec, dataset_for_modality
from craft_ray.knowledge.prompts import finding_pair
from craft_ray.models.vlm import VLMScorer
from craft_ray.pretrain.phantom_tensors import make_phantom_set

GATE_SEED = 999  # held-out phantoms: never used by any training (see the model cards' seed plan)
NOT_PATHOLOGY = ("No Finding", "Support Devices")
GATE_IMPLAUSIBLE = 0.25  # share of implausible phantoms in the item gate's images
MIN_ITEM_CLASS = 5  # an item counts as drawn when both answers occur at least this often
MIN_ITEM_AUROC = 0.85
MIN_PLAUSIBILITY_AUROC = 0.9


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie-averaged ranks); NaN without both classes."""
    from scipy.stats import rankdata

    pos = targets > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def wrong_label_set(spec: DatasetSpec, labels: list[str], rng: np.random.Generator) -> list[str]:
    """One wrong label set for an image (see the module docstring)."""
    space = list(spec.phantom_labels)
    if not spec.multilabel:
        others = [label for label in space if label not in labels]
        return [others[int(rng.integers(len(others)))]]
    flippable = [label for label in space if label != "No Finding"]
    flip = flippable[int(rng.integers(len(flippable)))]
    wrong = (set(labels) ^ {flip}) - {"No Finding"}
    if not wrong - set(NOT_PATHOLOGY):
        wrong.add("No Finding")
    return sorted(wrong, key=spec.labels.index)


def _embed(scorer: VLMScorer, data) -> torch.Tensor:
    return torch.cat([scorer.embed_images(data.floats(slice(i, i + 128))) for i in range(0, len(data), 128)])


@torch.no_grad()
def item_gate(
    scorer: VLMScorer,
    modality: str,
    n: int = 400,
    seed: int = GATE_SEED,
    implausible: float = GATE_IMPLAUSIBLE,
) -> dict:
    """Item-level metrics of a VLM on n fresh phantoms of `modality`, a share `implausible` of them
    with a defect (see the module docstring)."""
    spec, kb = dataset_for_modality(modality), load_knowledge()
    data = make_phantom_set(modality, n, seed, implausible=implausible)
    label_items = [i for lab in spec.phantom_labels for i in kb.for_label(spec.name, lab)]
    section = [*kb.anatomy(modality), *kb.realism(modality)]
    items = label_items + section
    probs = pair_probabilities(scorer, _embed(scorer, data), [(i.present, i.absent) for i in items])
    truth, known = data.item_targets([i.id for i in items])
    plausible = ~data.implausible
    per_item: dict[str, float | None] = {}
    for j, item in enumerate(items):
        rows = known[:, j] & (plausible if j < len(label_items) else torch.ones_like(plausible))
        t = truth[rows, j]
        drawn = min(float(t.sum()), float((1 - t).sum())) >= MIN_ITEM_CLASS
        per_item[item.id] = auroc(probs[rows, j].numpy(), t.numpy()) if drawn else None
    scores = probs[:, len(label_items) :].min(dim=1).values.numpy()
    defects, is_plausible = np.array([d or "" for d in data.defects]), plausible.numpy()
    per_defect = {}
    for kind in sorted(set(defects) - {""}):
        rows = is_plausible | (defects == kind)
        per_defect[str(kind)] = auroc(scores[rows], is_plausible[rows])
    drawn = [v for v in per_item.values() if v is not None]
    return {
        "n": n,
        "seed": seed,
        "implausible": implausible,
        "items": per_item,
        "item_auroc_min": float(min(drawn)) if drawn else float("nan"),
        "item_auroc_mean": float(np.mean(drawn)) if drawn else float("nan"),
        "items_drawn": len(drawn),
        "items_not_drawn": sorted(k for k, v in per_item.items() if v is None),
        "plausibility_auroc": auroc(scores, is_plausible),
        "plausibility_auroc_per_defect": per_defect,
    }


@torch.no_grad()
def vlm_gate(
    scorer: VLMScorer, modality: str, n: int = 400, seed: int = GATE_SEED, items: bool = True
) -> dict:
    """Gate metrics of a VLM on n fresh phantoms of `modality` (seed `seed`): the label gate on
    plausible phantoms and, with `items`, the item gate under "item_gate"."""
    spec = dataset_for_modality(modality)
    data = make_phantom_set(modality, n, seed)
    labels = list(spec.phantom_labels)
    emb = _embed(scorer, data)
    pairs = [finding_pair(spec, label) for label in labels]
    probs = torch.sigmoid(
        scorer.logits(emb, [p for p, _ in pairs]) - scorer.logits(emb, [a for _, a in pairs])
    )
    truth = data.targets(labels)
    per_label = {lab: auroc(probs[:, j].numpy(), truth[:, j].numpy()) for j, lab in enumerate(labels)}
    fidelity = PathologyFidelity(scorer, spec, labels)
    rng = np.random.default_rng([seed, 5])
    wrong = [wrong_label_set(spec, s, rng) for s in data.label_sets]
    true_fid = fidelity(Batch(data.floats(), data.label_sets, emb, evaluate=True))
    wrong_fid = fidelity(Batch(data.floats(), wrong, emb, evaluate=True))
    valid = [v for v in per_label.values() if v == v]
    metrics = {
        "modality": modality,
        "n": n,
        "seed": seed,
        "macro_auroc": float(np.mean(valid)),
        "auroc": per_label,
        "fidelity_win_rate": float((true_fid > wrong_fid).float().mean()),
        "fidelity_true_mean": float(true_fid.mean()),
        "fidelity_wrong_mean": float(wrong_fid.mean()),
    }
    if items:
        metrics["item_gate"] = item_gate(scorer, modality, n, seed)
    return metrics


def vlm_gate_passes(metrics: dict, min_auroc: float = 0.90, min_win_rate: float = 0.90) -> bool:
    """Label gates, and where measured the item gates: every drawn item's AUROC >= MIN_ITEM_AUROC,
    plausibility AUROC >= MIN_PLAUSIBILITY_AUROC."""
    labels = metrics["macro_auroc"] >= min_auroc and metrics["fidelity_win_rate"] >= min_win_rate
    if "item_gate" not in metrics:
        return labels
    items = metrics["item_gate"]
    return (
        labels
        and items["item_auroc_min"] >= MIN_ITEM_AUROC
        and items["plausibility_auroc"] >= MIN_PLAUSIBILITY_AUROC
    )


def modality_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> simple colour and layout statistics: per-channel means and
    standard deviations, chroma, the corners' and the centre's brightness."""
    n, _, h, w = images.shape
    grey = images.mean(dim=1)
    corners = torch.stack([grey[:, :8, :8], grey[:, :8, -8:], grey[:, -8:, :8], grey[:, -8:, -8:]], 1)
    centre = grey[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    chroma = images.amax(dim=1) - images.amin(dim=1)
    return torch.cat(
        [
            images.mean(dim=(2, 3)),
            images.std(dim=(2, 3)),
            chroma.mean(dim=(1, 2))[:, None],
            corners.mean(dim=(2, 3)),
            centre.mean(dim=(1, 2))[:, None],
        ],
        dim=1,
    )


class ModalityRule:
    """A linear (softmax regression) rule on standardised `modality_features`, fitted on real
    phantoms: an independent check of which modality a generated image shows."""

    def __init__(self, n_per_modality: int = 200, seed: int = GATE_SEED):
        from craft_ray.knowledge.labels import MODALITIES

        self.modalities = list(MODALITIES)
        feats = [
            modality_features(make_phantom_set(m, n_per_modality, seed).floats()) for m in self.modalities
        ]
        x = torch.cat(feats)
        y = torch.cat([torch.full((len(f),), i) for i, f in enumerate(feats)])
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        self.linear = torch.nn.Linear(x.shape[1], len(self.modalities))
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.linear.reset_parameters()
            optimizer = torch.optim.LBFGS(self.linear.parameters(), max_iter=200)
            z = (x - self.mu) / self.sd

            def closure():
                optimizer.zero_grad()
                loss = (
                    torch.nn.functional.cross_entropy(self.linear(z), y)
                    + 1e-3 * self.linear.weight.square().sum()
                )
                loss.backward()
                return loss

            optimizer.step(closure)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[str]:
        z = (modality_features(images) - self.mu) / self.sd
        return [self.modalities[i] for i in self.linear(z).argmax(dim=1).tolist()]


@torch.no_grad()
def diffusion_samples(
    components, prompt: str, n: int, seed: int, steps: int = 20, guidance: float = 3.0, size: int = 64
) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1] from the diffusers pipeline (DDIM)."""
    pipe = components.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        [prompt] * n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    ).images
    return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def diffusion_gate(components, n_per_modality: int = 16, seed: int = GATE_SEED, steps: int = 20) -> dict:
    """Modality accuracy of the modality rule on samples generated with each generic caption."""
    from craft_ray.knowledge.labels import MODALITIES

    rule = ModalityRule()
    real_acc = {}
    per_modality, samples = {}, {}
    for modality, spec in MODALITIES.items():
        real = make_phantom_set(modality, 100, seed + 1).floats()
        real_acc[modality] = sum(p == modality for p in rule.predict(real)) / len(real)
        images = diffusion_samples(components, spec.modality_phrase, n_per_modality, seed, steps)
        samples[modality] = images
        per_modality[modality] = sum(p == modality for p in rule.predict(images)) / len(images)
    metrics = {
        "n_per_modality": n_per_modality,
        "seed": seed,
        "ddim_steps": steps,
        "modality_accuracy": float(np.mean(list(per_modality.values()))),
        "per_modality": per_modality,
        "rule_accuracy_on_real_phantoms": real_acc,
    }
    return metrics, samples
