"""The CAS evaluator service (serve/evaluator.yaml) over HTTP on 127.0.0.1: scores equal the
local evaluator's, thresholds from a calibration, API key, a bad-input corpus, bounded load, and a
hostile corpus: a 50 MB body, one bad item among 16 concurrent callers, the MLLM upstream down, a
key variable that is not set."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from serving_helpers import SERVE_DIR, TinyMLLMEndpoint, b64, free_port, png_bytes
from typer.testing import CliRunner

from craft_ray.cas import Calibration, EvaluatorSpec, calibrate
from craft_ray.cli import app as cli_app
from craft_ray.knowledge.labels import get_dataset
from craft_ray.serving.client import CASClient
from craft_ray.serving.deploy import deploy_serve_config, read_serve_config

pytestmark = pytest.mark.slow
README = (SERVE_DIR.parent / "README.md").read_text()
KEY = "test-key-7"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def calibration_file(phantom_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "chexpert.json"
    spec = EvaluatorSpec("chexpert", list(get_dataset("chexpert").phantom_labels))
    calibrate(spec, str(phantom_root / "chest"), limit=24).save(path)
    return path


MAX_BODY = 1_000_000
ONLY_CHECKLIST = {"pathology": 1.0, "checklist": 1.0, "anatomy": 0.0, "realism": 0.0}  # fewer MLLM questions


def overexposed(image: torch.Tensor) -> bool:
    return float(image.mean()) > 0.95


@pytest.fixture(scope="module")
def refusing_mllm():
    """The tiny LLaVA behind the OpenAI routes, refusing over-exposed images (HTTP 400)."""
    endpoint = TinyMLLMEndpoint(refuse=overexposed)
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def evaluator_url(ray_local, calibration_file, refusing_mllm):
    from ray import serve

    config = read_serve_config(SERVE_DIR / "evaluator.yaml")
    app = config["applications"][0]
    app["args"]["datasets"] = {
        "chexpert": {"calibration": str(calibration_file)},
        "isic": {},
        # the checklist questions go to an MLLM that refuses some images, or to one that is down
        "fundus": {"mllm": refusing_mllm.url, "mllm_model": "tiny-llava", "weights": ONLY_CHECKLIST},
        "histopath": {
            "mllm": f"http://127.0.0.1:{free_port()}/v1",
            "mllm_model": "tiny-llava",
            "weights": ONLY_CHECKLIST,
        },
    }
    app["args"]["limits"] = {
        "max_body_bytes": MAX_BODY,
        "max_items": 4,
        "max_image_bytes": 100_000,
        "max_image_pixels": 128 * 128,
        "max_request_pixels": 2 * 128 * 128,
    }
    # room for 16 callers in one batch, and time for them to meet there
    app["args"]["batching"] = {"max_batch_size": 32, "batch_wait_timeout_s": 0.05}
    app["args"]["auth"] = {"api_key_env": "CRAFT_EVALUATOR_API_KEY"}
    # the app's runtime_env reaches the task that builds the app and the replicas alike
    app["runtime_env"] = {"env_vars": {"CRAFT_EVALUATOR_API_KEY": KEY}}
    serve.shutdown()  # a Serve instance left by another module would keep its own port
    url = deploy_serve_config(config, free_port())
    yield url
    serve.shutdown()


def _post(url, body, headers=AUTH):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        url + "/v1/cas", data=data, headers={**headers, "Content-Type": "application/json"}, timeout=120
    )


def _tensor(png: bytes, mode: str) -> torch.Tensor:
    arr = np.asarray(Image.open(io.BytesIO(png)).convert(mode))
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def test_scores_equal_the_local_evaluator_with_calibrated_thresholds(evaluator_url, calibration_file):
    grey, colour = png_bytes((40, 32), "L", seed=1), png_bytes((32, 32), "RGB", seed=2)
    items = [(grey, ["Cardiomegaly"]), (colour, ["Pleural Effusion", "Cardiomegaly"]), (grey, ["Edema"])]
    resp = _post(
        evaluator_url, {"dataset": "chexpert", "items": [{"image": b64(p), "labels": ls} for p, ls in items]}
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    calibration = Calibration.load(calibration_file)
    assert answer["evaluator"] == calibration.evaluator.to_dict()
    local = calibration.evaluator_from_spec()
    for (png, labels), got in zip(items, answer["results"], strict=True):
        grey = _tensor(png, "L")  # chexpert is grey; 40 x 32 or 32 x 32, and tiny's input side is 32
        left = (grey.shape[-1] - 32) // 2  # the centre square, by hand: columns 4-35 of the 40
        square = grey[..., left : left + 32]
        with torch.no_grad():
            row = local.score(square[None], [labels], evaluate=True).rows()[0]
        for key in ("cas", "pathology", "checklist", "anatomy", "realism"):
            assert got[key] == pytest.approx(row[key], abs=1e-5)
        known = [calibration.thresholds[label] for label in labels if label in calibration.thresholds]
        if known:
            assert got["threshold"] == pytest.approx(min(known))
            assert got["below_threshold"] == (row["cas"] < min(known))
        else:  # a label the phantoms do not draw: no threshold
            assert got["threshold"] is None and got["below_threshold"] is None
    assert answer["results"][2]["threshold"] is None
    uncalibrated = _post(
        evaluator_url, {"dataset": "isic", "items": [{"image": b64(colour), "labels": ["MEL"]}]}
    )
    assert uncalibrated.status_code == 200 and uncalibrated.json()["results"][0]["threshold"] is None


def test_a_non_square_16_bit_image_scores_the_same_offline_served_and_in_evaluation(
    evaluator_url, calibration_file, tmp_path, craft_in_process
):
    """One image path: `craft cas score --images`, the service (`craft query cas` and the README's
    curl recipe) and the evaluation's score stage give one 90 x 72 16-bit PNG the same CAS."""
    import subprocess

    import pyarrow as pa
    import pyarrow.parquet as pq
    from own_export import write_png16

    from craft_ray.evaluation.stages import ScoreStage

    folder = tmp_path / "mine"
    folder.mkdir()
    image = write_png16(folder / "a.png", (90, 72), seed=3)
    (folder / "labels.csv").write_text("file,labels\na.png,Cardiomegaly\n")
    out = tmp_path / "s.parquet"
    offline = craft_in_process(
        "cas", "score", "--images", str(folder), "--thresholds", str(calibration_file), "--out", str(out)
    )
    assert offline.returncode == 0, offline.stderr
    offline_cas = pq.read_table(out).column("cas").to_pylist()[0]
    query = CliRunner().invoke(
        cli_app,
        ["query", "cas", "--url", evaluator_url, "--dataset", "chexpert", "--image", str(image)]
        + ["--labels", "Cardiomegaly", "--api-key", KEY, "--json"],
    )
    assert query.exit_code == 0, query.output
    served = json.loads(query.stdout)["results"][0]
    assert served["preprocessing"]["steps"][1:] == ["centre-cropped 90x72 to 72x72", "resized 72x72 to 32x32"]
    assert served["preprocessing"]["mode"] == "I;16"
    # the README's recipe, as written but for the URL and the key this fixture requires
    section = README.split("### The CAS evaluator service\n", 1)[1]
    recipe = [line for line in section.split("```")[1].splitlines() if line.startswith(("{ printf", "curl"))]
    port = evaluator_url.rsplit(":", 1)[1]
    script = "\n".join(recipe).replace("a.png", str(image)).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = script.replace("--data @body.json", f"-H 'Authorization: Bearer {KEY}' --data @body.json")
    curl = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert curl.returncode == 0, curl.stderr
    by_curl = json.loads(curl.stdout)["results"][0]
    stage = ScoreStage({"calibration": json.loads(calibration_file.read_text()), "embedding": "pixels"})
    evaluated = stage(pa.table({"image": [image.read_bytes()], "labels": [["Cardiomegaly"]]}))
    for value in (served["cas"], by_curl["cas"], evaluated.column("cas").to_pylist()[0]):
        assert value == pytest.approx(offline_cas, abs=1e-6)


