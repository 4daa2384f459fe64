"""Engines for the MLLM service tests, loaded by Ray from this directory (runtime_env PYTHONPATH).

`ScriptedJSONEngine` is the project's TransformersEngine (tiny model, real request parsing,
response building, JSON validation and retry, HTTP) whose text generation is steered: for JSON
requests the first generation is invalid JSON and the next a valid answer for the schema asked
(checklist items or prompt variants). It stands in for a capable MLLM, which the tests cannot
download, so that the valid-answer path of the builders is exercised end to end.
"""

from __future__ import annotations

import json

from craft_ray.serving.mllm_generation import Generation
from craft_ray.serving.transformers_engine import TransformersEngine

CHECKLIST_ANSWER = {
    "items": [
        {
            "question": "Is the cardiac silhouette wider than half the thoracic width?",
            "present": "a cardiac silhouette wider than half the chest",
            "absent": "a cardiac silhouette narrower than half the chest",
        },
        {
            "question": "is the cardiac  silhouette wider than half the thoracic width ?",
            "present": "a duplicate criterion",
            "absent": "that the builder must drop",
        },
        {
            "question": "Is the left heart border displaced towards the chest wall?",
            "present": "a laterally displaced left heart border",
            "absent": "a normally placed left heart border",
        },
    ]
}


def variants_answer(n: int) -> dict:
    return {"variants": [f"scripted variant {i} with a widened cardiac silhouette" for i in range(n)]}


class ScriptedGenerator:
    def __init__(self, real):
        self.real, self.schema, self.calls = real, None, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def generate(self, inputs, settings):
        real = self.real.generate(inputs, settings)
        if self.schema is None:
            return real
        self.calls += 1
        if self.calls % 2 == 1:  # every first try: invalid, so the engine must retry
            text = "not json {"
        elif "items" in self.schema["properties"]:
            text = json.dumps(CHECKLIST_ANSWER)
        else:
            text = json.dumps(variants_answer(self.schema["properties"]["variants"]["minItems"]))
        return Generation(real.token_ids, text, "stop", real.step_logprobs, real.prompt_tokens)


class ScriptedJSONEngine(TransformersEngine):
    async def start(self) -> None:
        await super().start()
        self.generator = ScriptedGenerator(self.generator)

    def _run(self, request):
        fmt = request.response_format
        self.generator.schema = fmt.json_schema.json_schema if fmt is not None and fmt.json_schema else None
        self.generator.calls = 0
        return super()._run(request)
