"""JSON output (`response_format`) checked against its schema: the CPU engine validates each
generation and retries, since small models cannot be constrained token by token here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema


@dataclass
class JSONRequirement:
    schema: dict[str, Any] | None  # None: any JSON object (response_format json_object)

    def problem(self, text: str) -> str | None:
        """None when `text` is valid; otherwise what is wrong with it."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not JSON ({exc.msg} at character {exc.pos})"
        if self.schema is None:
            return None if isinstance(value, dict) else "not a JSON object"
        try:
            jsonschema.validate(value, self.schema)
        except jsonschema.ValidationError as exc:
            return f"does not match the schema: {exc.message}"
        return None


def requirement_from(response_format: Any) -> JSONRequirement | None:
    """The JSON requirement of an OpenAI `response_format` (None for text output). Raises
    ValueError for a schema that is itself invalid."""
    if response_format is None:
        return None
    data = (
        response_format.model_dump(by_alias=True)
        if hasattr(response_format, "model_dump")
        else response_format
    )
    kind = data.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSONRequirement(None)
    if kind == "json_schema":
        schema = (data.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema must be a JSON schema object")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(
                f"response_format.json_schema.schema is not a valid JSON schema: {exc.message}"
            ) from None
        return JSONRequirement(schema)
    raise ValueError(f"response_format type {kind!r} is not supported (text, json_object, json_schema)")
