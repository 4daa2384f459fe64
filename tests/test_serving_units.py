"""Serving pieces without a running service: request checks, image limits, JSON requirements,
builders' validation, enrichment files, and the Serve YAMLs against Ray Serve's own schema."""

from __future__ import annotations

import io
import random

import pytest
import torch
import yaml
from PIL import Image
from serving_helpers import SERVE_DIR, b64, png_bytes

from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import get_dataset
from craft_ray.knowledge.prompts import VariantEnrichment
from craft_ray.serving.cas_requests import RequestError, parse_cas_request
from craft_ray.serving.checklist_builder import check_items, dedupe_items
from craft_ray.serving.deploy import read_serve_config, validate_serve_config
from craft_ray.serving.evaluator_config import Limits, api_key, load_evaluator_config
from craft_ray.serving.images import ImageInputError, image_from_base64
from craft_ray.serving.json_output import requirement_from

SPECS = {"chexpert": get_dataset("chexpert")}


def test_images_decode_to_the_datasets_channels_within_limits():
    grey = image_from_base64(b64(png_bytes((6, 4), "L")), 3, 10_000, 100)
    assert grey.shape == (3, 4, 6) and torch.equal(grey[0], grey[1])
    rgb = image_from_base64("data:image/png;base64," + b64(png_bytes((5, 5), "RGB")), 1, 10_000, 100)
    assert rgb.shape == (1, 5, 5) and 0.0 <= float(rgb.min()) <= float(rgb.max()) <= 1.0
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="JPEG")
    assert image_from_base64(b64(buf.getvalue()), None, 10_000, 100).shape == (3, 8, 8)
    cases = [
        (b64(png_bytes((20, 20))), 10_000, 100, 413, "pixels"),
        (b64(png_bytes((20, 20))), 50, 10_000, 413, "bytes"),
        ("abc$", 10_000, 100, 422, "base64"),
        (b64(b"GIF89a-broken"), 10_000, 100, 422, "not an image"),
        ("https://example.org/x.png", 10_000, 100, 422, "not fetched"),
    ]
    for value, max_bytes, max_pixels, status, text in cases:
        with pytest.raises(ImageInputError, match=text) as info:
            image_from_base64(value, 1, max_bytes, max_pixels)
        assert info.value.status == status


def test_cas_request_parsing():
    body = f'{{"dataset": "chexpert", "items": [{{"image": "{b64(png_bytes())}", "labels": ["Edema", "Edema", "Fracture"]}}]}}'
    parsed = parse_cas_request(body.encode(), SPECS, Limits())
    assert parsed.dataset == "chexpert" and parsed.items[0].labels == ["Edema", "Fracture"]
    assert parsed.items[0].image.shape == (1, 32, 32)
    with pytest.raises(RequestError, match=r"items\[1\].labels: unknown label\(s\) \['Pnemonia'\]") as info:
        parse_cas_request(
            body.replace(
                '"Fracture"]}]', '"Fracture"]}, {"image": "AAAA", "labels": ["Pnemonia"]}]'
            ).encode(),
            SPECS,
            Limits(),
        )
    assert info.value.status == 422 and info.value.payload()["error"]["field"] == "items[1]"


def test_json_requirements_from_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req = requirement_from({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert req.problem('{"a": 3}') is None
    assert "schema" in req.problem('{"a": "3"}') and "not JSON" in req.problem("{a: 3")
    assert requirement_from({"type": "text"}) is None
    assert requirement_from({"type": "json_object"}).problem("[1]") == "not a JSON object"
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        requirement_from({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}})
    # keywords the grammar would compile without enforcing are refused, each named with its place
    loose = {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
            "b": {"not": {"type": "string"}},
            "c": {"type": "string", "pattern": "^(?!x)[a-z]+$"},
            "d": {"type": "string", "format": "date"},
            "e": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 4},
        },
    }
    with pytest.raises(ValueError) as info:
        requirement_from({"type": "json_schema", "json_schema": {"name": "x", "schema": loose}})
    message = str(info.value)
    for part in (
        "#/properties/a: keyword 'uniqueItems'",
        "#/properties/b: keyword 'not'",
        "#/properties/c: pattern '^(?!x)[a-z]+$': lookarounds",
        "#/properties/d: keyword 'format'",
        "#/properties/e: minLength/maxLength cannot be combined with pattern",
    ):
        assert part in message, (part, message)


