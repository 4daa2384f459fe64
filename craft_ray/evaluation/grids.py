"""PNG grids of images with captions: contact sheets, memorisation pairs, sample grids (matplotlib, Agg)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from craft_ray.outputs import atomic_file


def _figure(rows: int, cols: int, tile: float, caption_lines: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = rows * (tile + 0.16 * caption_lines) + 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile, height), squeeze=False)
    return plt, fig, axes


def image_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    path: str | Path,
    title: str = "",
    cols: int = 8,
    tile: float = 1.7,
    wrap: int = 24,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
) -> Path:
    """uint8 images (H, W) or (H, W, 3), a caption under each, `cols` per row; written atomically.
    With `row_labels` / `col_labels`, each row gets a label on its left / each column a header."""
    if not images:
        raise ValueError("no images for the grid")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    wrapped = ["\n".join(textwrap.fill(line, wrap) for line in c.split("\n")) for c in captions]
    lines = max((w.count("\n") + 1 for w in wrapped), default=1)
    plt, fig, axes = _figure(rows, cols, tile, lines)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if k >= len(images):
            continue
        image = images[k]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xlabel(wrapped[k], fontsize=7, linespacing=1.1)
    if row_labels:
        for r, label in enumerate(row_labels[:rows]):
            axes[r, 0].set_ylabel(
                textwrap.fill(label, 18, break_on_hyphens=False),
                fontsize=8,
                rotation=0,
                ha="right",
                va="center",
            )
    for c, label in enumerate((col_labels or [])[:cols]):
        axes[0, c].set_title(textwrap.fill(label, wrap), fontsize=9, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
