"""Clinical checklists: per-label criteria and per-modality anatomy and realism criteria.

The static base ships as `checklists.yaml` (versioned). MLLM-written checklists use the same
schema (plus an informative `provenance` mapping) and are layered on top with
`load_knowledge(extra=[...])`: an overlay's items for a label or modality section replace the
base's items for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import DATASETS, MODALITIES

SECTIONS = ("anatomy", "realism")


@dataclass(frozen=True)
class ChecklistItem:
    id: str  # "<dataset>:<label>:<n>" or "<modality>:<section>:<n>"
    question: str  # yes/no question for a VQA model
    present: str  # phrase for the criterion met (CLIP-style scorer)
    absent: str  # phrase for the criterion not met
    source: str  # which file it came from


@dataclass
class ClinicalKnowledge:
    versions: list[str] = field(default_factory=list)
    label_items: dict[tuple[str, str], list[ChecklistItem]] = field(default_factory=dict)
    modality_items: dict[tuple[str, str], list[ChecklistItem]] = field(default_factory=dict)

    def for_label(self, dataset: str, label: str) -> list[ChecklistItem]:
        try:
            return self.label_items[(dataset, label)]
        except KeyError:
            raise ConfigError(f"no clinical checklist for label '{label}' of dataset '{dataset}'") from None

    def anatomy(self, modality: str) -> list[ChecklistItem]:
        return self._section(modality, "anatomy")

    def realism(self, modality: str) -> list[ChecklistItem]:
        return self._section(modality, "realism")

    def _section(self, modality: str, section: str) -> list[ChecklistItem]:
        try:
            return self.modality_items[(modality, section)]
        except KeyError:
            raise ConfigError(f"no {section} checklist for modality '{modality}'") from None

    def all_items(self) -> list[ChecklistItem]:
        return [i for items in (*self.label_items.values(), *self.modality_items.values()) for i in items]


def _items(raw: Any, prefix: str, source: str) -> list[ChecklistItem]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: {prefix}: expected a non-empty list of checklist items")
    items = []
    for n, entry in enumerate(raw):
        where = f"{source}: {prefix}[{n}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with question, present, absent")
        missing = [k for k in ("question", "present", "absent") if not str(entry.get(k, "")).strip()]
        extra = sorted(set(entry) - {"question", "present", "absent"})
        if missing or extra:
            raise ConfigError(f"{where}: missing {missing} / unknown keys {extra}")
        items.append(
            ChecklistItem(
                f"{prefix}:{n}",
                entry["question"].strip(),
                entry["present"].strip(),
                entry["absent"].strip(),
                source,
            )
        )
    return items


def _merge(kb: ClinicalKnowledge, data: dict[str, Any], source: str) -> None:
    # provenance: who wrote an MLLM-made file (model, endpoint, prompt hash, date); informative only
    unknown = sorted(set(data) - {"version", "name", "provenance", "modalities", "labels"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}")
    kb.versions.append(f"{data.get('name', Path(source).stem)}@{data.get('version', '?')}")
    for modality, sections in (data.get("modalities") or {}).items():
        if modality not in MODALITIES:
            raise ConfigError(f"{source}: unknown modality '{modality}' (known: {', '.join(MODALITIES)})")
        for section, raw in sections.items():
            if section not in SECTIONS:
                raise ConfigError(
                    f"{source}: modalities.{modality}: unknown section '{section}' (known: {SECTIONS})"
                )
            kb.modality_items[(modality, section)] = _items(raw, f"{modality}:{section}", source)
    for dataset, labels in (data.get("labels") or {}).items():
        if dataset not in DATASETS:
            raise ConfigError(f"{source}: unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
        for label, raw in labels.items():
            DATASETS[dataset].check_labels([label], where=f"{source}: labels.{dataset}")
            kb.label_items[(dataset, label)] = _items(raw, f"{dataset}:{label}", source)


def load_knowledge(extra: list[str | Path] | None = None) -> ClinicalKnowledge:
    """The packaged static base, with overlay files (e.g. MLLM-written checklists) on top."""
    kb = ClinicalKnowledge()
    base = resources.files("craft_ray.knowledge").joinpath("checklists.yaml")
    _merge(kb, yaml.safe_load(base.read_text()), "checklists.yaml")
    for path in extra or []:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"checklist file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        _merge(kb, data, str(path))
    return kb
