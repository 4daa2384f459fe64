"""The reader study end to end: a study built from two tiny trained runs, the Ray Serve app over HTTP
(2 replicas; answers survive a restart; two readers at once; every bad request 4xx JSON; a reader
id without its access token gets 403; no method name or run path in any response), and a real
browser (Debian chromium + chromedriver, selenium)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from PIL import Image

from craft_ray.config import validate_config
from craft_ray.data import read_table
from craft_ray.study.build import create_study
from craft_ray.study.generate import generate_images
from craft_ray.study.runs import open_run
from craft_ray.study.store import AnswerStore
from craft_ray.train.loop import train_loop
from craft_ray.train.session import LocalSession

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]
READERS = ["alice", "bob", "carol", "dave"]
N, CONTROLS = 4, 2
PAIRS = N + CONTROLS


def train_tiny_run(data: Path, root: Path, name: str, method: str) -> Path:
    """One optimiser step in-process, then `final/` as the Ray Train driver exports it."""
    cfg = validate_config(
        {
            "name": name,
            "method": method,
            "seed": 1,
            "dataset": {"name": "chexpert", "uri": str(data), "resolution": 32, "labels": LABELS},
            "training": {"steps": 1, "sampler_steps": 3, "checkpoint_every": 1, "learning_rate": 1e-2},
            "storage": {"path": str(root)},
        }
    )
    run = root / name
    train_loop(cfg, LocalSession(run))
    latest = sorted(run.glob("checkpoint_*"))[-1]
    for item in ("lora", "unet", "model.json", "config.yaml"):
        if (latest / item).is_dir():
            shutil.copytree(latest / item, run / "final" / item)
        elif (latest / item).is_file():
            shutil.copy2(latest / item, run / "final" / item)
    return run


@pytest.fixture(scope="module")
def runs(phantom_root, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("study-runs")
    data = phantom_root / "chest"
    return [
        train_tiny_run(data, root, "blind-lora-run", "lora_sft"),
        train_tiny_run(data, root, "blind-full-run", "full_sft"),
    ]


@pytest.fixture(scope="module")
def created(runs, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("studies") / "s1"
    _, tokens = create_study([str(r) for r in runs], out, n=N, seed=5, readers=READERS, controls=CONTROLS)
    return out, tokens


@pytest.fixture(scope="module")
def study(created) -> Path:
    return created[0]


@pytest.fixture(scope="module")
def tokens(created) -> dict[str, str]:
    """Each reader's access token, as `craft study create` hands them out once."""
    return created[1]


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_create_pairs_two_methods_on_the_same_label_set_and_seed(study, tokens, runs, phantom_root):
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["pairs"] == PAIRS and manifest["readers"] == READERS and manifest["n"] == N
    # one random token per reader; the study keeps only their SHA-256, and no file holds a token
    assert set(tokens) == set(READERS) and len(set(tokens.values())) == len(READERS)
    assert manifest["reader_tokens"] == {
        r: "sha256:" + hashlib.sha256(t.encode()).hexdigest() for r, t in tokens.items()
    }
    stored = b"".join(f.read_bytes() for f in study.rglob("*") if f.is_file())
    assert not any(t.encode() in stored for t in tokens.values())
    assert [s["name"] for s in manifest["sources"]] == ["blind-lora-run", "blind-full-run", "real"]
    assert [s["run"] for s in manifest["sources"][:2]] == [str(r.resolve()) for r in runs]
    pairs = pq.read_table(study / "pairs.parquet").to_pylist()
    key = {row["pair_id"]: row for row in pq.read_table(study / "key.parquet").to_pylist()}
    assert set(pairs[0]) == {
        "pair_id",
        "labels",
        "seed",
        "left_image",
        "right_image",
    }  # no source in the pairs
    ids = [p[side] for p in pairs for side in ("left_image", "right_image")]
    assert len(set(ids)) == 2 * PAIRS and all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert sorted(p.name for p in (study / "images").iterdir()) == sorted(f"{i}.png" for i in ids)
    kinds = [key[p["pair_id"]]["kind"] for p in pairs]
    assert kinds.count("generated") == N and kinds.count("control") == CONTROLS
    real_sets = {
        tuple(x)
        for x in read_table(str(phantom_root / "chest"), "test", ["labels"]).column("labels").to_pylist()
    }
    assert all(tuple(p["labels"]) in real_sets for p in pairs)  # label sets come from the real split
    # Each generated pair: both images regenerate from (label set, seed) with the run on that side.
    opened = {r.name: open_run(r) for r in runs}
    generated = [p for p in pairs if key[p["pair_id"]]["kind"] == "generated"]
    pair = generated[0]
    # (Regenerated alone rather than in the study's batch of 8: CPU matmuls of another batch size
    # may round differently, so pixels can move by a few levels; the other run's image is far.)
    sides = ("left", "right")
    stored = {
        s: png((study / "images" / f"{pair[f'{s}_image']}.png").read_bytes()).astype(int) for s in sides
    }
    for side, other in (sides, sides[::-1]):
        run = opened[key[pair["pair_id"]][f"{side}_source"]]
        (expected,) = generate_images(run, [pair["labels"]], [pair["seed"]])
        assert np.abs(stored[side] - expected).mean() <= 0.5 and np.abs(stored[side] - expected).max() <= 16
        assert np.abs(stored[other] - expected).mean() > 4 * np.abs(stored[side] - expected).mean() + 1
    # the two methods really differ on the same noise, so a reader has something to judge
    left = png((study / "images" / f"{pair['left_image']}.png").read_bytes()).astype(int)
    right = png((study / "images" / f"{pair['right_image']}.png").read_bytes()).astype(int)
    assert np.abs(left - right).max() > 0
    # control pairs: one side is a real test image of that label set
    for p in (p for p in pairs if key[p["pair_id"]]["kind"] == "control"):
        assert "real" in (key[p["pair_id"]]["left_source"], key[p["pair_id"]]["right_source"])


