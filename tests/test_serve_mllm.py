"""The MLLM behind the OpenAI API on CPU (serve/mllm-cpu.yaml: Ray Serve LLM + the transformers
engine), over HTTP on 127.0.0.1: routes, logprobs parity with the local tiny model, JSON output,
and the checklist / prompt builders against it."""

from __future__ import annotations

import json
import math

import pytest
import requests
import torch
import yaml
from serving_helpers import TESTS_DIR, b64, free_port, png_bytes
from typer.testing import CliRunner

pytest.importorskip("ray.serve.llm", reason="needs the llm extra: make install-llm")

from craft_ray.cli import app as cli_app  # noqa: E402
from craft_ray.errors import CraftError  # noqa: E402
from craft_ray.knowledge.checklists import load_knowledge  # noqa: E402
from craft_ray.knowledge.labels import get_dataset  # noqa: E402
from craft_ray.knowledge.prompts import VariantEnrichment  # noqa: E402
from craft_ray.models.mllm import RemoteMLLMScorer, tiny_llava  # noqa: E402
from craft_ray.serving.client import MLLMClient  # noqa: E402
from craft_ray.serving.deploy import deploy_serve_config, read_serve_config  # noqa: E402

pytestmark = pytest.mark.slow
SCRIPTED = "scripted-json"


@pytest.fixture(scope="module")
def mllm_url(ray_local):
    """serve/mllm-cpu.yaml as shipped, plus a second model on the same app whose engine is steered
    to valid JSON (tests/serving_engines.py)."""
    from ray import serve

    config = read_serve_config(TESTS_DIR.parent / "serve/mllm-cpu.yaml")
    llm = config["applications"][0]["args"]["llm_configs"]
    scripted = json.loads(json.dumps(llm[0]))
    scripted["model_loading_config"]["model_id"] = SCRIPTED
    scripted["runtime_env"]["env_vars"] = {
        "RAYLLM_VLLM_ENGINE_CLS": "serving_engines.ScriptedJSONEngine",
        "PYTHONPATH": str(TESTS_DIR),
    }
    llm.append(scripted)
    serve.shutdown()  # a Serve instance left by another module would keep its own port
    url = deploy_serve_config(config, free_port())
    yield url
    serve.shutdown()


def _chat(url, **body):
    body.setdefault("model", "tiny-llava")
    return requests.post(url + "/v1/chat/completions", json=body, timeout=120)