def test_health_labels_and_api_key(evaluator_url):
    assert requests.get(evaluator_url + "/healthz", timeout=30).json()["status"] == "ok"
    no_key = requests.get(evaluator_url + "/v1/labels", timeout=30)
    assert no_key.status_code == 401 and "API key" in no_key.json()["error"]["message"]
    wrong = requests.get(evaluator_url + "/v1/labels", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    labels = requests.get(evaluator_url + "/v1/labels", headers=AUTH, timeout=30).json()["datasets"]
    assert set(labels) == {"chexpert", "isic", "fundus", "histopath"}
    assert "Pleural Effusion" in labels["chexpert"]["labels"] and labels["chexpert"]["calibrated"] is True
    assert labels["isic"]["labels"][0] == "MEL" and labels["isic"]["calibrated"] is False
    item = {"image": b64(png_bytes()), "labels": ["Cardiomegaly"]}
    assert _post(evaluator_url, {"dataset": "chexpert", "items": [item]}, headers={}).status_code == 401


def _bmp_too_big() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (200, 200)).save(buf, format="PNG")  # 40 000 pixels > 128 x 128
    return buf.getvalue()


def _full_size(seed: int) -> str:
    return b64(png_bytes((128, 128), seed=seed))  # 16 384 pixels: three of them pass 2 x 128 x 128


