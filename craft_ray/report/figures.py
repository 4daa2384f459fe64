"""Report figures (matplotlib, Agg): CAS per label with the real-image threshold, tail bars with
CIs. Each takes plain data and writes one PNG atomically."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from craft_ray.outputs import atomic_file


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list:
    cmap = _plt().get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _save(fig, path: str | Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return Path(path)


def _wrap(labels: Sequence[str], width: int = 12) -> list[str]:
    return [textwrap.fill(label, width) for label in labels]


def cas_distribution(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    thresholds: Mapping[str, float],
    labels: Sequence[str],
    path: str | Path,
    title: str,
    q: float | None = None,
) -> Path:
    """Box plots of CAS per label (x) and run (colour); a dashed line per label at its threshold.
    values: run -> label -> CAS values."""
    plt = _plt()
    runs = list(values)
    colours = _colours(len(runs))
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) * max(1, len(runs)) ** 0.5), 4.2))
    for r, run in enumerate(runs):
        positions = [j - 0.4 + width * (r + 0.5) for j in range(len(labels))]
        data = [np.asarray(values[run].get(label, []), dtype=float) for label in labels]
        keep = [k for k, d in enumerate(data) if len(d)]
        if keep:
            box = ax.boxplot(
                [data[k] for k in keep],
                positions=[positions[k] for k in keep],
                widths=width * 0.85,
                patch_artist=True,
                showfliers=True,
                flierprops={"markersize": 3},
            )
            for patch in box["boxes"]:
                patch.set_facecolor(colours[r])
                patch.set_alpha(0.75)
            for median in box["medians"]:
                median.set_color("black")
        ax.plot([], [], color=colours[r], linewidth=8, alpha=0.75, label=run)
    for j, label in enumerate(labels):
        if label in thresholds:
            ax.hlines(thresholds[label], j - 0.45, j + 0.45, colors="red", linestyles="--", linewidth=1.5)
    ax.plot([], [], "r--", label=f"real-image threshold{f' (q={q:g})' if q is not None else ''}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(_wrap(labels), fontsize=9)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("conditioned label")
    ax.set_ylabel("CAS (evaluation path)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def tail_bars(
    shares: Mapping[str, Mapping[str, tuple[float, float, float]]],
    groups: Sequence[str],
    path: str | Path,
    title: str,
    level: float = 0.95,
) -> Path:
    """Grouped bars of the tail share (%) per label/overall (x) and run (colour), with CI whiskers.
    shares: run -> group -> (share, ci_low, ci_high) as fractions."""
    plt = _plt()
    runs = list(shares)
    colours = _colours(len(runs))
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(runs)) ** 0.5), 4.0))
    for r, run in enumerate(runs):
        xs, heights, lows, highs = [], [], [], []
        for j, group in enumerate(groups):
            if group not in shares[run]:
                continue
            share, lo, hi = shares[run][group]
            if share is None or np.isnan(share):
                continue
            xs.append(j - 0.4 + width * (r + 0.5))
            heights.append(100 * share)
            lows.append(100 * max(0.0, share - lo))
            highs.append(100 * max(0.0, hi - share))
        ax.bar(xs, heights, width * 0.9, color=colours[r], alpha=0.8, label=run)
        ax.errorbar(xs, heights, yerr=[lows, highs], fmt="none", ecolor="black", capsize=3, linewidth=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(_wrap(groups), fontsize=9)
    ax.set_xlabel("label")
    ax.set_ylabel("share below the real-image threshold (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        title=f"{100 * level:g}% CI whiskers",
        title_fontsize=8,
    )
    return _save(fig, path)


def weight_heatmap(
    xs: Sequence[float],
    ys: Sequence[float | None],
    values: np.ndarray,
    stopped: np.ndarray,
    x_label: str,
    y_label: str,
    title: str,
    path: str | Path,
) -> Path:
    """A sweep's metric over two reward weights (one row when only one is swept); each cell is
    annotated (with enough digits to tell the cells apart), cells whose trials ASHA stopped early
    say so."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(xs), 1.2 + 0.8 * len(ys)))
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    spread = vmax - vmin
    digits = 4 if spread <= 0 else max(4, int(np.ceil(-np.log10(spread))) + 2)
    vmax = vmax if spread > 0 else vmin + 1e-12
    cmap = plt.get_cmap("viridis")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            value = values[i, j]
            if np.isfinite(value):
                bright = (value - vmin) / (vmax - vmin) > 0.6
                ax.text(
                    j,
                    i,
                    f"{value:.{digits}f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if bright else "white",
                )
            else:
                ax.text(j, i, "stopped" if stopped[i, j] else "-", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" if y is not None else "" for y in ys])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.formatter.set_useOffset(False)
    bar.formatter.set_scientific(False)
    bar.update_ticks()
    return _save(fig, path)
