"""Engines for the MLLM service tests, loaded by Ray from this directory (runtime_env PYTHONPATH).

`ScriptedJSONEngine` is the project's TransformersEngine (tiny model, real request parsing,
grammar compilation, response building, JSON validation and retry, HTTP) whose text generation is
steered: for JSON requests the first generation is cut short by max_tokens (finish "length", as a
constrained answer can be) and the next a valid answer for the schema asked (checklist items or
prompt variants), whose content a random model cannot write; asked about pneumothorax, it repeats
one variant (valid JSON whose content the prompt enricher must refuse). It stands in for a capable MLLM,
which the tests cannot download, so that the valid-answer path of the builders is exercised end to
end.
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
        self.real, self.schema, self.calls, self.repeat = real, None, 0, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def generate(self, inputs, settings, *args, **kwargs):
        real = self.real.generate(inputs, settings, *args, **kwargs)
        if self.schema is None:
            return real
        self.calls += 1
        if "items" in self.schema["properties"]:
            text = json.dumps(CHECKLIST_ANSWER)
        else:
            variants = variants_answer(self.schema["properties"]["variants"]["minItems"])
            if self.repeat:
                variants["variants"] = [variants["variants"][0]] * len(variants["variants"])
            text = json.dumps(variants)
        if self.calls % 2 == 1:  # every first try: cut short, so the engine must generate again
            return Generation(real.token_ids, text[:20], "length", real.logprobs, real.prompt_tokens)
        return Generation(real.token_ids, text, "stop", real.logprobs, real.prompt_tokens)


class ScriptedJSONEngine(TransformersEngine):
    async def start(self) -> None:
        await super().start()
        self.generator = ScriptedGenerator(self.generator)

    def _run(self, request):
        fmt = request.response_format
        self.generator.schema = fmt.json_schema.json_schema if fmt is not None and fmt.json_schema else None
        self.generator.calls = 0
        self.generator.repeat = "pneumothorax" in json.dumps(request.model_dump(include={"messages"})).lower()
        return super()._run(request)