BAD_INPUTS = [
    ("body not JSON", b"{not json", 400, "not JSON"),
    ("body a list", b"[1, 2]", 400, "JSON object"),
    ("missing dataset", {"items": []}, 422, "dataset"),
    ("missing items", {"dataset": "chexpert"}, 422, "items"),
    ("items not a list", {"dataset": "chexpert", "items": "x"}, 422, "items must be a list"),
    ("no items", {"dataset": "chexpert", "items": []}, 422, "items is empty"),
    ("unknown dataset", {"dataset": "mnist", "items": [{}]}, 422, "not served"),
    ("item not an object", {"dataset": "chexpert", "items": [3]}, 422, "items[0]"),
    ("missing image", {"dataset": "chexpert", "items": [{"labels": ["Edema"]}]}, 422, "'image'"),
    (
        "labels not a list",
        {"dataset": "chexpert", "items": [{"image": "AAAA", "labels": "Edema"}]},
        422,
        "must be a list",
    ),
    (
        "empty labels",
        {"dataset": "chexpert", "items": [{"image": "AAAA", "labels": []}]},
        422,
        "labels is empty",
    ),
    (
        "unknown label",
        {"dataset": "chexpert", "items": [{"image": "AAAA", "labels": ["Pnemonia"]}]},
        422,
        "Pnemonia",
    ),
    (
        "invalid base64",
        {"dataset": "chexpert", "items": [{"image": "%%%not-base64", "labels": ["Edema"]}]},
        422,
        "base64",
    ),
    (
        "not an image",
        {"dataset": "chexpert", "items": [{"image": b64(b"hello world"), "labels": ["Edema"]}]},
        422,
        "not an image",
    ),
    (
        "too many pixels",
        {"dataset": "chexpert", "items": [{"image": b64(_bmp_too_big()), "labels": ["Edema"]}]},
        413,
        "pixels",
    ),
    (
        "too many bytes",
        {"dataset": "chexpert", "items": [{"image": b64(bytes(150_000)), "labels": ["Edema"]}]},
        413,
        "bytes",
    ),
    (
        "too many items",
        {"dataset": "chexpert", "items": [{"image": "AAAA", "labels": ["Edema"]}] * 5},
        413,
        "limit of 4",
    ),
    ("unknown field", {"dataset": "chexpert", "items": [], "extra": 1}, 422, "extra"),
    (
        "too many pixels in one request",
        {"dataset": "chexpert", "items": [{"image": _full_size(i), "labels": ["Edema"]} for i in range(3)]},
        413,
        "items[2].image: the images up to here hold 49152 pixels, over the limit of 32768",
    ),
    ("body over the limit", b'{"dataset": "chexpert", "items": ["' + b"A" * MAX_BODY + b'"]}', 413, "limit"),
]


def test_bad_input_gets_a_4xx_json_error_and_the_service_stays_up(evaluator_url):
    for name, body, status, text in BAD_INPUTS:
        resp = _post(evaluator_url, body)
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert text in error["message"], (name, error)
    assert requests.get(evaluator_url + "/healthz", timeout=30).status_code == 200
    ok = _post(
        evaluator_url, {"dataset": "chexpert", "items": [{"image": b64(png_bytes()), "labels": ["Edema"]}]}
    )
    assert ok.status_code == 200


