"""The CAS evaluator service (serve/evaluator.yaml) over HTTP on 127.0.0.1: scores equal the
local evaluator's, thresholds from a calibration, API key, a bad-input corpus, bounded load."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from serving_helpers import SERVE_DIR, b64, free_port, png_bytes
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


@pytest.fixture(scope="module")
def evaluator_url(ray_local, calibration_file):
    from ray import serve

    config = read_serve_config(SERVE_DIR / "evaluator.yaml")
    app = config["applications"][0]
    app["args"]["datasets"] = {"chexpert": {"calibration": str(calibration_file)}, "isic": {}}
    app["args"]["limits"] = {"max_items": 4, "max_image_bytes": 100_000, "max_image_pixels": 128 * 128}
    actor = app["deployments"][0]["ray_actor_options"]
    actor["runtime_env"] = {"env_vars": {"CRAFT_EVALUATOR_API_KEY": KEY}}
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
    assert set(labels) == {"chexpert", "isic"}
    assert "Pleural Effusion" in labels["chexpert"]["labels"] and labels["chexpert"]["calibrated"] is True
    assert labels["isic"]["labels"][0] == "MEL" and labels["isic"]["calibrated"] is False
    item = {"image": b64(png_bytes()), "labels": ["Cardiomegaly"]}
    assert _post(evaluator_url, {"dataset": "chexpert", "items": [item]}, headers={}).status_code == 401


def _bmp_too_big() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (200, 200)).save(buf, format="PNG")  # 40 000 pixels > 128 x 128
    return buf.getvalue()


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
    # batching changes no score beyond float noise (batch sizes differ by 3e-8; rounding to 6 digits
    # could split two such values across a boundary)
    assert max(abs(s - scores[i % 8]) for i, s in enumerate(scores)) < 1e-6


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
