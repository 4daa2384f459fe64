"""Enriched prompt variants written by the served MLLM: several per label set, with provenance.

The file doubles as a cache: entries made by the same model with the same prompt are reused on
the next run, so only new label sets are asked. Label sets with no usable answer fall back to
variants built from the static knowledge base (with a warning). Training reads the file with
`prompts.enrichment: file` (`craft_ray.knowledge.prompts.VariantEnrichment`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from craft_ray.errors import ConfigError
from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import DatasetSpec
from craft_ray.knowledge.prompts import ENRICHMENT_KIND, label_prompt
from craft_ray.serving.client import MLLMClient
from craft_ray.serving.provenance import prompt_hash, provenance

PROMPT = (
    "Write {n} different short descriptions of the visual findings an expert sees in {prompt}. "
    "Each is one phrase of at most 25 words, to be appended to an image-generation prompt; name "
    "concrete visual signs, no diagnosis words alone. Answer with JSON only."
)


def variants_schema(n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "variants": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": {"type": "string", "minLength": 5, "maxLength": 240},
            }
        },
        "required": ["variants"],
        "additionalProperties": False,
    }


@dataclass
class LabelSetVariants:
    labels: list[str]
    variants: list[str]
    source: str  # "mllm" | "fallback" | "cache"
    problems: list[str] = field(default_factory=list)


def _distinct(value: dict[str, Any]) -> str | None:
    texts = [" ".join(v.split()).lower() for v in value["variants"]]
    return None if len(set(texts)) == len(texts) else "variants repeat each other"


def static_variants(spec: DatasetSpec, labels: list[str], n: int) -> list[str]:
    """Rotations through each label's checklist 'present' phrases."""
    knowledge = load_knowledge()
    pools = [[i.present for i in knowledge.for_label(spec.name, label)] for label in labels]
    return list(dict.fromkeys(", ".join(pool[k % len(pool)] for pool in pools) for k in range(n)))


def enrich_label_set(
    client: MLLMClient, spec: DatasetSpec, labels: list[str], n: int, attempts: int
) -> LabelSetVariants:
    prompt = PROMPT.format(n=n, prompt=label_prompt(spec, labels))
    answer = client.chat_json(prompt, variants_schema(n), name="variants", attempts=attempts, check=_distinct)
    if answer.value is not None:
        return LabelSetVariants(labels, [" ".join(v.split()) for v in answer.value["variants"]], "mllm")
    return LabelSetVariants(labels, static_variants(spec, labels, n), "fallback", answer.problems)


def cached_entries(
    previous: dict[str, Any] | None, model: str, n: int, path: str
) -> dict[tuple[str, ...], dict]:
    """Entries of an earlier file that this run may reuse (same model and prompt); an earlier file
    from another model or prompt is an error (replace it with --overwrite)."""
    if not previous:
        return {}
    prov = previous.get("provenance") or {}
    same = prov.get("model") == model and prov.get("prompt_hash") == prompt_hash(PROMPT, variants_schema(n))
    if not same:
        raise ConfigError(
            f"{path} was made by model {prov.get('model')!r} with prompt {prov.get('prompt_hash')!r}; "
            "pass --overwrite to replace it"
        )
    return {tuple(e["labels"]): e for e in previous.get("label_sets", []) if e.get("source") == "mllm"}


def enrich_prompts(
    client: MLLMClient,
    spec: DatasetSpec,
    label_sets: list[list[str]],
    n: int = 3,
    attempts: int = 3,
    previous: dict[str, Any] | None = None,
    previous_path: str = "",
    on_label_set: Callable[[LabelSetVariants], None] | None = None,
) -> dict[str, Any]:
    cache = cached_entries(previous, client.model, n, previous_path)
    entries = []
    for labels in label_sets:
        spec.check_labels(labels)
        ordered = sorted(dict.fromkeys(labels), key=spec.labels.index)
        hit = cache.get(tuple(ordered))
        if hit is not None:
            result = LabelSetVariants(ordered, list(hit["variants"]), "cache")
        else:
            result = enrich_label_set(client, spec, ordered, n, attempts)
        if on_label_set:
            on_label_set(result)
        source = "mllm" if result.source == "cache" else result.source
        entries.append({"labels": ordered, "source": source, "variants": result.variants})
    prov = provenance(client.model, client.base_url, PROMPT, variants_schema(n), "craft prompts enrich")
    return {
        "kind": ENRICHMENT_KIND,
        "version": 1,
        "dataset": spec.name,
        "provenance": prov,
        "label_sets": entries,
    }