def test_bounded_load_has_no_errors(evaluator_url):
    client = CASClient(evaluator_url, KEY)
    images = [png_bytes(seed=i) for i in range(8)]

    def one(i: int) -> float:
        return client.score("chexpert", [(images[i % 8], ["Pleural Effusion"])])["results"][0]["cas"]

    with ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(one, range(300), timeout=600))
    assert len(scores) == 300 and all(0.0 <= s <= 1.0 for s in scores)
    # batching changes no score beyond float noise (batch sizes move a score by ~3e-8)
    assert max(abs(s - scores[i % 8]) for i, s in enumerate(scores)) < 1e-6
    assert len({round(s, 3) for s in scores[:8]}) > 1


def test_query_cas_command(evaluator_url, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(seed=5))
    args = [
        "query",
        "cas",
        "--url",
        evaluator_url,
        "--dataset",
        "chexpert",
        "--image",
        str(image),
        "--labels",
        "Pleural Effusion",
    ]
    result = CliRunner().invoke(cli_app, [*args, "--api-key", KEY, "--json"])
    assert result.exit_code == 0, result.output
    direct = CASClient(evaluator_url, KEY).score("chexpert", [(image, ["Pleural Effusion"])])
    assert json.loads(result.stdout)["results"] == direct["results"]
    table = CliRunner().invoke(cli_app, [*args, "--api-key", KEY])
    assert "a.png" in table.stdout and f"{direct['results'][0]['cas']:.4f}" in table.stdout
    refused = CliRunner().invoke(cli_app, [*args, "--api-key", "wrong"])
    assert "HTTP 401" in str(refused.exception)


# ------------------------------------------------------------------------------ the hostile corpus


def _replica_process():
    """The evaluator replica: a Ray worker under this test process (not another user's cluster)."""
    import psutil

    found = [
        p
        for p in psutil.Process().children(recursive=True)
        if any("ServeReplica:cas-evaluator" in part for part in p.cmdline())
    ]
    assert len(found) == 1, found
    return found[0]


