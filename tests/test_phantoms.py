"""Phantom datasets: deterministic, labelled from their stored parameters, and modality-like."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from craft_ray.data import read_manifest, read_table
from craft_ray.data.images import decode_png
from craft_ray.data.phantoms import GENERATORS, generate_image, make_phantom_dataset
from craft_ray.errors import ConfigError, CraftError, DataError
from craft_ray.knowledge.labels import dataset_for_modality


def digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("modality", list(GENERATORS))
def test_same_seed_gives_byte_identical_output(tmp_path, modality):
    a = make_phantom_dataset(modality, 20, tmp_path / "a", size=32, seed=11)
    make_phantom_dataset(modality, 20, tmp_path / "b", size=32, seed=11)
    make_phantom_dataset(modality, 20, tmp_path / "c", size=32, seed=12)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert sum(c["images"] for c in a.counts.values()) == 20


def rows(root, modality):
    manifest = read_manifest(str(root / modality))
    return [r for split in manifest.counts for r in read_table(str(root / modality), split).to_pylist()]


@pytest.mark.parametrize("modality", list(GENERATORS))
def test_rows_match_the_single_image_api_and_label_space(phantom_root, modality):
    spec = dataset_for_modality(modality)
    data = rows(phantom_root, modality)
    assert len(data) == 48
    for row in data[:6]:
        index = int(row["image_id"].rsplit("-", 1)[1])
        pixels, labels, attrs = generate_image(modality, 3, index, 32)
        stored = decode_png(row["image"])
        assert np.array_equal(stored.squeeze(), pixels.squeeze())
        assert row["labels"] == sorted(labels, key=spec.labels.index)
        assert json.loads(row["attributes"]) == json.loads(json.dumps(attrs, default=lambda v: v.item()))
    for row in data:
        assert set(row["labels"]) <= set(spec.phantom_labels) and row["labels"]
        assert (row["width"], row["height"]) == (32, 32)
        assert decode_png(row["image"]).shape[-1] == spec.channels
    seen: dict[str, str] = {}
    for row in data:
        assert seen.setdefault(row["patient_id"], row["split"]) == row["split"]


def attrs_and_labels(modality, n=160, size=48):
    out = []
    for i in range(n):
        pixels, labels, attrs = generate_image(modality, 0, i, size)
        out.append((pixels, labels, attrs))
    return out


def test_chest_labels_follow_parameters_and_show_in_pixels():
    samples = attrs_and_labels("chest")
    for _, labels, attrs in samples:
        assert ("Cardiomegaly" in labels) == (attrs["ctr"] > 0.5)
        assert ("Pleural Effusion" in labels) == ("effusion_side" in attrs)
        assert ("Pneumothorax" in labels) == ("pneumothorax_side" in attrs)
        assert ("Lung Opacity" in labels) == ("opacity_count" in attrs)
        assert ("Support Devices" in labels) == ("devices" in attrs)
        pathologies = {"Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Opacity"}
        assert ("No Finding" in labels) == (not pathologies & set(labels))

    # The heart widens with the CTR: the dense band across the lower chest is wider.
    def heart_width(img):
        row = img[int(img.shape[0] * 0.68)].astype(float)
        return (row > row.max() * 0.0 + 100).sum()

    big = [heart_width(p) for p, labels, _ in samples if "Cardiomegaly" in labels]
    lung = np.array([p[20:26, 10:16].mean() for p, _, _ in samples])
    centre = np.array([p[14:30, 22:26].mean() for p, _, _ in samples])
    assert big and (centre > lung).mean() > 0.9  # dark lungs beside the bright mediastinum


def test_derm_abcd_parameters_separate_the_classes():
    samples = attrs_and_labels("derm")
    darker = []
    for img, labels, _ in samples:
        assert labels[0] in ("MEL", "NV", "BKL")
        h, w, _ = img.shape
        centre = img[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean()
        darker.append(centre < img[h // 2 - 4 : h // 2 + 4, 8:12].mean())
    assert np.mean(darker) > 0.8  # a pigmented lesion, darker than the skin around it
    assert {tuple(s[1]) for s in samples} == {("MEL",), ("NV",), ("BKL",)}

    # each ABCD criterion is drawn on its own, far more often in melanoma than in nevi
    def share(label, key, rule):
        values = [rule(a[key]) for _, labs, a in samples if labs == [label]]
        return np.mean(values)

    for key, rule in [
        ("asymmetry", lambda v: v >= 0.2),
        ("border_irregularity", lambda v: v >= 0.2),
        ("n_colours", lambda v: v >= 3),
        ("diameter_mm", lambda v: v > 6),
    ]:
        mel, nv = share("MEL", key, rule), share("NV", key, rule)
        assert 0.6 < mel < 1.0 and nv < 0.25, (key, mel, nv)  # correlated with the class, not equal to it
    assert np.mean([a.get("milia_cysts", 0) > 0 for _, labs, a in samples if labs == ["BKL"]]) > 0.6


def test_fundus_grades_follow_lesion_counts():
    samples = attrs_and_labels("fundus")
    for img, labels, attrs in samples:
        grade = attrs["dr_grade"]
        assert labels == [dataset_for_modality("fundus").labels[grade]]
        assert (grade == 0) == (attrs["microaneurysms"] == 0)
        assert (grade == 4) == (attrs["neovascularisation"] > 0)
        assert attrs["cotton_wool_spots"] == 0 or grade >= 2
        if grade == 3:  # the 4-2-1 rule, simplified: haemorrhages in four quadrants or venous beading
            assert (attrs["haemorrhages"] >= 14 and attrs["haemorrhage_quadrants"] == 4) or attrs[
                "venous_beading"
            ]
        if grade <= 2:
            assert not attrs["venous_beading"] and not attrs["preretinal_haemorrhage"]
        assert img[:3, :3].max() < 10  # black outside the round field
        centre = img[16:32, 16:32].reshape(-1, 3).mean(0)
        assert centre[0] > centre[1] > centre[2]  # orange-red fundus
    assert {s[2]["dr_grade"] for s in samples} == {0, 1, 2, 3, 4}


def test_histo_classes_follow_tissue_parameters():
    samples = attrs_and_labels("histo")
    by_class: dict[str, list[dict]] = {}
    for img, labels, attrs in samples:
        by_class.setdefault(labels[0], []).append(attrs)
        mean = img.reshape(-1, 3).mean(0)
        assert mean[0] > mean[1] and mean[2] > mean[1]  # H&E: pink-purple, green absorbed
    assert set(by_class) == {"ADI", "BACK", "LYM", "MUC", "NORM", "STR", "TUM"}
    assert min(a["nuclear_density"] for a in by_class["LYM"]) > max(
        a["nuclear_density"] for a in by_class["STR"]
    )
    assert min(a["fat_fraction"] for a in by_class["ADI"]) > 0.5
    assert min(a["atypia"] for a in by_class["TUM"]) > max(a["atypia"] for a in by_class["NORM"])
    assert min(a["nuclear_size"] for a in by_class["TUM"]) > max(a["nuclear_size"] for a in by_class["STR"])


def test_bad_phantom_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown phantom modality 'xray'"):
        make_phantom_dataset("xray", 4, tmp_path / "x")
    with pytest.raises(ConfigError, match="--n must be at least 1"):
        make_phantom_dataset("chest", 0, tmp_path / "x")
    make_phantom_dataset("chest", 4, tmp_path / "y", size=16, fractions={"train": 1.0})
    with pytest.raises(DataError, match="already holds a dataset"):
        make_phantom_dataset("chest", 4, tmp_path / "y", size=16)


def test_phantom_outputs_are_checked_before_any_work(tmp_path):
    """One rule for outputs: never into a file or a folder of other files, never over a dataset
    without overwrite, no split left empty, and nothing half-written."""
    with pytest.raises(
        ConfigError, match=r"--n 3 gives 1 patient\(s\), which leave split\(s\) val, test empty"
    ):
        make_phantom_dataset("chest", 3, tmp_path / "few", size=16)
    assert not (tmp_path / "few").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CraftError, match="exists and is not a directory"):
        make_phantom_dataset("chest", 4, tmp_path / "file", size=16, fractions={"train": 1.0})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(DataError, match="is not empty and holds no craft-ray dataset"):
            make_phantom_dataset(
                "chest", 4, tmp_path / "notes", size=16, fractions={"train": 1.0}, overwrite=overwrite
            )
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
    make_phantom_dataset("chest", 4, tmp_path / "data", size=16, fractions={"train": 1.0})
    replaced = make_phantom_dataset(
        "chest", 6, tmp_path / "data", size=16, fractions={"train": 1.0}, overwrite=True
    )
    assert (
        replaced.counts["train"]["images"]
        == 6
        == read_manifest(str(tmp_path / "data")).counts["train"]["images"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file", "notes"]  # no temporary left