def craft_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "craft_ray.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_create_refuses_runs_of_different_datasets(runs, tmp_path):
    other = tmp_path / "isic-run"
    shutil.copytree(runs[1], other)
    config = yaml.safe_load((other / "final" / "config.yaml").read_text())
    config["dataset"] = {**config["dataset"], "name": "isic", "labels": ["MEL", "NV"]}
    (other / "final" / "config.yaml").write_text(yaml.safe_dump(config))
    result = craft_cli(
        "study", "create", "--runs", str(runs[0]), str(other), "--readers", "a", "--out", str(tmp_path / "s")
    )
    assert result.returncode == 2, result.stderr
    assert (
        "different datasets" in result.stderr and "isic" in result.stderr and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "s").exists()


def test_serve_yaml_builds_the_app_for_the_study_it_names(study, tmp_path, monkeypatch):
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve" / "study.yaml").read_text()))
    (app_config,) = config.applications
    assert config.http_options.host == "127.0.0.1"
    (tmp_path / Path(app_config.args["study"]).parent).mkdir(parents=True)
    (tmp_path / app_config.args["study"]).symlink_to(study)
    monkeypatch.chdir(tmp_path)  # the study path is relative to where `serve run` starts
    application = import_attr(app_config.import_path)(app_config.args)
    assert application._bound_deployment.init_args == (str((tmp_path / app_config.args["study"]).resolve()),)
    monkeypatch.chdir(ROOT)
    with pytest.raises(Exception, match="not a study directory"):
        import_attr(app_config.import_path)({"study": str(tmp_path / "nowhere")})


# ------------------------------------------------------------------------------------------ the app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """HTTP to the app; every response (body and headers) is scanned for what must stay hidden. A
    request under /api/readers/<reader>/ carries that reader's token, as the page sends it."""

    def __init__(self, base: str, forbidden: list[str], tokens: dict[str, str]):
        self.base, self.forbidden, self.scanned, self.tokens = base, forbidden, 0, tokens

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        reader = re.match(r"/api/readers/([^/]+)/", path)
        token = self.tokens.get(reader.group(1)) if reader else None
        if token and "headers" not in kwargs:
            kwargs["headers"] = {"Authorization": f"Bearer {token}"}
        response = requests.request(method, self.base + path, timeout=60, **kwargs)
        text = response.content.decode("latin-1") + json.dumps(dict(response.headers))
        leaked = [word for word in self.forbidden if word in text]
        assert not leaked, f"{method} {path} reveals {leaked}"
        self.scanned += 1
        return response

    def get(self, path: str) -> requests.Response:
        return self.request("GET", path)

    def post(self, path: str, body) -> requests.Response:
        if isinstance(body, bytes | str):
            reader = re.match(r"/api/readers/([^/]+)/", path)
            headers = {"Content-Type": "application/json"}
            if reader and reader.group(1) in self.tokens:
                headers["Authorization"] = f"Bearer {self.tokens[reader.group(1)]}"
            return self.request("POST", path, data=body, headers=headers)
        return self.request("POST", path, json=body)