def _raw_post(url: str, headers: dict[str, str], parts: list[bytes]):
    """POST with the given headers, sending `parts` until the server answers or closes; returns
    (status, JSON body, bytes sent)."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.putrequest("POST", "/v1/cas")
    for name, value in {**AUTH, "Content-Type": "application/json", **headers}.items():
        conn.putheader(name, value)
    conn.endheaders()
    sent = 0
    try:
        for part in parts:
            conn.send(part)
            sent += len(part)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the rest was on its way
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body, sent


def test_a_50_mb_body_is_refused_before_it_is_read(evaluator_url):
    item = {"image": b64(png_bytes()), "labels": ["Edema"]}
    assert _post(evaluator_url, {"dataset": "chexpert", "items": [item]}).status_code == 200  # warm
    replica = _replica_process()
    before = replica.memory_info().rss
    # Content-Length says 50 MB: answered after the headers and 64 kB, the rest never sent
    status, body, _ = _raw_post(evaluator_url, {"Content-Length": str(50 * 2**20)}, [b"A" * 65536])
    assert (
        status == 413
        and body["error"]["message"] == f"body is {50 * 2**20} bytes, over the limit of {MAX_BODY}"
    )
    # the whole 50 MB from a plain client: the same answer, the rest goes nowhere near the replica
    whole = requests.post(evaluator_url + "/v1/cas", data=bytes(50 * 2**20), headers=AUTH, timeout=120)
    assert whole.status_code == 413 and whole.json()["error"]["message"].startswith("body is 52428800 bytes")
    # no length (a chunked upload): 411, before a chunk is read (Ray's proxy would hand them over in bulk)
    chunk = b"A" * 2**20
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    status, body, _ = _raw_post(
        evaluator_url, {"Transfer-Encoding": "chunked"}, [framed] * 50 + [b"0\r\n\r\n"]
    )
    assert status == 411 and "Content-Length" in body["error"]["message"]
    grown = replica.memory_info().rss - before
    assert grown < 4 * 2**20, f"the replica grew by {grown / 2**20:.1f} MiB"  # 100 MB were sent to it
    assert _post(evaluator_url, {"dataset": "chexpert", "items": [item]}).status_code == 200


def _fundus(results_of):
    return {"dataset": "fundus", "items": [{"image": b64(p), "labels": ["Mild NPDR"]} for p in results_of]}


def test_one_bad_item_fails_alone_among_16_concurrent_callers(evaluator_url, refusing_mllm):
    good = [png_bytes(mode="RGB", seed=100 + i) for i in range(16)]
    white = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(white, format="PNG")
    alone = []
    for png in good:  # each caller's image scored on its own: the reference
        resp = _post(evaluator_url, _fundus([png]))
        assert resp.status_code == 200, resp.text
        alone.append(resp.json()["results"][0])
    assert len({r["checklist"] for r in alone}) > 1  # the MLLM's answers differ per image
    refused_before = refusing_mllm.refused
    # caller 0 sends a good image and the bad one; callers 1..15 one good image each, all at once
    bodies = [_fundus([good[0], white.getvalue()])] + [_fundus([png]) for png in good[1:]]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda body: _post(evaluator_url, body), bodies))
    assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers if a.status_code != 200]
    results = [a.json()["results"] for a in answers]
    got = [results[0][0]] + [r[0] for r in results[1:]]
    for mine, reference in zip(got, alone, strict=True):
        assert set(mine) == set(reference)
        for key in ("cas", "pathology", "checklist"):
            assert mine[key] == pytest.approx(reference[key], abs=1e-5)
    error = results[0][1]["error"]
    assert error["type"] == "model" and error["code"] == 502 and "400 Client Error" in error["message"]
    # The bad image is asked at most twice and a 400 is never asked again: the shared pass stops at
    # its first refused question (questions not yet sent are cancelled, so 1 to 4 are refused,
    # depending on timing), scoring it alone refuses up to its 4 questions once more. Retrying a 400
    # (5 attempts per question) would refuse at least 10 (and turn every answer above into a 503).
    assert 1 <= refusing_mllm.refused - refused_before <= 8
    only_bad = _post(evaluator_url, _fundus([white.getvalue()]))
    assert only_bad.status_code == 502 and "items[0]" in only_bad.json()["error"]["message"]


def test_the_mllm_upstream_down_is_503_with_retry_after_and_the_rest_stays_up(evaluator_url):
    item = {"image": b64(png_bytes(mode="RGB")), "labels": ["TUM"]}
    with ThreadPoolExecutor(2) as pool:
        down = pool.submit(_post, evaluator_url, {"dataset": "histopath", "items": [item]})
        up = _post(
            evaluator_url,
            {"dataset": "chexpert", "items": [{"image": b64(png_bytes()), "labels": ["Edema"]}]},
        )
        down = down.result()
    assert up.status_code == 200
    assert down.status_code == 503 and down.headers["Retry-After"] == "10"
    error = down.json()["error"]
    assert error["type"] == "unavailable" and "still failing after 4 retries" in error["message"]


def test_a_key_variable_that_is_not_set_stops_the_app_at_start(evaluator_url, monkeypatch):
    import time

    from ray import serve

    from craft_ray.errors import ConfigError
    from craft_ray.serving.evaluator_app import CASEvaluatorService, build_app

    monkeypatch.delenv("CRAFT_H20_UNSET_KEY", raising=False)
    args = read_serve_config(SERVE_DIR / "evaluator.yaml")["applications"][0]["args"]
    args["auth"] = {"api_key_env": "CRAFT_H20_UNSET_KEY"}
    expected = (
        "auth.api_key_env: the variable CRAFT_H20_UNSET_KEY is not set (or empty) where the evaluator "
        "starts; export it before `serve run` (or set it in the app's runtime_env), or use auth: none"
    )
    with pytest.raises(ConfigError) as caught:  # where `serve run` builds the app
        build_app(args)
    assert str(caught.value) == expected
    monkeypatch.setenv("CRAFT_H20_UNSET_KEY", "  ")
    with pytest.raises(ConfigError, match="not set"):
        build_app(args)
    # a replica on a node without the variable (the build passed where it was set) does not start
    start = time.monotonic()
    with pytest.raises(Exception) as failed:
        serve.run(CASEvaluatorService.options(name="NoKey").bind(args), name="no-key", route_prefix="/no-key")
    print(f"refused in {time.monotonic() - start:.1f} s")
    app = serve.status().applications["no-key"]
    assert "no-key" in str(failed.value) and app.status == "DEPLOY_FAILED"
    assert expected in app.deployments["NoKey"].message  # Serve's status ends with the one line
    print(app.deployments["NoKey"].message)
    assert requests.get(evaluator_url + "/healthz", timeout=30).status_code == 200  # the others stay up
    serve.delete("no-key")
    args.pop("auth")
    with pytest.raises(ConfigError, match="auth: missing; say `auth: none`"):
        build_app(args)