BOUNDED_SCHEMA = {
    "type": "object",
    "properties": {
        "finding": {"type": "string", "minLength": 2, "maxLength": 12},
        "present": {"type": "boolean"},
        "grade": {"enum": ["mild", "moderate", "severe"]},
        "count": {"type": ["integer", "null"], "minimum": -5, "maximum": 100},
        "share": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "sides": {"type": "array", "items": {"const": "left"}, "minItems": 1, "maxItems": 3},
        "code": {"$ref": "#/$defs/code"},
        "note": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]},
    },
    "required": ["finding", "present", "grade", "count", "share", "sides", "code"],
    "additionalProperties": False,
    "$defs": {"code": {"type": "string", "pattern": "^[A-C][0-9]{2}$"}},
}


@pytest.fixture(scope="module")
def tiny_generator():
    pytest.importorskip("xgrammar", reason="needs the llm extra: make install-llm")
    from craft_ray.serving.json_output import JSONGrammars
    from craft_ray.serving.mllm_generation import MLLMGenerator

    generator = MLLMGenerator.load("tiny")
    grammars = JSONGrammars(generator.tokenizer, generator.vocab_size)
    prompt = generator.chat_prompt([{"role": "user", "content": [{"type": "text", "text": "JSON, please"}]}])
    return generator, grammars, generator.inputs(prompt, [])


def test_constrained_decoding_makes_the_random_tiny_model_answer_valid_json(tiny_generator):
    """Sampling at temperature 1 from a random-weight model: with the grammar every finished
    answer parses and matches a schema using every enforced keyword kind; without it none does."""
    import json

    from craft_ray.serving.json_output import GrammarLogitsProcessor
    from craft_ray.serving.mllm_generation import SamplingSettings

    generator, grammars, inputs = tiny_generator
    requirement = requirement_from(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": BOUNDED_SCHEMA}}
    )
    grammar = grammars.compile(requirement)
    finished = []
    for seed in range(12):
        settings = SamplingSettings(150, 1.0, None, None, seed, [])
        constrained = generator.generate(
            inputs, settings, None, GrammarLogitsProcessor(grammar), grammars.text
        )
        if constrained.finish_reason == "stop":
            assert requirement.problem(constrained.text) is None, constrained.text
            finished.append(json.loads(constrained.text))
        free = generator.generate(inputs, settings)
        assert requirement.problem(free.text) is not None  # the grammar is what makes it JSON
    assert len(finished) >= 10
    assert len({f["grade"] for f in finished}) > 1 and len({f["code"] for f in finished}) > 1  # sampled
    with pytest.raises(ValueError, match="cannot be expressed as a grammar"):
        too_many = {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 2}
        too_many["additionalProperties"] = False
        grammars.compile(
            requirement_from({"type": "json_schema", "json_schema": {"name": "x", "schema": too_many}})
        )


def test_logprobs_keep_the_chosen_and_top_k_only(tiny_generator):
    from craft_ray.serving.mllm_generation import SamplingSettings

    generator, _, inputs = tiny_generator
    greedy = SamplingSettings(4, 0.0, None, None, 0, [])
    assert generator.generate(inputs, greedy).logprobs is None  # not asked: nothing kept
    got = generator.generate(inputs, greedy, 5)
    assert len(got.logprobs) == len(got.token_ids) and all(len(s.top) == 5 for s in got.logprobs)
    with torch.no_grad():  # the reference: one forward pass of the prompt
        expected = torch.log_softmax(generator.model(**inputs).logits[0, -1].float(), dim=-1)
    first = got.logprobs[0]
    top = torch.topk(expected, 5)
    assert [i for i, _ in first.top] == top.indices.tolist()
    assert [v for _, v in first.top] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert got.token_ids[0] == top.indices[0] and first.chosen == pytest.approx(
        float(top.values[0]), abs=1e-5
    )
    assert generator.generate(inputs, greedy, 0).logprobs[0].top == []  # logprobs without top_logprobs
    whole = generator.generate(inputs, SamplingSettings(1, 0.0, None, None, 0, []), -1).logprobs[0].top
    assert len(whole) == generator.vocab_size