def test_openai_routes(mllm_url):
    models = requests.get(mllm_url + "/v1/models", timeout=30).json()
    assert {m["id"] for m in models["data"]} == {"tiny-llava", SCRIPTED}
    image = "data:image/png;base64," + b64(png_bytes(mode="RGB"))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "Is the heart enlarged?"},
            ],
        }
    ]
    first = _chat(
        mllm_url, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=5
    ).json()
    again = _chat(mllm_url, messages=messages, max_tokens=4, temperature=0).json()
    choice = first["choices"][0]
    assert (
        choice["message"]["content"] == again["choices"][0]["message"]["content"]
    )  # greedy is deterministic
    assert first["usage"]["completion_tokens"] <= 4
    assert choice["finish_reason"] == ("length" if first["usage"]["completion_tokens"] == 4 else "stop")
    steps = choice["logprobs"]["content"]
    assert len(steps) == first["usage"]["completion_tokens"]
    top = [e["logprob"] for e in steps[0]["top_logprobs"]]
    assert len(top) == 5 and top == sorted(top, reverse=True)
    assert steps[0]["token"] == steps[0]["top_logprobs"][0]["token"]  # greedy takes the most likely
    assert all(math.exp(v) <= 1 for v in top) and sum(math.exp(v) for v in top) < 1

    stream = _chat(mllm_url, messages=messages, max_tokens=4, temperature=0, stream=True)
    events = [line.removeprefix("data: ") for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert streamed == choice["message"]["content"]

    assert _chat(mllm_url, model="no-such-model", messages=messages).status_code == 404
    bad_image = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}],
        }
    ]
    bad = _chat(mllm_url, messages=bad_image)
    assert bad.status_code == 400 and "not an image" in bad.text
    too_many = _chat(
        mllm_url, model=SCRIPTED, messages=messages, logprobs=True, top_logprobs=-1, max_tokens=1
    )
    assert too_many.status_code == 200  # max_logprobs: -1 in the YAML serves the whole vocabulary
    assert len(too_many.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == len(
        tiny_llava().processor.tokenizer
    )


def test_remote_scorer_matches_the_local_tiny_model(mllm_url):
    """RemoteMLLMScorer with its defaults (top 20, then the whole vocabulary when yes/no is
    missing) gives the local tiny model's P(yes) within 1e-4, for grey and colour images."""
    local = tiny_llava()
    torch.manual_seed(3)
    questions = ["Is the heart enlarged?", "Is there a pleural effusion?", "Are both lungs visible?"]
    remote = RemoteMLLMScorer(mllm_url + "/v1")
    for channels in (1, 3):
        x = (torch.rand(3, channels, 32, 40) * 255).round() / 255  # PNG-exact pixels
        got = remote.p_yes(x, questions)
        with torch.no_grad():
            expected = local.p_yes(x, questions)
        assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    assert remote.model == "tiny-llava"
    assert MLLMClient(mllm_url).yes_probability(x[0], questions[0]) == pytest.approx(
        float(expected[0]), abs=1e-4
    )


def test_calibrate_through_the_endpoint_matches_the_local_mllm(mllm_url, phantom_root, tmp_path):
    runner = CliRunner()
    common = ["cas", "calibrate", "--data", str(phantom_root / "chest"), "--limit", "4", "--batch-size", "4"]
    local = runner.invoke(cli_app, [*common, "--mllm", "tiny", "--out", str(tmp_path / "local.json")])
    remote = runner.invoke(
        cli_app, [*common, "--mllm", mllm_url + "/v1", "--out", str(tmp_path / "remote.json")]
    )
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "remote.json"))
    assert a["thresholds"] and a["thresholds"].keys() == b["thresholds"].keys()
    for label, tau in a["thresholds"].items():
        assert b["thresholds"][label] == pytest.approx(tau, abs=1e-4)
    assert b["evaluator"]["mllm"] == mllm_url + "/v1"


def test_cas_audit_through_the_endpoint_matches_the_local_mllm(mllm_url, phantom_root, tmp_path):
    """`craft cas audit --mllm URL` (serve/mllm-cpu.yaml) asks each checklist question over HTTP
    and gets the local tiny model's P(yes), item by item, on phantom data with ground truth."""
    runner = CliRunner()
    common = ["cas", "audit", "--data", str(phantom_root / "chest"), "--split", "val", "--limit", "2"]
    local = runner.invoke(cli_app, [*common, "--mllm", "tiny", "--out", str(tmp_path / "local.json")])
    remote = runner.invoke(
        cli_app, [*common, "--mllm", mllm_url + "/v1", "--out", str(tmp_path / "remote.json")]
    )
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "remote.json"))
    assert b["path"] == "mllm" and b["model"] == mllm_url + "/v1" and b["ground_truth"]
    for mine, theirs in zip(a["images"], b["images"], strict=True):
        assert mine["p"].keys() == theirs["p"].keys()
        for item, p in mine["p"].items():
            assert theirs["p"][item] == pytest.approx(p, abs=1e-4), item


