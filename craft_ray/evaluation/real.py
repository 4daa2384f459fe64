"""The real data an evaluation compares against: label distribution, downstream train/test images,
and the embeddings of the training split (memorisation). Loaded lazily, once per command."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
import torch
from torch.utils.data import DataLoader

from craft_ray.config import ExperimentConfig
from craft_ray.data.reading import ImageParquetDataset, collate_examples, read_manifest, read_table
from craft_ray.errors import EvaluationError
from craft_ray.evaluation.memorisation import pixel_embedding

ProgressFn = Callable[[int, int], None]


class RealData:
    def __init__(self, cfg: ExperimentConfig, labels: Sequence[str], split: str):
        self.uri, self.labels, self.split = cfg.dataset.uri, list(labels), split
        self.train_split, self.resolution = cfg.dataset.train_split, cfg.dataset.resolution
        self.manifest = read_manifest(self.uri)
        if self.manifest.dataset != cfg.dataset.name:
            raise EvaluationError(
                f"{self.uri} holds dataset '{self.manifest.dataset}', the run's config says '{cfg.dataset.name}'"
            )
        missing = [label for label in self.labels if label not in self.manifest.label_space]
        if missing:
            raise EvaluationError(
                f"label(s) {missing} are not in {self.uri} (its labels: {', '.join(self.manifest.label_space)})"
            )
        for name in {split, self.train_split}:
            if name not in self.manifest.counts:
                raise EvaluationError(
                    f"{self.uri} has no split '{name}' (splits: {', '.join(sorted(self.manifest.counts))})"
                )
        self.val_split = cfg.dataset.val_split
        self._embeddings: dict[tuple[str, str], tuple[np.ndarray, list[str]]] = {}

    def label_sets(self) -> list[list[str]]:
        """Label sets of the evaluation split (the distribution generated images are drawn from)."""
        return read_table(self.uri, self.split, columns=["labels"]).column("labels").to_pylist()

    @cached_property
    def train(self) -> ImageParquetDataset:
        return ImageParquetDataset(self.uri, self.train_split, labels=self.labels, resolution=self.resolution)

    def _load(self, data: ImageParquetDataset, rows: Sequence[int]) -> tuple[torch.Tensor, list[list[str]]]:
        items = [data[i] for i in rows]
        return torch.stack([it["pixel_values"] for it in items]), [it["labels"] for it in items]

    @cached_property
    def test(self) -> tuple[torch.Tensor, list[list[str]]]:
        data = ImageParquetDataset(self.uri, self.split, labels=self.labels, resolution=self.resolution)
        return self._load(data, range(len(data)))

    def train_subset(self, n: int, seed: int, single_label: bool) -> tuple[torch.Tensor, list[list[str]]]:
        """n training images (seeded draw without replacement; all there are when fewer), only images
        with exactly one of the labels for single-label datasets, at least one otherwise."""
        sets = self.train.label_sets()
        usable = [i for i, ls in enumerate(sets) if (len(ls) == 1 if single_label else len(ls) >= 1)]
        if not usable:
            raise EvaluationError(f"{self.uri} [{self.train_split}]: no image with the labels {self.labels}")
        rng = np.random.default_rng([seed, 5])
        picks = sorted(rng.choice(usable, size=min(n, len(usable)), replace=False).tolist())
        return self._load(self.train, picks)

    def image(self, index: int) -> np.ndarray:
        """Training image `index` as uint8 (H, W) or (H, W, 3)."""
        pixels = (self.train[index]["pixel_values"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return pixels[..., 0] if pixels.shape[-1] == 1 else pixels

    def embeddings(
        self,
        split: str,
        kind: str,
        embed: Callable[[torch.Tensor], torch.Tensor],
        progress: ProgressFn | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """(embeddings, image ids) of every image of a split (not only those with the labels), cached."""
        if (split, kind) not in self._embeddings:
            data = ImageParquetDataset(self.uri, split, resolution=self.resolution)
            parts, ids = [], []
            for batch in DataLoader(data, batch_size=64, collate_fn=collate_examples):
                images = batch["pixel_values"]
                parts.append(
                    (embed(images) if kind == "vlm" else pixel_embedding(images)).float().cpu().numpy()
                )
                ids.extend(batch["image_id"])
                if progress:
                    progress(len(ids), len(data))
            self._embeddings[(split, kind)] = (np.concatenate(parts), ids)
        return self._embeddings[(split, kind)]

    def train_index(self, image_id: str) -> int:
        return self._train_ids[image_id]

    @cached_property
    def _train_ids(self) -> dict[str, int]:
        data = ImageParquetDataset(self.uri, self.train_split, resolution=self.resolution)
        return {image_id: i for i, image_id in enumerate(data.metadata.column("image_id").to_pylist())}