def test_checklist_answers_are_deduplicated_and_checked():
    items = [
        {"question": "Is the heart  large?", "present": "a large heart", "absent": "a small heart"},
        {"question": "is the heart large ?", "present": "x", "absent": "y"},
        {"question": "Is the apex displaced?", "present": "a displaced apex", "absent": "a normal apex"},
    ]
    assert [i["question"] for i in dedupe_items(items)] == ["Is the heart large?", "Is the apex displaced?"]
    assert check_items({"items": items}) is None
    assert "distinct" in check_items({"items": items[:2]})
    no_question = [dict(items[0], question="The heart is large"), items[2]]
    assert "'?'" in check_items({"items": no_question})


def test_variant_enrichment_file(tmp_path):
    spec = get_dataset("chexpert")
    path = tmp_path / "e.yaml"
    doc = {
        "kind": "craft-prompt-enrichment",
        "dataset": "chexpert",
        "label_sets": [
            {"labels": ["Cardiomegaly"], "variants": ["big heart one", "big heart two"]},
            {"labels": ["Pleural Effusion", "Cardiomegaly"], "variants": ["pair variant"]},
            {"labels": ["Edema"], "variants": ["wet lungs"]},
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    enricher = VariantEnrichment.from_file(spec, path)
    rng = random.Random(0)
    assert enricher.phrases(["Cardiomegaly", "Pleural Effusion"], rng) == ["pair variant"]
    assert enricher.phrases(["Edema", "Cardiomegaly"], rng)[0] in ("big heart one", "big heart two")
    assert enricher.phrases(["Edema", "Cardiomegaly"], rng)[1] == "wet lungs"
    assert enricher.phrases(["Fracture"], rng) == []
    path.write_text(yaml.safe_dump({**doc, "dataset": "isic"}))
    with pytest.raises(ConfigError, match="not 'chexpert'"):
        VariantEnrichment.from_file(spec, path)


def test_prompt_config_enrichment_file_mode(tmp_path):
    from craft_ray.config import validate_config

    base = {"name": "x", "method": "craft", "dataset": {"name": "chexpert", "uri": str(tmp_path)}}
    cfg = validate_config({**base, "prompts": {"enrichment": "file", "enrichment_file": "e.yaml"}})
    assert cfg.resolved().prompts.enrichment_file == str((tmp_path.cwd() / "e.yaml").resolve())
    with pytest.raises(ConfigError, match="enrichment=file needs enrichment_file"):
        validate_config({**base, "prompts": {"enrichment": "file"}})


def test_evaluation_and_study_prompts_use_the_runs_enrichment_file(tmp_path):
    """A run trained on `craft prompts enrich` variants is generated from the same variants when it
    is evaluated or put in a reader study (they once fell back to the bare template)."""
    from craft_ray.config import validate_config
    from craft_ray.evaluation.generation import ImageGenerator, SamplerSettings
    from craft_ray.evaluation.source import ModelSource

    def untrained(cfg):
        return ModelSource(cfg, "pretrained:tiny", "pretrained", None, None, None, None)

    path = tmp_path / "e.yaml"
    doc = {
        "kind": "craft-prompt-enrichment",
        "dataset": "chexpert",
        "label_sets": [{"labels": ["Cardiomegaly"], "variants": ["a markedly enlarged cardiac silhouette"]}],
    }
    path.write_text(yaml.safe_dump(doc))
    base = {
        "name": "x",
        "method": "craft",
        "dataset": {"name": "chexpert", "uri": str(tmp_path), "resolution": 16},
    }
    cfg = validate_config({**base, "prompts": {"enrichment": "file", "enrichment_file": str(path)}})
    generator = ImageGenerator(untrained(cfg), SamplerSettings(1, 1.0, 0.0))
    assert "a markedly enlarged cardiac silhouette" in generator.prompt(["Cardiomegaly"], seed=0)
    template_only = validate_config({**base, "prompts": {"enrichment": "none"}})
    plain = ImageGenerator(untrained(template_only), SamplerSettings(1, 1.0, 0.0))
    assert "enlarged cardiac silhouette" not in plain.prompt(["Cardiomegaly"], seed=0)


def test_evaluator_config_errors_name_the_field():
    open_ = {"auth": "none"}
    with pytest.raises(ConfigError, match="datasets: unknown dataset 'mnist'"):
        load_evaluator_config({**open_, "datasets": {"mnist": {}}})
    with pytest.raises(ConfigError, match=r"limits.max_items: .*greater than or equal to 1"):
        load_evaluator_config({**open_, "limits": {"max_items": 0}})
    with pytest.raises(ConfigError, match="batching.max_batch: unknown key"):
        load_evaluator_config({**open_, "batching": {"max_batch": 3}})
    with pytest.raises(ConfigError, match="either calibration or"):
        load_evaluator_config({**open_, "datasets": {"chexpert": {"calibration": "c.json", "vlm": "small"}}})
    assert load_evaluator_config(open_).datasets["chexpert"].vlm == "tiny"
    # authentication is stated, never implied: each mistake gets one line naming it
    auth_errors = [
        (None, "auth: missing; say `auth: none`"),
        ({"auth": "off"}, "auth: 'off' is not a choice; say `auth: none`"),
        ({"auth": None}, "auth: None is not a choice"),
        ({"auth": {"env": "K"}}, "auth: expected exactly the key api_key_env, got ['env']"),
        (
            {"auth": {"api_key_env": "1-bad"}},
            "auth: api_key_env: '1-bad' is not an environment variable name",
        ),
        ({"api_key_env": "K", "auth": "none"}, "api_key_env: replaced by auth"),
    ]
    for args, message in auth_errors:
        with pytest.raises(ConfigError) as info:
            load_evaluator_config(args)
        assert str(info.value) == "evaluator app args: " + str(info.value).split(": ", 1)[1]
        assert message in str(info.value) and "\n" not in str(info.value), (args, str(info.value))
    keyed = load_evaluator_config({"auth": {"api_key_env": "CRAFT_K"}})
    with pytest.raises(ConfigError, match="the variable CRAFT_K is not set"):
        api_key(keyed.auth, {})
    assert (
        api_key(keyed.auth, {"CRAFT_K": " s3cret "}) == "s3cret" and api_key("none", {"CRAFT_K": "x"}) is None
    )


@pytest.mark.parametrize("name", ["evaluator.yaml", "mllm-cpu.yaml", "mllm.yaml"])
def test_serve_yamls_match_ray_serves_schema(name):
    config = read_serve_config(SERVE_DIR / name)
    schema = validate_serve_config(config)
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000
    if name == "evaluator.yaml":
        load_evaluator_config(schema.applications[0].args)


def test_gpu_mllm_yaml_builds_its_vllm_app_without_a_gpu(ray_local):
    """The app object (deployments, placement bundles) is built from serve/mllm.yaml; starting vLLM
    needs a GPU node and is not tried here."""
    pytest.importorskip("ray.serve.llm", reason="needs the llm extra: make install-llm")
    from ray._common.utils import import_attr
    from ray.serve.deployment import Application

    app_config = read_serve_config(SERVE_DIR / "mllm.yaml")["applications"][0]
    app = import_attr(app_config["import_path"])(app_config["args"])
    assert isinstance(app, Application)
    llm = app_config["args"]["llm_configs"][0]
    from ray.serve.llm import LLMConfig

    config = LLMConfig.model_validate(llm)
    engine = config.get_engine_config()  # rejects engine_kwargs that vLLM does not know
    assert engine.engine_kwargs["max_model_len"] == 8192 and engine.accelerator_type == "L40S"
    assert engine.placement_bundles[0]["GPU"] == 1
    # test_cluster_fit's model of the replica's bundles (it checks them against the gpu_serve nodes) is Ray's
    from test_cluster_fit import llm_bundles

    assert llm_bundles(llm) == engine.placement_bundles


def test_training_prompts_use_the_enrichment_file(phantom_root, tmp_path):
    from craft_ray.config import validate_config
    from craft_ray.models import build_diffusion
    from craft_ray.train.context import TrainContext
    from craft_ray.train.session import LocalSession

    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "craft-prompt-enrichment",
                "dataset": "chexpert",
                "label_sets": [
                    {"labels": ["Cardiomegaly"], "variants": ["a heart filling most of the chest"]}
                ],
            }
        )
    )
    cfg = validate_config(
        {
            "name": "enrich",
            "method": "lora_sft",
            "dataset": {
                "name": "chexpert",
                "uri": str(phantom_root / "chest"),
                "resolution": 32,
                "labels": ["Cardiomegaly", "Pneumothorax"],
            },
            "prompts": {"enrichment": "file", "enrichment_file": str(path)},
        }
    )
    components = build_diffusion("tiny")
    ctx = TrainContext(cfg, LocalSession(tmp_path / "run"), components, components.unet, [])
    assert ctx.prompts([["Cardiomegaly"], ["Pneumothorax"]], 0, 0) == [
        "a frontal chest radiograph showing cardiomegaly, a heart filling most of the chest",
        "a frontal chest radiograph showing a pneumothorax",
    ]


