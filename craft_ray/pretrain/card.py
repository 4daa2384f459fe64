"""Model cards of the shipped phantom models: `card.json` (machine-readable) and `README.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from craft_ray.pretrain.gates import GATE_SEED

SEED_PLAN = {
    "demo data (craft demo, experiments)": 0,
    "phantom diffusion base training": 100,
    "phantom VLM training (reward model)": 200,
    "phantom VLM negatives of other modalities": 201,
    "phantom evaluation VLM training (craft pretrain vlm --arch eval)": 400,
    "phantom evaluation VLM negatives of other modalities": 401,
    "out-of-family classifier (evaluator) training": 300,
    "reward classifier (phantom-reward, the positive control) training": 500,
    "held-out gates of every shipped model": GATE_SEED,
}

WRONG_LABELS = (
    "A wrong label set is the hardest plausible mistake: single-label datasets, another class of the "
    "phantom label space (uniform); CheXpert (multi-label), the true set with one phantom label flipped "
    "(uniform among the findings and devices), 'No Finding' then set consistently."
)


def write_card(directory: Path, kind: str, config: dict, record: dict, gate: dict, command: str) -> None:
    card: dict[str, Any] = {
        "kind": kind,
        "config": config,
        "training": record,
        "gate": gate,
        "command": command,
        "seed_plan": SEED_PLAN,
    }
    if kind == "vlm":
        card["wrong_label_set"] = WRONG_LABELS
    _write(directory, card)


def _write(directory: Path, card: dict) -> None:
    """card.json and the README rendered from it, always together."""
    (directory / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (directory / "README.md").write_text(_markdown(card))


def read_card(directory: Path) -> dict:
    return json.loads((directory / "card.json").read_text())


def _markdown(card: dict) -> str:
    cfg, rec, gate = card["config"], card["training"], card["gate"]
    from craft_ray.pretrain.vlm import ARCH_ROLES, vlm_family

    role = ARCH_ROLES.get(cfg.get("arch_name", "reward"), "custom")
    family = vlm_family(cfg.get("arch_name", "reward"))
    title = {
        "vlm": f"{family}:{cfg.get('modality')} ({role} VLM)",
        "classifier": f"phantom:{cfg.get('modality')} (out-of-family classifier)"
        if cfg.get("data_seed", 300) == 300
        else f"phantom-reward:{cfg.get('modality')} (reward classifier, data seed {cfg.get('data_seed')})",
    }.get(card["kind"], "phantom (diffusion base)")
    lines = [
        f"# {title}",
        "",
        f"Regenerate (deterministic where torch allows): `{card['command']}`",
        "",
        "## Data",
        "",
        *(f"- {k}: {v}" for k, v in cfg.items() if k != "arch"),
        "",
        "## Architecture",
        "",
        "```json",
        json.dumps(cfg.get("arch", {}), indent=1),
        "```",
        "",
        "## Training",
        "",
        f"- wall time: {rec['wall_time_s']} s on {rec['machine']} ({rec['torch_threads']} torch threads)",
        "",
        "## Held-out gate",
        "",
        "```json",
        json.dumps(gate, indent=1),
        "```",
        "",
    ]
    if "item_gate" in gate:
        lines += _item_table(gate["item_gate"])
    if "probe" in card:
        lines += _probe_section(card["probe"])
    if "wrong_label_set" in card:
        lines += ["## Wrong label sets", "", card["wrong_label_set"], ""]
    lines += ["## Seed plan", "", *(f"- {k}: {v}" for k, v in card["seed_plan"].items()), ""]
    return "\n".join(lines)


def _item_table(items: dict) -> list[str]:
    """Every checklist item's AUROC against the phantoms' ground truth, and the plausibility gate."""
    rows = [
        f"| `{item}` | {'not drawn' if value is None else f'{value:.3f}'} |"
        for item, value in items["items"].items()
    ]
    defects = ", ".join(f"{k} {v:.3f}" for k, v in items["plausibility_auroc_per_defect"].items())
    return [
        "## Item gate",
        "",
        f"On {items['n']} held-out phantoms (seed {items['seed']}, {items['implausible']:.0%} implausible): "
        f"min AUROC over the {items['items_drawn']} drawn items {items['item_auroc_min']:.3f} "
        f"(mean {items['item_auroc_mean']:.3f}); the least-met anatomy or realism item separates "
        f"implausible from plausible images with AUROC {items['plausibility_auroc']:.3f} ({defects}).",
        "",
        "| item | AUROC |",
        "|---|---|",
        *rows,
        "",
    ]


def _probe_section(probe: dict) -> list[str]:
    """`craft cas probe --card`: how far pixel ascent on the reward moves the independent classifier."""
    lines = ["## Probe (how easy the reward is to fool)", "", f"`{probe['command']}`", ""]
    lines += [
        "| target | images | reward before | after | classifier P before | after | transfer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in probe["labels"]:
        lines.append(
            f"| {r['label']} | {r['n']} | {r['reward_before']:.3f} | {r['reward_after']:.3f} | "
            f"{r['classifier_before']:.3f} | {r['classifier_after']:.3f} | {r['transfer']:.3f} |"
        )
    s = probe["summary"]
    lines += [
        "",
        f"Transfer = classifier gain / reward gain (1: the independent classifier agrees, 0: the reward "
        f"is fooled alone); mean {s['transfer_mean']:.3f}.",
        "",
    ]
    return lines


def record_probe(directory: Path, probe: dict) -> None:
    """Keep a probe's numbers in the model's card (card.json and README.md); a later probe replaces them."""
    _write(directory, {**read_card(directory), "probe": probe})


def update_gate(directory: Path, gate: dict) -> None:
    """Re-gate a model (e.g. after the gate's rule improved) without retraining: the card keeps
    its data, training record and command; only the gate section changes."""
    _write(directory, {**read_card(directory), "gate": gate})
