"""JSON output (`response_format`) for the CPU engine, constrained the way vLLM constrains it: the
schema is compiled by xgrammar (the grammar library vLLM uses) and a transformers logits processor
masks, at every step, the tokens the grammar does not allow. A finished answer therefore parses and
matches the schema; each is still validated here (jsonschema), and one cut short by `max_tokens` is
generated again and, failing that, answered with an error rather than a 200.

Only schema keywords the grammar enforces are accepted: xgrammar compiles some others (`not`,
`uniqueItems`, `multipleOf`, regex lookarounds, ...) without enforcing them, and `format` only as
syntax (it lets 2023-02-30 through as a date), and a client could not tell. A schema that uses
them, or that the grammar cannot express at all, is refused with a message naming the keyword.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import torch
import transformers

# keywords that constrain nothing (annotations, identifiers)
ANNOTATIONS = {
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
}
# keywords xgrammar turns into grammar rules (checked by sampling the tiny model: test_serve_mllm)
ENFORCED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "definitions",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minProperties",
    "maxProperties",
}
# keywords whose values are maps of names to subschemas, and lists of subschemas
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}
_SCHEMA_LISTS = {"anyOf", "prefixItems"}
# regex features xgrammar's converter does not enforce (lookaround) or refuses (backreferences)
_UNENFORCED_REGEX = re.compile(r"\(\?<?[=!]|\\[1-9]|\\k<")


def unenforceable(schema: Any, where: str = "#") -> list[str]:
    """What in `schema` the grammar would not enforce, as 'where: why' lines (empty: all of it)."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, dict):
        return [f"{where}: a schema must be an object or a boolean"]
    problems = [
        f"{where}: keyword '{key}' cannot be enforced while decoding"
        for key in schema
        if key not in ENFORCED and key not in ANNOTATIONS
    ]
    if "pattern" in schema and ("minLength" in schema or "maxLength" in schema):
        # xgrammar drops the length bounds of a pattern string without a word
        problems.append(f"{where}: minLength/maxLength cannot be combined with pattern")
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and _UNENFORCED_REGEX.search(pattern):
        problems.append(f"{where}: pattern {pattern!r}: lookarounds and backreferences cannot be enforced")
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        problems.append(f"{where}: $ref {ref!r}: only references inside the schema (#/...) are followed")
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                problems += unenforceable(sub, f"{where}/{key}/{name}")
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                problems += unenforceable(sub, f"{where}/{key}/{i}")
        elif key in ("items", "additionalProperties") and isinstance(value, dict | bool):
            problems += unenforceable(value, f"{where}/{key}")
    return problems


@dataclass
class JSONRequirement:
    schema: dict[str, Any] | None  # None: any JSON object (response_format json_object)

    def grammar_schema(self) -> str:
        return json.dumps(self.schema if self.schema is not None else {"type": "object"})

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
    ValueError for a schema that is invalid or that the grammar cannot enforce."""
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
        problems = unenforceable(schema)
        if problems:
            raise ValueError(
                "response_format.json_schema.schema cannot be enforced by constrained decoding: "
                + "; ".join(problems[:5])
            )
        return JSONRequirement(schema)
    raise ValueError(f"response_format type {kind!r} is not supported (text, json_object, json_schema)")


@dataclass
class JSONGrammars:
    """xgrammar's view of one model's vocabulary, and the grammars of the schemas asked so far."""

    tokenizer: Any
    vocab_size: int
    _compiled: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import xgrammar as xgr

        found = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
        # special tokens (chat markers, image placeholders, padding) are never part of an answer:
        # an empty entry makes xgrammar treat them as such; the stop tokens stay as found
        encoded = [""] * self.vocab_size
        for token, index in self.tokenizer.get_vocab().items():
            if index < self.vocab_size:
                encoded[index] = token
        special = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        for index in (special | set(self.tokenizer.all_special_ids)) - set(found.stop_token_ids):
            if index < self.vocab_size:
                encoded[index] = ""
        self.info = xgr.TokenizerInfo(
            encoded,
            found.vocab_type,
            vocab_size=self.vocab_size,
            stop_token_ids=found.stop_token_ids,
            add_prefix_space=found.add_prefix_space,
        )
        self.compiler = xgr.GrammarCompiler(self.info)
        self.stop_ids = set(found.stop_token_ids)

    def compile(self, requirement: JSONRequirement):
        """The grammar of `requirement` (compact JSON: no free whitespace for a small model to get
        lost in). Raises ValueError when xgrammar cannot express the schema."""
        key = requirement.grammar_schema()
        if key not in self._compiled:
            try:
                self._compiled[key] = self.compiler.compile_json_schema(
                    key, any_whitespace=False, strict_mode=True
                )
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[-1].split(": ", 1)[-1]
                raise ValueError(
                    f"response_format.json_schema.schema cannot be expressed as a grammar: {reason}"
                ) from None
        return self._compiled[key]

    def text(self, token_ids: list[int]) -> str:
        """The text the grammar accepted: the tokens' own bytes, joined (a tokenizer's decode may
        add spaces between word tokens or clean them up)."""
        vocab = self.info.decoded_vocab
        return b"".join(vocab[i] for i in token_ids if i not in self.stop_ids).decode("utf-8", "replace")


class GrammarLogitsProcessor(transformers.LogitsProcessor):
    """Masks the tokens the grammar does not allow next (one generate() call, batch of 1). It runs
    before temperature and top-k/top-p, as transformers applies custom processors first."""

    def __init__(self, compiled):
        import xgrammar as xgr

        self.xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.mask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started and not self.matcher.is_terminated():
            if not self.matcher.accept_token(int(input_ids[0, -1])):
                raise RuntimeError("the grammar refused a token it had allowed")
        self.started = True
        if not self.matcher.is_terminated():
            self.matcher.fill_next_token_bitmask(self.mask, 0)
            self.xgr.apply_token_bitmask_inplace(scores, self.mask.to(scores.device))
        return scores