def deploy(study: Path) -> None:
    from ray import serve

    from craft_ray.serving.study_app import build_app

    serve.run(build_app({"study": str(study), "num_replicas": 2}), name="study", route_prefix="/")


@pytest.fixture(scope="module")
def app(ray_local, study, runs, tokens):
    from ray import serve

    serve.shutdown()  # a Serve instance left by another module would keep its own port
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(study)
    forbidden = ["blind-lora-run", "blind-full-run", "lora_sft", "full_sft", "key.parquet", "left_source"]
    forbidden += [str(r.resolve()) for r in runs] + [str(study.parent)] + list(tokens.values())
    yield Client(f"http://127.0.0.1:{port}", forbidden, dict(tokens))
    serve.shutdown()


def answer(pair_id: str, choice: str = "left", **extra) -> dict:
    return {"pair_id": pair_id, "choice": choice, "time_ms": 1500, **extra}


def test_a_reader_answers_changes_an_answer_and_resumes(app):
    progress = app.get("/api/readers/alice/progress").json()
    assert (progress["done"], progress["total"], progress["last"]) == (0, PAIRS, None)
    first = progress["next"]
    assert set(first) == {"pair_id", "position", "labels", "left", "right", "findings", "answer"}
    assert first["findings"] and all(f["label"] in first["labels"] for f in first["findings"])
    image = app.get(first["left"])
    assert (
        image.status_code == 200 and image.headers["content-type"] == "image/png" and png(image.content).size
    )
    wrong = [first["findings"][0]["id"]]
    saved = app.post("/api/readers/alice/answers", answer(first["pair_id"], "right", wrong_left=wrong))
    assert saved.status_code == 201, saved.text
    assert saved.json()["answer"]["revision"] == 0 and saved.json()["progress"]["done"] == 1
    again = app.get("/api/readers/alice/progress").json()  # a reload sees the same state
    assert (
        again["done"] == 1
        and again["last"] == first["pair_id"]
        and again["next"]["pair_id"] != first["pair_id"]
    )
    repeat = app.post("/api/readers/alice/answers", answer(first["pair_id"], "left"))
    assert repeat.status_code == 409 and "change" in repeat.json()["detail"]
    changed = app.post("/api/readers/alice/answers", answer(first["pair_id"], "left", change=True))
    assert changed.status_code == 201 and changed.json()["answer"]["revision"] == 1
    view = app.get(f"/api/readers/alice/pairs/{first['pair_id']}").json()
    assert view["answer"]["choice"] == "left" and view["answer"]["revision"] == 1
    # readers see the pairs in their own seeded order, the same on every visit
    orders = {
        r: app.get(f"/api/readers/{r}/progress").json()["next"]["pair_id"] for r in ("bob", "carol", "dave")
    }
    assert len(set(orders.values()) | {first["pair_id"]}) > 1


def test_every_bad_request_gets_a_4xx_json_answer(app):
    pair = app.get("/api/readers/alice/progress").json()["next"]
    pid = pair["pair_id"]
    cases = [
        ("GET", "/api/readers/mallory/progress", None, 403),
        ("GET", "/api/readers/..%2Fmanifest.json/progress", None, 404),
        ("GET", "/api/readers/bad%20id%3B/progress", None, 403),
        ("POST", "/api/readers/mallory/answers", answer(pid), 403),
        ("GET", "/api/readers/mallory/images/" + pair["left"].rsplit("/", 1)[1], None, 403),
        ("GET", "/api/readers/alice/pairs/p9999", None, 404),
        ("POST", "/api/readers/alice/answers", answer("p9999"), 404),
        ("GET", "/api/readers/alice/images/0000000000000000", None, 404),
        ("GET", "/api/readers/alice/images/..%2F..%2Fmanifest.json", None, 404),
        ("POST", "/api/readers/alice/answers", b"{not json", 422),
        ("POST", "/api/readers/alice/answers", {"pair_id": pid}, 422),
        ("POST", "/api/readers/alice/answers", answer(pid, "up"), 422),
        ("POST", "/api/readers/alice/answers", answer(pid, time_ms=-5), 422),
        ("POST", "/api/readers/alice/answers", answer(pid, method="lora"), 422),
        ("POST", "/api/readers/alice/answers", answer(pid, wrong_left=["chexpert:Fracture:0"]), 422),
        ("POST", "/api/readers/alice/answers", [1, 2], 422),
    ]
    for method, path, body, status in cases:
        response = app.get(path) if method == "GET" else app.post(path, body)
        assert response.status_code == status, (path, body, response.text)
        assert response.headers["content-type"].startswith("application/json") and response.json()["detail"]
    assert app.get("/healthz").status_code == 200  # still up
    assert app.get("/api/readers/alice/progress").json()["next"]["pair_id"] == pid  # nothing was stored