def test_checklists_fall_back_when_the_model_emits_garbage(mllm_url, tmp_path):
    out = tmp_path / "garbage.yaml"
    labels = ["Cardiomegaly", "Pleural Effusion"]
    result = CliRunner().invoke(
        cli_app,
        [
            "checklists",
            "build",
            "--dataset",
            "chexpert",
            "--endpoint",
            mllm_url + "/v1",
            "--out",
            str(out),
            "--labels",
            ",".join(labels),
            "--model",
            "tiny-llava",
            "--attempts",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "using the static checklist" in result.output
    doc = yaml.safe_load(out.read_text())
    assert doc["provenance"]["sources"] == dict.fromkeys(labels, "fallback")
    assert doc["provenance"]["model"] == "tiny-llava" and doc["provenance"]["prompt_hash"].startswith(
        "sha256:"
    )
    overlay, base = load_knowledge([out]), load_knowledge()
    for label in labels:
        got = overlay.for_label("chexpert", label)
        assert [i.question for i in got] == [i.question for i in base.for_label("chexpert", label)]
        assert all(i.source == str(out) for i in got)
    again = CliRunner().invoke(
        cli_app, ["checklists", "build", "--dataset", "chexpert", "--endpoint", mllm_url, "--out", str(out)]
    )
    assert isinstance(again.exception, CraftError) and "--overwrite" in str(again.exception)


def test_checklists_parse_a_valid_answer(mllm_url, tmp_path):
    from serving_engines import CHECKLIST_ANSWER

    out = tmp_path / "valid.yaml"
    result = CliRunner().invoke(
        cli_app,
        [
            "checklists",
            "build",
            "--dataset",
            "chexpert",
            "--endpoint",
            mllm_url + "/v1",
            "--out",
            str(out),
            "--labels",
            "Cardiomegaly",
            "--model",
            SCRIPTED,
        ],
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["provenance"]["sources"] == {"Cardiomegaly": "mllm"}
    items = load_knowledge([out]).for_label("chexpert", "Cardiomegaly")
    expected = [CHECKLIST_ANSWER["items"][0], CHECKLIST_ANSWER["items"][2]]  # the near-duplicate is dropped
    assert [(i.question, i.present, i.absent) for i in items] == [
        (e["question"], e["present"], e["absent"]) for e in expected
    ]
    assert [i.id for i in items] == ["chexpert:Cardiomegaly:0", "chexpert:Cardiomegaly:1"]
    # other labels keep the static base
    assert load_knowledge([out]).for_label("chexpert", "Edema") == load_knowledge().for_label(
        "chexpert", "Edema"
    )


def test_prompt_enrichment_variants_fallback_and_cache(mllm_url, tmp_path):
    spec = get_dataset("chexpert")
    out = tmp_path / "enrich.yaml"
    args = [
        "prompts",
        "enrich",
        "--dataset",
        "chexpert",
        "--endpoint",
        mllm_url + "/v1",
        "--out",
        str(out),
        "--variants",
        "2",
        "--attempts",
        "1",
    ]
    scripted = CliRunner().invoke(
        cli_app,
        [
            *args,
            "--model",
            SCRIPTED,
            "--label-set",
            "Cardiomegaly",
            "--label-set",
            "Cardiomegaly,Pleural Effusion",
        ],
    )
    assert scripted.exit_code == 0, scripted.output
    doc = yaml.safe_load(out.read_text())
    assert [e["labels"] for e in doc["label_sets"]] == [
        ["Cardiomegaly"],
        ["Cardiomegaly", "Pleural Effusion"],
    ]
    assert all(e["source"] == "mllm" and len(e["variants"]) == 2 for e in doc["label_sets"])
    first_date = doc["provenance"]["date"]
    # a second run from the same model and prompt reuses the cache and adds the new label set
    cached = CliRunner().invoke(
        cli_app, [*args, "--model", SCRIPTED, "--label-set", "Cardiomegaly", "--label-set", "Edema"]
    )
    assert cached.exit_code == 0, cached.output
    assert "Cardiomegaly: 2 variant(s) (cache)" in cached.output
    doc = yaml.safe_load(out.read_text())
    assert {tuple(e["labels"]) for e in doc["label_sets"]} == {
        ("Cardiomegaly",),
        ("Edema",),
        ("Cardiomegaly", "Pleural Effusion"),
    }
    assert doc["provenance"]["date"] >= first_date
    enricher = VariantEnrichment.from_file(spec, out)
    import random

    rng = random.Random(0)
    assert enricher.phrases(["Pleural Effusion", "Cardiomegaly"], rng)[0].startswith("scripted variant")
    # another model's answers do not mix with this cache
    other = CliRunner().invoke(cli_app, [*args, "--model", "tiny-llava"])
    assert isinstance(other.exception, CraftError) and "--overwrite" in str(other.exception)
    # content the enricher dislikes (variants that repeat each other, in valid JSON) falls back
    repeated = tmp_path / "repeated.yaml"
    fallback = CliRunner().invoke(
        cli_app,
        [
            "prompts",
            "enrich",
            "--dataset",
            "chexpert",
            "--endpoint",
            mllm_url,
            "--out",
            str(repeated),
            "--variants",
            "2",
            "--attempts",
            "2",
            "--model",
            SCRIPTED,
            "--label-set",
            "Pneumothorax",
        ],
    )
    assert fallback.exit_code == 0, fallback.output
    assert "no valid answer in 2 attempt(s) (last: variants repeat each other); using static variants" in (
        fallback.output
    )
    entry = yaml.safe_load(repeated.read_text())["label_sets"][0]
    static = [i.present for i in load_knowledge().for_label("chexpert", "Pneumothorax")]
    assert entry["source"] == "fallback" and entry["variants"] == static[:2]


# ------------------------------------------------------------------------------ constrained JSON

JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "finding": {"type": "string", "minLength": 2, "maxLength": 16},
        "present": {"type": "boolean"},
        "grade": {"enum": ["mild", "moderate", "severe"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 20},
        "sides": {"type": "array", "items": {"enum": ["left", "right"]}, "minItems": 1, "maxItems": 2},
    },
    "required": ["finding", "present", "grade", "count", "sides"],
    "additionalProperties": False,
}


def test_json_schema_answers_from_the_openai_client_at_temperature_1_parse_and_validate(mllm_url):
    """The official `openai` client, as any user of vLLM would call it: every 200 parses and
    matches the schema; an answer the tiny random model could not finish is a 422, never a 200."""
    import jsonschema
    import openai

    client = openai.OpenAI(base_url=mllm_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    fmt = {"type": "json_schema", "json_schema": {"name": "finding", "schema": JSON_SCHEMA, "strict": True}}
    messages = [{"role": "user", "content": "Describe the finding as JSON."}]
    answers = []
    for seed in range(10):
        resp = client.chat.completions.create(
            model="tiny-llava",
            messages=messages,
            temperature=1.0,
            max_tokens=150,
            seed=seed,
            response_format=fmt,
        )
        answers.append(json.loads(resp.choices[0].message.content))
        jsonschema.validate(answers[-1], JSON_SCHEMA)
        assert resp.choices[0].finish_reason == "stop"
    assert len({a["grade"] for a in answers}) > 1 and len({a["finding"] for a in answers}) > 1  # sampled
    two = client.chat.completions.create(
        model="tiny-llava", messages=messages, temperature=1.0, max_tokens=150, n=2, response_format=fmt
    )
    for choice in two.choices:
        jsonschema.validate(json.loads(choice.message.content), JSON_SCHEMA)
    # any JSON object: keys are unbounded strings a random model rarely closes in time
    ok = incomplete = 0
    for seed in range(6):
        try:
            resp = client.chat.completions.create(
                model="tiny-llava",
                messages=messages,
                temperature=1.0,
                max_tokens=40,
                seed=seed,
                response_format={"type": "json_object"},
            )
        except openai.UnprocessableEntityError as exc:
            assert "no complete JSON answer within max_tokens = 40" in str(exc)
            incomplete += 1
            continue
        assert isinstance(json.loads(resp.choices[0].message.content), dict)
        ok += 1
    assert ok and ok + incomplete == 6
    # a schema the grammar would not enforce is refused up front, naming the keyword
    loose = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError, match="#/properties/tags: keyword 'uniqueItems'"):
        client.chat.completions.create(
            model="tiny-llava",
            messages=messages,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": loose}},
        )
    with pytest.raises(openai.BadRequestError, match="stop cannot be combined"):
        client.chat.completions.create(model="tiny-llava", messages=messages, response_format=fmt, stop=["}"])


def test_the_engine_bounds_tokens_and_choices(mllm_url):
    messages = [{"role": "user", "content": "Hello"}]
    over = _chat(mllm_url, messages=messages, max_tokens=1025)
    assert over.status_code == 400 and "over this server's limit of 1024" in over.text
    many = _chat(mllm_url, messages=messages, n=9, max_tokens=1)
    assert many.status_code == 400 and "n = 9 is over this server's limit of 8" in many.text
    default = _chat(mllm_url, messages=messages, temperature=1.0, seed=3).json()
    # no max_tokens: the limit, or what the tiny model's 256-token context leaves
    assert default["usage"]["prompt_tokens"] + default["usage"]["completion_tokens"] <= 256
