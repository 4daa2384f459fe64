"""A small CNN image classifier: the out-of-family evaluator and the downstream-classification model.

A different model family from the CLIP-style (ViT) reward model, so an image that games the reward
does not automatically fool it. Multi-label (one sigmoid per label) for CheXpert, single-label
(softmax over the labels) for the other datasets. Saved as `model.safetensors` plus a JSON card
(`classifier.json`: dataset, labels, input size, what it was trained on), loaded with
`Classifier.load(dir)`.

    clf = train_classifier("data/phantom/chest", "train", ["Cardiomegaly", "Pleural Effusion"])
    clf.predict_proba(images)        # (B, C, H, W) in [0, 1] -> (B, labels) numpy probabilities
    clf.save("runs/clf"); Classifier.load("runs/clf")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load, load_file, save, save_file

from craft_ray.errors import ModelError

CARD_NAME = "classifier.json"
WEIGHTS_NAME = "model.safetensors"
CARD_VERSION = 1
ProgressFn = Callable[[int, int], None]


@dataclass
class ClassifierCard:
    dataset: str
    labels: list[str]
    multilabel: bool
    channels: int  # input channels the images are converted to
    resolution: int  # input side in pixels
    width: int  # channels of the first conv block
    trained_on: dict[str, Any] = field(default_factory=dict)  # uri, split, images, origin ...
    training: dict[str, Any] = field(default_factory=dict)  # epochs, lr, seed, final loss ...
    family: str = "cnn"
    version: int = CARD_VERSION


def _block(c_in: int, c_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(c_out),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(c_out),
        torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(2),
    )


class SmallCNN(torch.nn.Module):
    """Three conv blocks (width, 2x, 4x), global average pooling, a linear head."""

    def __init__(self, channels: int, n_labels: int, width: int = 32):
        super().__init__()
        self.body = torch.nn.Sequential(
            _block(channels, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        )
        self.head = torch.nn.Linear(4 * width, n_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Classifier:
    """A trained `SmallCNN` with its card: preprocessing, probabilities, save and load."""

    def __init__(self, model: SmallCNN, card: ClassifierCard):
        self.model, self.card = model.eval(), card

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    def to(self, device: torch.device | str) -> Classifier:
        self.model.to(device)
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 1 or 3, H, W) -> the network's input (channels, size, centring)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ModelError(f"classifier input must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
        images = images.float()
        if images.shape[1] != self.card.channels:
            images = (
                images.mean(dim=1, keepdim=True) if self.card.channels == 1 else images.expand(-1, 3, -1, -1)
            )
        side = self.card.resolution
        if tuple(images.shape[-2:]) != (side, side):
            images = F.interpolate(
                images, size=(side, side), mode="bilinear", antialias=True, align_corners=False
            )
        device = next(self.model.parameters()).device
        return (images.to(device) - 0.5) / 0.5

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.card.multilabel else logits.softmax(dim=-1)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """(B, len(labels)) probabilities: per-label sigmoid (multi-label) or softmax (single-label)."""
        out = [
            self.probabilities(self.model(self.prepare(images[i : i + batch_size]))).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, len(self.labels)))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised penultimate features."""
        return F.normalize(self.model.features(self.prepare(images)), dim=-1).cpu()

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
            raise ModelError("refusing to save classifier weights with NaN or Inf values")
        save_file(state, str(directory / WEIGHTS_NAME))
        (directory / CARD_NAME).write_text(json.dumps(asdict(self.card), indent=2) + "\n")
        return directory

    def to_bytes(self) -> tuple[dict[str, Any], bytes]:
        """(card, safetensors bytes): a classifier by value, for Ray actors on other nodes."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return asdict(self.card), save(state)

    @classmethod
    def from_bytes(
        cls, card: dict[str, Any], weights: bytes, device: str | torch.device = "cpu"
    ) -> Classifier:
        card_obj = ClassifierCard(**card)
        model = SmallCNN(card_obj.channels, len(card_obj.labels), card_obj.width)
        model.load_state_dict(load(weights))
        return cls(model.to(device), card_obj)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Classifier:
        directory = Path(directory)
        card_path, weights = directory / CARD_NAME, directory / WEIGHTS_NAME
        if not card_path.is_file() or not weights.is_file():
            raise ModelError(f"{directory}: not a saved classifier (needs {CARD_NAME} and {WEIGHTS_NAME})")
        try:
            card = ClassifierCard(**json.loads(card_path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"{card_path}: not a classifier card ({exc})") from None
        if card.version != CARD_VERSION or card.family != "cnn":
            raise ModelError(
                f"{card_path}: classifier family/version {card.family}/{card.version} not supported"
            )
        model = SmallCNN(card.channels, len(card.labels), card.width)
        try:
            model.load_state_dict(load_file(str(weights)))
        except (RuntimeError, OSError) as exc:
            raise ModelError(f"{weights}: weights do not match the card: {exc}") from None
        return cls(model.to(device), card)


def targets_for(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> torch.Tensor:
    """Multi-hot (N, len(labels)) targets."""
    index = {label: j for j, label in enumerate(labels)}
    out = torch.zeros(len(label_sets), len(labels))
    for i, label_set in enumerate(label_sets):
        for label in label_set:
            if label in index:
                out[i, index[label]] = 1.0
    return out


def fit_classifier(
    images: torch.Tensor,
    targets: torch.Tensor,
    card: ClassifierCard,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Classifier:
    """Train a fresh `SmallCNN` on in-memory images (N, C, H, W) in [0, 1] and multi-hot targets.
    `augment(inputs, generator)`, when given, transforms each batch of network inputs (seeded).

    Single-label cards train with cross-entropy on each row's one label (rows with none or several
    are refused); multi-label cards with per-label binary cross-entropy. Seeded: the same inputs and
    seed give the same weights on the same hardware.
    """
    if len(images) == 0 or len(images) != len(targets):
        raise ModelError(
            f"classifier training needs matching, non-empty images and targets ({len(images)}, {len(targets)})"
        )
    if not card.multilabel and not bool((targets.sum(dim=1) == 1).all()):
        raise ModelError("single-label classifier: every training image needs exactly one label")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(card.channels, len(card.labels), card.width)
    clf = Classifier(model.to(device), card)
    inputs = clf.prepare(images)
    targets = targets.to(inputs.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, -(-len(inputs) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(seed)
    augment_gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    loss = torch.tensor(float("nan"))
    for epoch in range(epochs):
        order = torch.randperm(len(inputs), generator=order_gen)
        for start in range(0, len(inputs), batch_size):
            idx = order[start : start + batch_size].to(inputs.device)
            if len(idx) < 2:  # BatchNorm needs two samples; the row comes back next epoch
                continue
            batch = inputs[idx] if augment is None else augment(inputs[idx], augment_gen)
            logits = model(batch)
            if card.multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, targets[idx])
            else:
                loss = F.cross_entropy(logits, targets[idx].argmax(dim=1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress:
            progress(epoch + 1, epochs)
    model.eval()
    card.training = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "final_loss": float(loss.detach()),
    }
    return clf


def load_split(
    uri: str,
    split: str,
    labels: Sequence[str] | None = None,
    resolution: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, list[list[str]], Any]:
    """(images (N, C, H, W) in [0, 1], label sets restricted to `labels`, manifest) of one split.
    `limit` takes a seeded random subset."""
    from craft_ray.data.reading import ImageParquetDataset

    data = ImageParquetDataset(uri, split, labels=labels, resolution=resolution)
    rows = list(range(len(data)))
    if limit is not None and limit < len(rows):
        rows = sorted(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False).tolist())
    if not rows:
        raise ModelError(f"{uri} [{split}]: no images")
    items = [data[i] for i in rows]  # channels: the modality's (1 for chest, 3 otherwise)
    return (
        torch.stack([item["pixel_values"] for item in items]),
        [item["labels"] for item in items],
        data.manifest,
    )


def train_classifier(
    dataset_uri: str,
    split: str = "train",
    labels: Sequence[str] | None = None,
    *,
    resolution: int | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 32,
    seed: int = 0,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> Classifier:
    """Train the CNN on a canonical dataset's split (real images) and return it (not saved).

    labels: the label subset (default: the dataset's label space). Single-label datasets use only
    the images with one of those labels; multi-label images may have none (all-negative targets).
    """
    from craft_ray.knowledge.labels import get_dataset

    images, label_sets, manifest = load_split(dataset_uri, split, labels, resolution, limit, seed)
    spec = get_dataset(manifest.dataset)
    labels = list(labels) if labels else list(manifest.label_space)
    if not spec.multilabel:
        keep = [i for i, ls in enumerate(label_sets) if len(ls) == 1]
        if not keep:
            raise ModelError(f"{dataset_uri} [{split}]: no image has one of the labels {labels}")
        images, label_sets = images[keep], [label_sets[i] for i in keep]
    card = ClassifierCard(
        dataset=spec.name,
        labels=labels,
        multilabel=spec.multilabel,
        channels=spec.channels,
        resolution=int(images.shape[-1]),
        width=width,
        trained_on={"uri": str(dataset_uri), "split": split, "images": len(images), "origin": "real"},
    )
    return fit_classifier(
        images, targets_for(label_sets, labels), card, epochs, batch_size, lr, seed, device, progress
    )


def resolve_classifier(spec: str, device: str | torch.device = "cpu") -> Classifier:
    """`evaluation.classifier`: a saved classifier directory, or `phantom:<modality>` (the CNN shipped
    with the project, made by `craft pretrain classifier`; a config resolves a bare `phantom` to
    the dataset's modality)."""
    from craft_ray.models.phantom import is_phantom, phantom_classifier_dir

    if is_phantom(spec):
        return Classifier.load(phantom_classifier_dir(spec), device)
    return Classifier.load(spec, device)
