"""Label-conditioned prompts, their enrichment, and the finding phrase pairs the CAS scores with."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import yaml

from craft_ray.errors import ConfigError
from craft_ray.knowledge.checklists import ClinicalKnowledge
from craft_ray.knowledge.labels import DatasetSpec

if TYPE_CHECKING:
    from craft_ray.config import PromptConfig

# Labels that mean "nothing there": their negation is the abnormality itself.
NEGATED_FINDINGS = {
    "No Finding": "an acute cardiopulmonary abnormality",
    "No DR": "diabetic retinopathy",
    "BACK": "tissue",
}


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def label_prompt(spec: DatasetSpec, labels: list[str]) -> str:
    """'a frontal chest radiograph showing cardiomegaly and a pleural effusion'."""
    spec.check_labels(labels)
    if not labels:
        return spec.modality_phrase
    if labels in (["No Finding"], ["No DR"]):
        return f"{spec.modality_phrase} with {spec.descriptions[labels[0]]}"
    ordered = sorted(labels, key=spec.labels.index)
    return f"{spec.modality_phrase} showing {_join([spec.descriptions[label] for label in ordered])}"


def finding_pair(spec: DatasetSpec, label: str) -> tuple[str, str]:
    """(present, absent) phrases for one label, for the pathology-fidelity dimension."""
    spec.check_labels([label])
    if label in NEGATED_FINDINGS:
        return label_prompt(spec, [label]), f"{spec.modality_phrase} showing {NEGATED_FINDINGS[label]}"
    return label_prompt(spec, [label]), f"{spec.modality_phrase} without {spec.descriptions[label]}"


class Enricher(Protocol):
    def phrases(self, labels: list[str], rng: random.Random) -> list[str]: ...


class NoEnrichment:
    def phrases(self, labels: list[str], rng: random.Random) -> list[str]:
        return []


ENRICHMENT_KIND = "craft-prompt-enrichment"


class VariantEnrichment:
    """Whole enrichment variants per label set, from `craft prompts enrich` (`from_file`).

    A label set with its own entry gets one of its variants; otherwise each of its labels that has
    a single-label entry contributes one of those; labels without any entry add nothing.
    """

    def __init__(self, variants: dict[tuple[str, ...], list[str]], spec: DatasetSpec):
        self.variants, self.spec = variants, spec

    @classmethod
    def from_file(cls, spec: DatasetSpec, path: str | Path) -> VariantEnrichment:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"enrichment file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict) or data.get("kind") != ENRICHMENT_KIND:
            raise ConfigError(f"{path}: not a prompt enrichment file from `craft prompts enrich`")
        if data.get("dataset") != spec.name:
            raise ConfigError(f"{path}: enrichments for dataset {data.get('dataset')!r}, not {spec.name!r}")
        variants = {}
        for n, entry in enumerate(data.get("label_sets") or []):
            labels, texts = entry.get("labels"), entry.get("variants")
            if not isinstance(labels, list) or not isinstance(texts, list) or not texts:
                raise ConfigError(
                    f"{path}: label_sets[{n}]: expected labels and a non-empty list of variants"
                )
            spec.check_labels(labels, where=f"{path}: label_sets[{n}]")
            variants[tuple(sorted(labels, key=spec.labels.index))] = [str(t) for t in texts]
        return cls(variants, spec)

    def phrases(self, labels: list[str], rng: random.Random) -> list[str]:
        key = tuple(sorted(labels, key=self.spec.labels.index))
        if key in self.variants:
            return [rng.choice(self.variants[key])]
        return [rng.choice(self.variants[(label,)]) for label in key if (label,) in self.variants]


class PhraseEnrichment:
    """Adds `per_label` visual-finding phrases per label, drawn from a pool for each label.

    The pool comes from the clinical checklist base (`from_knowledge`: the items' 'present'
    phrases) or from an MLLM-written YAML cache {label: [phrase, ...]} (`from_file`).
    """

    def __init__(self, pool: dict[str, list[str]], per_label: int = 1):
        self.pool = pool
        self.per_label = per_label

    @classmethod
    def from_knowledge(
        cls, spec: DatasetSpec, knowledge: ClinicalKnowledge, per_label: int = 1
    ) -> PhraseEnrichment:
        return cls(
            {label: [i.present for i in knowledge.for_label(spec.name, label)] for label in spec.labels},
            per_label,
        )

    @classmethod
    def from_file(cls, spec: DatasetSpec, path: str | Path, per_label: int = 1) -> PhraseEnrichment:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"enrichment cache not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of label -> list of phrases")
        spec.check_labels(list(data), where=str(path))
        return cls({label: [str(p) for p in data.get(label) or []] for label in spec.labels}, per_label)

    def phrases(self, labels: list[str], rng: random.Random) -> list[str]:
        out: list[str] = []
        for label in labels:
            pool = self.pool.get(label, [])
            out.extend(rng.sample(pool, min(self.per_label, len(pool))))
        return out


def enricher_for(spec: DatasetSpec, prompts: PromptConfig) -> Enricher:
    """The enrichment an experiment's `prompts` section names: training, evaluation and the reader
    study all build prompts through this one choice, so a run is judged on the prompts it trained on."""
    if prompts.enrichment == "static":
        from craft_ray.knowledge.checklists import load_knowledge

        return PhraseEnrichment.from_knowledge(spec, load_knowledge(), prompts.phrases_per_label)
    if prompts.enrichment == "cache":
        return PhraseEnrichment.from_file(spec, prompts.enrichment_cache, prompts.phrases_per_label)
    if prompts.enrichment == "file":
        return VariantEnrichment.from_file(spec, prompts.enrichment_file)
    return NoEnrichment()


def build_prompt(spec: DatasetSpec, labels: list[str], enricher: Enricher, rng: random.Random) -> str:
    """Template prompt for the label set, followed by enrichment phrases when there are any."""
    base = label_prompt(spec, labels)
    extra = enricher.phrases(sorted(labels, key=spec.labels.index), rng)
    return f"{base}, {', '.join(extra)}" if extra else base


def vocabulary_corpus(knowledge: ClinicalKnowledge, specs: list[DatasetSpec]) -> list[str]:
    """Every text the prompts and checklists can produce, for building small offline vocabularies."""
    texts = [s.modality_phrase for s in specs]
    for spec in specs:
        texts += list(spec.descriptions.values())
        texts += [p for label in spec.labels for p in finding_pair(spec, label)]
    texts += [t for item in knowledge.all_items() for t in (item.question, item.present, item.absent)]
    return texts