class _TopLogprobsEndpoint:
    """A real HTTP server with the OpenAI chat route that serves at most 20 top logprobs (like vLLM's
    default) from a fixed next-token distribution, and refuses top_logprobs=-1 with a 400."""

    def __init__(self, top: dict[str, float]):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        asked = self.asked = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                asked.append(body["top_logprobs"])
                if body["top_logprobs"] == -1:
                    code, payload = 400, {"error": {"message": "top_logprobs -1 exceeds max_logprobs 20"}}
                else:
                    entries = [{"token": t, "logprob": v} for t, v in top.items()]
                    payload = {
                        "choices": [{"logprobs": {"content": [{"token": "x", "top_logprobs": entries}]}}]
                    }
                    code = 200
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_remote_scorer_keeps_the_top_20_answer_when_the_whole_vocabulary_is_refused():
    import math

    from craft_ray.errors import ModelError
    from craft_ray.models.mllm import RemoteMLLMScorer

    only_yes = _TopLogprobsEndpoint({" Yes": math.log(0.6), "maybe": math.log(0.3)})
    x = torch.rand(1, 1, 8, 8)
    try:
        assert float(RemoteMLLMScorer(only_yes.url, model="m").p_yes(x, ["Is it?"])[0]) == 1.0
        assert only_yes.asked == [20, -1]  # asked for more, was refused, kept the top-20 answer
    finally:
        only_yes.server.shutdown()
    both = _TopLogprobsEndpoint({"yes": math.log(0.6), "No": math.log(0.2)})
    try:
        assert float(RemoteMLLMScorer(both.url, model="m").p_yes(x, ["Is it?"])[0]) == pytest.approx(0.75)
        assert both.asked == [20]  # no second request when both are in the top 20
    finally:
        both.server.shutdown()
    neither = _TopLogprobsEndpoint({"maybe": math.log(0.5)})
    try:
        with pytest.raises(ModelError, match="neither 'yes' nor 'no' among the top 20"):
            RemoteMLLMScorer(neither.url, model="m").p_yes(x, ["Is it?"])
    finally:
        neither.server.shutdown()
