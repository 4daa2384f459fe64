"""Provenance of MLLM-made files (checklists, prompt enrichments): which model wrote them, asked
how, when, where."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any


def prompt_hash(template: str, schema: dict[str, Any]) -> str:
    """Identifies the question asked: the prompt template and the JSON schema of the answer."""
    text = template + "\n" + json.dumps(schema, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance(model: str, endpoint: str, template: str, schema: dict[str, Any], tool: str) -> dict[str, Any]:
    return {
        "model": model,
        "endpoint": endpoint,
        "prompt_hash": prompt_hash(template, schema),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": tool,
    }
