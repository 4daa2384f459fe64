"""Clinical checklists written by the served MLLM, in the knowledge base's overlay schema.

Per label: ask for visual criteria as JSON (schema in the request), validate, retry, drop
duplicates; when no answer is usable, fall back to the static base's items for that label (with
a warning). The result loads with `load_knowledge([file])` / `--checklists file`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from craft_ray.knowledge.checklists import ClinicalKnowledge, load_knowledge
from craft_ray.knowledge.labels import DatasetSpec
from craft_ray.serving.client import MLLMClient
from craft_ray.serving.provenance import provenance

MIN_ITEMS, MAX_ITEMS = 2, 8
_TEXT = {"type": "string", "minLength": 3, "maxLength": 200}
CHECKLIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "minItems": MIN_ITEMS,
            "maxItems": MAX_ITEMS,
            "items": {
                "type": "object",
                "properties": {"question": _TEXT, "present": _TEXT, "absent": _TEXT},
                "required": ["question", "present", "absent"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}
PROMPT = (
    "You are an expert reader of {modality}. List {n} visual criteria a reader checks in {modality} "
    "to confirm the finding '{label}' ({description}). For each criterion give: question, a yes/no "
    "question about the image; present, a short phrase describing the image when the criterion is "
    "met; absent, a short phrase describing it when it is not. Answer with JSON only."
)


@dataclass
class LabelChecklist:
    label: str
    items: list[dict[str, str]]
    source: str  # "mllm" | "fallback"
    problems: list[str] = field(default_factory=list)


def _key(text: str) -> str:
    return re.sub(r"[\s\W_]+", " ", text.lower()).strip()


def dedupe_items(items: list[dict[str, str]]) -> list[dict[str, str]]:
    """Items with whitespace-trimmed fields; later items asking the same question (ignoring case,
    spacing and punctuation) are dropped."""
    seen, out = set(), []
    for item in items:
        clean = {k: " ".join(str(item[k]).split()) for k in ("question", "present", "absent")}
        key = _key(clean["question"])
        if key and key not in seen:
            seen.add(key)
            out.append(clean)
    return out


def check_items(value: dict[str, Any]) -> str | None:
    """Content checks the schema cannot state."""
    items = dedupe_items(value["items"])
    if len(items) < MIN_ITEMS:
        return f"only {len(items)} distinct criteria (need {MIN_ITEMS})"
    for i, item in enumerate(items):
        if not item["question"].endswith("?"):
            return f"criterion {i}: the question does not end with '?'"
        if _key(item["present"]) == _key(item["absent"]):
            return f"criterion {i}: present and absent say the same"
    return None


def static_items(knowledge: ClinicalKnowledge, dataset: str, label: str) -> list[dict[str, str]]:
    return [
        {"question": i.question, "present": i.present, "absent": i.absent}
        for i in knowledge.for_label(dataset, label)
    ]


def build_label(
    client: MLLMClient, spec: DatasetSpec, label: str, knowledge: ClinicalKnowledge, n: int, attempts: int
) -> LabelChecklist:
    prompt = PROMPT.format(
        modality=spec.modality_phrase, n=n, label=label, description=spec.descriptions[label]
    )
    answer = client.chat_json(
        prompt, CHECKLIST_SCHEMA, name="checklist", attempts=attempts, check=check_items
    )
    if answer.value is not None:
        return LabelChecklist(label, dedupe_items(answer.value["items"]), "mllm")
    return LabelChecklist(label, static_items(knowledge, spec.name, label), "fallback", answer.problems)


def build_checklists(
    client: MLLMClient,
    spec: DatasetSpec,
    labels: list[str],
    n: int = 4,
    attempts: int = 3,
    on_label: Callable[[LabelChecklist], None] | None = None,
) -> dict[str, Any]:
    """The overlay document: version, name, provenance (with each label's source) and labels."""
    spec.check_labels(labels)
    knowledge = load_knowledge()
    results = []
    for label in labels:
        result = build_label(client, spec, label, knowledge, n, attempts)
        results.append(result)
        if on_label:
            on_label(result)
    prov = provenance(client.model, client.base_url, PROMPT, CHECKLIST_SCHEMA, "craft checklists build")
    prov["sources"] = {r.label: r.source for r in results}
    return {
        "version": 1,
        "name": f"mllm-checklists-{spec.name}",
        "provenance": prov,
        "labels": {spec.name: {r.label: r.items for r in results}},
    }