def test_a_reader_id_without_its_token_gets_403(app, tokens, study, craft_in_process):
    pair = app.get("/api/readers/alice/progress").json()["next"]
    image = pair["left"]
    routes = [
        ("GET", "/api/readers/alice/progress"),
        ("GET", f"/api/readers/alice/pairs/{pair['pair_id']}"),
        ("POST", "/api/readers/alice/answers"),
        ("GET", image),
    ]
    wrong = {
        "no token": {},
        "empty bearer": {"Authorization": "Bearer "},
        "another reader's token": {"Authorization": f"Bearer {tokens['bob']}"},
        "a made-up token": {"Authorization": "Bearer " + "x" * 24},
        "not a bearer": {"Authorization": f"Basic {tokens['alice']}"},
    }
    for name, headers in wrong.items():
        for method, path in routes:
            body = {"json": answer(pair["pair_id"])} if method == "POST" else {}
            response = app.request(method, path, headers=headers, **body)
            assert response.status_code == 403, (name, path, response.text)
            assert "access token" in response.json()["detail"], (name, path)
    # a wrong token reads the same for a listed and an unlisted reader: ids cannot be probed
    listed = app.request("GET", "/api/readers/alice/progress", headers=wrong["a made-up token"]).json()
    unlisted = app.request("GET", "/api/readers/mallory/progress", headers=wrong["a made-up token"]).json()
    assert listed["detail"].replace("alice", "mallory") == unlisted["detail"]
    assert (
        app.get("/api/readers/alice/progress").json()["next"]["pair_id"] == pair["pair_id"]
    )  # nothing stored
    assert app.get(image).status_code == 200  # with the token: the page's own requests

    # a reader added while the app runs, then a lost token replaced: no restart
    def issue() -> str:
        result = craft_in_process("study", "token", "--study", str(study), "--reader", "erin")
        assert result.returncode == 0, result.stderr
        link = re.search(r"erin: (http://127\.0\.0\.1:8000/#reader=erin&token=(\S+))", result.stdout)
        assert link, result.stdout
        return link.group(2)

    first = issue()
    erin = {"Authorization": f"Bearer {first}"}
    assert app.request("GET", "/api/readers/erin/progress", headers=erin).json()["total"] == PAIRS
    second = issue()
    assert app.request("GET", "/api/readers/erin/progress", headers=erin).status_code == 403
    assert app.request("GET", "/api/readers/erin/progress", headers={"Authorization": f"Bearer {second}"}).ok
    assert json.loads((study / "manifest.json").read_text())["readers"] == [*READERS, "erin"]
    bad = craft_in_process("study", "token", "--study", str(study), "--reader", "bad id;")
    assert bad.returncode == 2 and "reader id" in bad.stderr


def test_two_readers_at_once_lose_nothing_and_a_racing_duplicate_is_refused(app, study):
    replicas = {app.get("/healthz").json()["replica"] for _ in range(30)}
    assert len(replicas) == 2  # both replicas answer: the store is shared across processes
    target = app.get("/api/readers/carol/progress").json()["next"]["pair_id"]
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(
            pool.map(lambda _: app.post("/api/readers/carol/answers", answer(target)).status_code, range(8))
        )
    assert statuses == [201] + [409] * 7

    def answer_all(reader: str) -> list[int]:
        codes = []
        while (nxt := app.get(f"/api/readers/{reader}/progress").json()["next"]) is not None:
            codes.append(
                app.post(f"/api/readers/{reader}/answers", answer(nxt["pair_id"], "none")).status_code
            )
        return codes

    with ThreadPoolExecutor(2) as pool:
        bob, carol = pool.map(answer_all, ["bob", "carol"])
    assert bob == [201] * PAIRS and carol == [201] * (PAIRS - 1)
    history = AnswerStore(study / "answers.sqlite", readonly=True).history()
    for reader in ("bob", "carol"):
        mine = [a for a in history if a.reader == reader]
        assert (
            len(mine) == PAIRS
            and len({a.pair_id for a in mine}) == PAIRS
            and {a.revision for a in mine} == {0}
        )


def test_answers_survive_an_app_restart(app, study):
    from ray import serve

    before = app.get("/api/readers/alice/progress").json()
    assert before["done"] >= 1
    serve.delete("study")  # the replicas (and anything they held in memory) are gone
    deploy(study)
    after = app.get("/api/readers/alice/progress").json()
    assert (after["done"], after["last"], after["next"]["pair_id"]) == (
        before["done"],
        before["last"],
        before["next"]["pair_id"],
    )
    assert app.get(f"/api/readers/alice/pairs/{before['last']}").json()["answer"]["revision"] == 1
    assert app.get("/api/readers/bob/progress").json()["done"] == PAIRS


