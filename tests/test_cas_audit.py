"""`craft cas audit`: per image and checklist item P(criterion met), pass rates per item and, on
phantom data, the item-level AUROC against the recorded ground truth; folders of PNGs with
labels.csv as `craft generate` writes them; the MLLM path; bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from craft_ray.data.phantoms import generate_image, make_phantom_dataset
from craft_ray.knowledge.checklists import load_knowledge


def pairwise_auroc(scores, truth) -> float:
    scores, truth = np.asarray(scores, float), np.asarray(truth, bool)
    pos, neg = scores[truth], scores[~truth]
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


@pytest.fixture(scope="module")
def chest_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    make_phantom_dataset("chest", 48, root / "chest", size=32, seed=21, implausible=0.5)
    return root / "chest"


def write_folder(folder, n=4, seed=9, implausible=0.0):
    """PNGs and labels.csv in the layout `craft generate` writes."""
    folder.mkdir()
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "labels"])
        for i in range(n):
            pixels, labels, _ = generate_image("chest", seed, i, 32, implausible)
            Image.fromarray(pixels).save(folder / f"sample_{i:04d}_seed{i}.png")
            writer.writerow([f"sample_{i:04d}_seed{i}.png", "|".join(labels)])
    return folder


def test_audit_of_phantom_data_answers_every_item_against_its_ground_truth(
    chest_data, tmp_path, craft_in_process
):
    out = tmp_path / "audit.json"
    done = craft_in_process("cas", "audit", "--data", str(chest_data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["dataset"] == "chexpert" and report["path"] == "vlm-surrogate"
    assert report["vlm"] == "phantom:chest" and report["n_images"] == 48 and report["ground_truth"]
    kb = load_knowledge()
    modality_items = {i.id for i in (*kb.anatomy("chest"), *kb.realism("chest"))}
    for image in report["images"]:
        applicable = {i.id for label in image["labels"] for i in kb.for_label("chexpert", label)}
        assert applicable | modality_items | set(image["truth"]) == set(image["p"])  # all asked
        assert all(0.0 <= p <= 1.0 for p in image["p"].values())
    # the summary agrees with the per-image answers, recomputed here by the definitions
    for item, row in report["items"].items():
        answers = [img["p"][item] for img in report["images"] if item in img["p"] and _applies(kb, img, item)]
        if answers:
            assert row["n"] == len(answers) and row["pass_rate"] == pytest.approx(
                np.mean(np.array(answers) > 0.5)
            )
        truth = [(img["p"][item], img["truth"][item]) for img in report["images"] if item in img["truth"]]
        if truth and 0 < sum(t for _, t in truth) < len(truth):
            expected = pairwise_auroc([p for p, _ in truth], [t for _, t in truth])
            assert row["ground_truth"]["auroc"] == pytest.approx(expected)
    # the shipped VLM tells a colour cast from a radiograph: the colour item ranks them apart
    colour = report["items"]["chest:realism:0"]["ground_truth"]
    assert colour["met"] < colour["n"] and colour["auroc"] > 0.9
    assert "checklist audit" in done.stdout and "AUROC" in done.stdout


def _applies(kb, image, item):
    dataset, label, _ = item.split(":")
    return dataset == "chest" or label in image["labels"]


def test_audit_of_a_folder_of_pngs_with_labels_csv(tmp_path, craft_in_process):
    folder = write_folder(tmp_path / "generated")
    out = tmp_path / "audit.json"
    done = craft_in_process(
        "cas", "audit", "--images", str(folder), "--out", str(out), "--vlm", "phantom:chest"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["dataset"] == "chexpert" and report["splits"] == ["images"] and not report["ground_truth"]
    kb = load_knowledge()
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    assert [img["image_id"] for img in report["images"]] == [r["file"] for r in rows]
    for image, row in zip(report["images"], rows, strict=True):
        labels = row["labels"].split("|")
        expected = [i.id for label in labels for i in kb.for_label("chexpert", label)]
        expected += [i.id for i in (*kb.anatomy("chest"), *kb.realism("chest"))]
        assert image["labels"] == labels and list(image["p"]) == expected and "truth" not in image
    assert report["item_auroc_min"] is None


def test_audit_of_a_folder_of_mixed_sizes_takes_the_one_image_path(tmp_path, craft_in_process):
    """A folder whose PNGs differ in size (a user's own exports) is audited, each image through
    the one image path: the same phantom at 64 px, at 128 px and inside a wider 64 x 96 canvas
    (centre square = the phantom) gets the same answers as far as resampling allows."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    pixels, labels, _ = generate_image("chest", 9, 0, 64)
    base = Image.fromarray(pixels)
    base.save(folder / "a.png")
    base.resize((128, 128), Image.BICUBIC).save(folder / "b.png")
    wide = Image.new("L", (96, 64), 0)
    wide.paste(base, (16, 0))
    wide.save(folder / "c.png")
    (folder / "labels.csv").write_text(
        "file,labels\n" + "".join(f"{f}.png,{'|'.join(labels)}\n" for f in "abc")
    )
    out = tmp_path / "audit.json"
    done = craft_in_process(
        "cas", "audit", "--images", str(folder), "--out", str(out), "--vlm", "phantom:chest"
    )
    assert done.returncode == 0, done.stderr
    answers = {img["image_id"]: img["p"] for img in json.loads(out.read_text())["images"]}
    assert set(answers) == {"a.png", "b.png", "c.png"}
    for other in ("b.png", "c.png"):
        gaps = [abs(answers[other][k] - answers["a.png"][k]) for k in answers["a.png"]]
        assert max(gaps) < 0.1, (other, max(gaps))


def test_audit_through_an_mllm_asks_each_question(tmp_path, craft_in_process):
    folder = write_folder(tmp_path / "generated", n=2)
    out = tmp_path / "audit.json"
    done = craft_in_process("cas", "audit", "--images", str(folder), "--out", str(out), "--mllm", "tiny")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["path"] == "mllm" and report["model"] == "tiny" and report["vlm"] is None
    answers = [p for img in report["images"] for p in img["p"].values()]
    assert (
        len(answers) == sum(len(img["p"]) for img in report["images"])
        and 0 < min(answers) <= max(answers) < 1
    )
    assert "MLLM P(yes)" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: give exactly one of --images"),
        (["--images", "{folder}", "--data", "{folder}"], "error: give exactly one of --images"),
        (
            ["--images", "{tmp}/nowhere"],
            "error: {tmp}/nowhere: not a dataset or a folder of images with labels.csv",
        ),
        (["--data", "{folder}"], "error: {folder}: not a craft-ray dataset"),
        (["--images", "{folder}", "--split", "test"], "error: --split applies to a dataset"),
        (
            ["--images", "{folder}", "--dataset", "isic"],
            "error: {folder}/labels.csv line 2: unknown label(s)",
        ),
        (["--images", "{broken}"], "error: {broken}/labels.csv line 3: cannot decode image"),
        (["--images", "{typo}"], "error: {typo}/labels.csv line 3: unknown label(s) ['Pnemonia']"),
        (
            ["--images", "{folder}", "--out", "{folder}/labels.csv"],
            "error: {folder}/labels.csv already exists",
        ),
    ],
)
def test_audit_bad_input_is_one_line_and_writes_nothing(tmp_path, craft_in_process, args, message):
    folder = write_folder(tmp_path / "ok", n=2)
    broken = write_folder(tmp_path / "broken", n=2)
    (broken / "sample_0001_seed1.png").write_bytes((broken / "sample_0001_seed1.png").read_bytes()[:60])
    typo = write_folder(tmp_path / "typo", n=2)
    text = (typo / "labels.csv").read_text().splitlines()
    (typo / "labels.csv").write_text("\n".join([*text[:2], text[2].split(",")[0] + ",Pnemonia"]) + "\n")
    places = {"folder": folder, "broken": broken, "typo": typo, "tmp": tmp_path}
    args = [a.format(**places) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "audit.json")]
    before = sorted(p.name for p in tmp_path.iterdir())
    done = craft_in_process("cas", "audit", *args, *out)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(**places)), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary left