def test_no_response_names_a_method_or_run(app):
    """The page, its script and style, every pair view and every image of a reader, scanned."""
    for path in ("/", "/app.js", "/style.css", "/healthz"):
        assert app.get(path).status_code == 200
    page = app.get("/").text
    assert '<script src="app.js">' in page and "http" not in page.replace(
        "http-equiv", ""
    )  # nothing from a CDN
    progress = app.get("/api/readers/dave/progress").json()
    ids = {progress["next"]["pair_id"]}
    for position in range(PAIRS):
        view = app.get(f"/api/readers/dave/pairs/p{position + 1:04d}").json()
        ids.add(view["pair_id"])
        for side in ("left", "right"):
            assert app.get(view[side]).status_code == 200
    assert len(ids) == PAIRS and app.scanned > 40


# ------------------------------------------------------------------------------------------ the browser


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail(
            "chromium and chromedriver are not installed: run `make browser` (apt chromium chromium-driver)"
        )
    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_a_reader_in_a_real_browser_answers_with_keyboard_and_mouse_and_resumes(app, study, tokens):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    driver = chrome()
    wait = WebDriverWait(driver, 30)
    find = driver.find_element

    def progress_is(text: str) -> None:
        wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), text))

    def shown_pair(previous: str | None = None) -> str:
        wait.until(
            lambda d: (
                find(By.ID, "task").is_displayed()
                and find(By.ID, "task").get_attribute("data-pair") != previous
            )
        )
        wait.until(
            lambda d: d.execute_script(
                "return ['left-img','right-img'].every(i => document.getElementById(i).naturalWidth > 0)"
            )
        )
        return find(By.ID, "task").get_attribute("data-pair")

    try:
        driver.get(app.base + "/")
        box = wait.until(ec.visibility_of_element_located((By.ID, "reader")))
        box.send_keys("mallory")
        find(By.ID, "token").send_keys("guessed-token")
        find(By.ID, "start").click()
        wait.until(
            ec.text_to_be_present_in_element((By.ID, "login-error"), "not on this study's access list")
        )
        box.clear()
        box.send_keys("dave")  # a listed reader with another reader's token fares no better
        find(By.ID, "token").clear()
        find(By.ID, "token").send_keys(tokens["carol"], Keys.ENTER)
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "reader 'dave' with this access"))
        assert find(By.ID, "login").is_displayed()
        driver.get(f"{app.base}/#reader=dave&token={tokens['dave']}")  # the reader's link
        progress_is(f"0 / {PAIRS} answered")
        assert tokens["dave"] not in driver.current_url  # taken out of the address bar
        answered = [shown_pair()]
        find(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)  # keyboard: left
        progress_is(f"1 / {PAIRS} answered")
        answered.append(shown_pair(answered[-1]))
        tick = find(
            By.CSS_SELECTOR, "#right-findings input[type=checkbox]"
        )  # mouse: tick a finding, then click
        ticked = tick.get_attribute("value")
        tick.click()
        driver.save_screenshot(str(ARTIFACTS / "study-browser-pair.png"))
        find(By.ID, "choose-none").click()
        progress_is(f"2 / {PAIRS} answered")
        answered.append(shown_pair(answered[-1]))
        find(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)  # keyboard: right
        progress_is(f"3 / {PAIRS} answered")
        driver.refresh()  # the reader id is remembered and the server knows the progress
        progress_is(f"3 / {PAIRS} answered")
        resumed = shown_pair()
        assert resumed not in answered and "reader dave" in find(By.ID, "who").text
        screenshot = ARTIFACTS / "study-browser.png"
        driver.save_screenshot(str(screenshot))
        print(f"browser screenshots: {screenshot} and {ARTIFACTS / 'study-browser-pair.png'}")
    finally:
        driver.quit()
    dave = AnswerStore(study / "answers.sqlite", readonly=True).history("dave")
    assert [(a.pair_id, a.choice) for a in dave] == list(
        zip(answered, ["left", "none", "right"], strict=True)
    )
    assert dave[1].wrong_right == [ticked] and dave[1].wrong_left == []
    assert dave[0].wrong_left == dave[0].wrong_right == [] and all(a.time_ms > 0 for a in dave)
    with Image.open(screenshot) as shot:
        assert shot.size[0] >= 1000
