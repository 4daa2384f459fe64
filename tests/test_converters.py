"""Converters on small trees in each public layout, including the awkward cases."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_image, write_truncated_jpeg

from craft_ray.data import read_manifest, read_table
from craft_ray.data.converters import ConvertOptions, convert
from craft_ray.data.schema import IMAGE_SCHEMA, REJECTS_NAME
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import CHEXPERT

CHEX_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT.labels]


def _chex_row(path: str, view: str = "Frontal", **labels: str) -> list[str]:
    cells = {label: "" for label in CHEXPERT.labels}
    cells.update({k.replace("_", " "): v for k, v in labels.items()})
    return [path, "Female", "63", view, "AP" if view == "Frontal" else "", *cells.values()]


def make_chexpert(root: Path) -> Path:
    base = root / "CheXpert-v1.0-small"
    rows = []
    for p in range(1, 13):
        for v, view in ((1, "Frontal"), (2, "Lateral")):
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view{v}_{view.lower()}.jpg"
            write_image(root / rel, seed=p * 10 + v)
            rows.append(_chex_row(rel, view, Cardiomegaly="1.0", Edema="-1.0", Pneumonia="0.0"))
    # awkward rows
    rows.append(
        _chex_row("CheXpert-v1.0-small/train/patient00099/study1/view1_frontal.jpg", No_Finding="1.0")
    )  # missing file
    trunc = "CheXpert-v1.0-small/train/patient00098/study1/view1_frontal.jpg"
    write_truncated_jpeg(root / trunc)
    rows.append(_chex_row(trunc, Atelectasis="1.0"))
    bad = "CheXpert-v1.0-small/train/patient00097/study1/view1_frontal.jpg"
    write_image(root / bad)
    rows.append(_chex_row(bad, Edema="maybe"))
    rows.append(_chex_row("CheXpert-v1.0-small/train/nopatient/x.jpg"))
    (base / "train.csv").write_text("\n".join(",".join(r) for r in [CHEX_HEADER, *rows]) + "\n")
    valid_rel = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    write_image(root / valid_rel)
    (base / "valid.csv").write_text(
        "\n".join(",".join(r) for r in [CHEX_HEADER, _chex_row(valid_rel, Pleural_Effusion="1.0")]) + "\n"
    )
    return base


def rejects_of(out: Path) -> list[dict]:
    return pq.read_table(out / REJECTS_NAME).to_pylist()


def all_rows(out: Path) -> list[dict]:
    manifest = read_manifest(str(out))
    return [row for split in manifest.counts for row in read_table(str(out), split).to_pylist()]


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_chexpert_uncertainty_policies_and_rejects(tmp_path, policy):
    base = make_chexpert(tmp_path / "src")
    out = tmp_path / "out"
    manifest = convert("chexpert", base, out, ConvertOptions(uncertainty=policy, size=16, seed=1))
    rows = all_rows(out)
    assert len(rows) == 12 * 2 + 1  # both views of 12 patients + the official valid image
    by_id = {r["image_id"]: r for r in rows}
    first = by_id["patient00001_study1_view1_frontal"]
    assert "Cardiomegaly" in first["labels"] and "Pneumonia" not in first["labels"]
    if policy == "ones":
        assert "Edema" in first["labels"] and first["uncertain_labels"] == []
    elif policy == "zeros":
        assert "Edema" not in first["labels"] and first["uncertain_labels"] == []
    else:
        assert "Edema" not in first["labels"] and first["uncertain_labels"] == ["Edema"]
    assert first["patient_id"] == "patient00001"
    assert json.loads(first["attributes"])["view"] == "Frontal"
    assert (first["width"], first["height"]) == (16, 16)
    reasons = {r["source"]: r["reason"] for r in rejects_of(out)}
    assert any("file not found" in r for r in reasons.values())
    assert any("cannot decode image" in r for r in reasons.values())
    assert any("'Edema' has value 'maybe'" in r for r in reasons.values())
    assert any("patientNNNNN" in r for r in reasons.values())
    assert manifest.rejects == 4
    assert sum(c["images"] for c in manifest.counts.values()) == len(rows)


def test_chexpert_counts_exact(tmp_path):
    base = make_chexpert(tmp_path / "src")
    out = tmp_path / "out"
    convert("chexpert", base, out, ConvertOptions(frontal_only=True))
    rows = all_rows(out)
    assert len(rows) == 12 + 1  # frontal views of 12 patients + the official valid image
    assert all(json.loads(r["attributes"])["view"] == "Frontal" for r in rows)
    assert read_manifest(str(out)).options["filtered"] == 12


def test_patient_level_split_has_no_leakage(tmp_path):
    base = make_chexpert(tmp_path / "src")
    out = tmp_path / "out"
    convert(
        "chexpert", base, out, ConvertOptions(seed=5, fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    )
    seen: dict[str, str] = {}
    for row in all_rows(out):
        assert seen.setdefault(row["patient_id"], row["split"]) == row["split"], "patient in two splits"
    assert {"train", "val", "test"} <= set(seen.values())


def test_conversion_is_deterministic_by_seed(tmp_path):
    base = make_chexpert(tmp_path / "src")
    splits = []
    for i, seed in enumerate((7, 7, 8)):
        out = tmp_path / f"out{i}"
        convert("chexpert", base, out, ConvertOptions(seed=seed))
        splits.append({r["image_id"]: r["split"] for r in all_rows(out)})
    assert splits[0] == splits[1]
    assert splits[0] != splits[2]


def test_isic_one_hot_rows_and_lesion_grouping(tmp_path):
    src = tmp_path / "isic"
    header = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
    lines = [header]
    meta = ["image,age_approx,anatom_site_general,lesion_id,sex"]
    for i in range(10):
        name = f"ISIC_{i:07d}"
        write_image(src / "ISIC_2019_Training_Input" / f"{name}.jpg", mode="RGB", seed=i)
        onehot = ["0.0"] * 9
        onehot[i % 3] = "1.0"
        lines.append(",".join([name, *onehot]))
        meta.append(f"{name},55,back,IL_{i // 2:07d},male")
    lines.append("ISIC_0000100," + ",".join(["1.0", "1.0"] + ["0.0"] * 7))  # two classes set
    lines.append("ISIC_0000101," + ",".join(["0.0"] * 9))  # none set
    lines.append("ISIC_0000102," + ",".join(["1.0"] + ["0.0"] * 8))  # image missing
    (src / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    (src / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(meta) + "\n")
    out = tmp_path / "out"
    manifest = convert("isic", src, out, ConvertOptions(size=24))
    rows = all_rows(out)
    assert len(rows) == 10 and manifest.rejects == 3
    reasons = [r["reason"] for r in rejects_of(out)]
    assert any("2 classes set (MEL, NV)" in r for r in reasons)
    assert any("0 classes set" in r for r in reasons)
    assert any("not found" in r for r in reasons)
    by_lesion: dict[str, set[str]] = {}
    for r in rows:
        assert r["patient_id"].startswith("IL_")
        by_lesion.setdefault(r["patient_id"], set()).add(r["split"])
        assert r["modality"] == "derm" and len(r["labels"]) == 1
    assert all(len(splits) == 1 for splits in by_lesion.values())


def test_fundus_aptos_and_eyepacs_layouts(tmp_path):
    aptos = tmp_path / "aptos"
    rows = ["id_code,diagnosis"]
    for i in range(6):
        write_image(aptos / "train_images" / f"a{i:03d}.png", mode="RGB", seed=i)
        rows.append(f"a{i:03d},{i % 5}")
    rows.append("a999,7")
    (aptos / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out_aptos"
    manifest = convert("fundus", aptos, out)
    got = {r["image_id"]: r["labels"] for r in all_rows(out)}
    assert got["a004"] == ["Proliferative DR"] and got["a000"] == ["No DR"]
    assert manifest.rejects == 1 and "unknown DR grade '7'" in rejects_of(out)[0]["reason"]

    eyepacs = tmp_path / "eyepacs"
    rows = ["image,level"]
    for p in range(8):
        for eye in ("left", "right"):
            write_image(eyepacs / "train" / f"{p}_{eye}.jpeg", mode="RGB", seed=p)
            rows.append(f"{p}_{eye},{p % 5}")
    (eyepacs / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out_eyepacs"
    convert("fundus", eyepacs, out, ConvertOptions(fractions={"train": 0.5, "test": 0.5}))
    split_of: dict[str, set[str]] = {}
    for r in all_rows(out):
        split_of.setdefault(r["patient_id"], set()).add(r["split"])
    assert len(split_of) == 8 and all(len(s) == 1 for s in split_of.values())


def test_histopath_class_folders(tmp_path):
    src = tmp_path / "NCT-CRC-HE-100K"
    for cls in ("ADI", "TUM", "LYM"):
        for i in range(3):
            write_image(src / cls / f"{cls}-{i:04d}.tif", mode="RGB", seed=i)
    write_image(src / "FOO" / "FOO-0001.tif", mode="RGB")
    (src / "TUM" / "TUM-broken.tif").write_bytes(b"not an image")
    out = tmp_path / "out"
    manifest = convert("histopath", tmp_path, out)
    rows = all_rows(out)
    assert len(rows) == 9
    assert {r["labels"][0] for r in rows} == {"ADI", "TUM", "LYM"}
    reasons = [r["reason"] for r in rejects_of(out)]
    assert manifest.rejects == 2
    assert any("unknown class folder 'FOO'" in r for r in reasons)
    assert any("cannot decode" in r for r in reasons)


def test_schema_round_trip(tmp_path):
    base = make_chexpert(tmp_path / "src")
    out = tmp_path / "out"
    convert("chexpert", base, out)
    for path in out.glob("*/part-*.parquet"):
        assert pq.read_schema(path).remove_metadata() == IMAGE_SCHEMA.remove_metadata()
        assert pq.read_schema(path).metadata[b"craft_ray.schema_version"] == b"1"


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="source directory not found"):
        convert("isic", tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CheXpert train.csv"):
        convert("chexpert", tmp_path / "empty", tmp_path / "out")
    src = tmp_path / "badcsv"
    src.mkdir()
    (src / "train.csv").write_text("Path,Sex\nx,y\n")
    with pytest.raises(DataError, match=r"missing column\(s\)"):
        convert("chexpert", src, tmp_path / "out")


def test_output_directory_is_never_overwritten(tmp_path):
    base = make_chexpert(tmp_path / "src")
    out = tmp_path / "out"
    convert("chexpert", base, out)
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.parquet"))
    with pytest.raises(DataError, match="already holds a dataset"):
        convert("chexpert", base, out)
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.parquet")) == before


def test_malformed_csv_rows_cost_one_reject_each_not_the_run(tmp_path):
    """A row with fewer or more fields than the header, an unparsable Age and a Latin-1 byte each
    become one reject; every other row converts."""
    base = make_chexpert(tmp_path / "src")
    train = base / "train.csv"
    good = _chex_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    short = ",".join(good[:6])  # 6 of 19 fields
    long = ",".join([*good, "extra"])
    age = good.copy()
    age[2] = "unknown"
    train.write_text(train.read_text() + "\n".join([short, long, ",".join(age)]) + "\n")
    valid_rel = "CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg"
    write_image(tmp_path / "src" / valid_rel)
    latin1 = ",".join(_chex_row(valid_rel)).replace("Female", "F\xe9male").encode("latin-1")
    (base / "valid.csv").write_bytes((base / "valid.csv").read_bytes() + latin1 + b"\n")
    out = tmp_path / "out"
    manifest = convert("chexpert", base, out)
    reasons = {r["source"]: r["reason"] for r in rejects_of(out)}
    n_train = len(train.read_text().splitlines())
    assert reasons[f"train.csv:{n_train - 2}"] == "row has 6 fields, the header has 19"
    assert reasons[f"train.csv:{n_train - 1}"] == "row has 20 fields, the header has 19"
    assert reasons[f"train.csv:{n_train}"] == "column 'Age' has value 'unknown' (expected a number or blank)"
    assert reasons["valid.csv:3"] == "column 'Sex' is not valid UTF-8 (byte 0xe9)"
    assert manifest.rejects == 4 + 4  # the four awkward rows of make_chexpert, and these
    assert len(all_rows(out)) == 12 * 2 + 1


def test_isic_and_fundus_survive_malformed_rows(tmp_path):
    src = tmp_path / "isic"
    header = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
    lines, meta = [header], ["image,age_approx,lesion_id"]
    for i in range(4):
        write_image(src / f"ISIC_{i:07d}.jpg", mode="RGB", seed=i)
        lines.append(f"ISIC_{i:07d}," + ",".join(["1.0"] + ["0.0"] * 8))
        meta.append(f"ISIC_{i:07d},55,IL_{i}")
    lines.append("ISIC_0000009,1.0")
    meta.append("ISIC_0000001,60")  # short metadata row: ignored, its image still converts
    (src / "GroundTruth.csv").write_text("\n".join(lines) + "\n")
    (src / "Metadata.csv").write_bytes(("\n".join(meta) + "\n").encode() + b"ISIC_0000002,\xe9,IL_2\n")
    manifest = convert("isic", src, tmp_path / "out_isic")
    reasons = sorted(r["reason"] for r in rejects_of(tmp_path / "out_isic"))
    assert reasons == [
        "column 'age_approx' is not valid UTF-8 (byte 0xe9)",
        "row has 2 fields, the header has 10",
        "row has 2 fields, the header has 3",
    ]
    assert manifest.rejects == 3 and len(all_rows(tmp_path / "out_isic")) == 4

    fundus = tmp_path / "fundus"
    rows = ["id_code,diagnosis"]
    for i in range(4):
        write_image(fundus / f"a{i}.png", mode="RGB", seed=i)
        rows.append(f"a{i},{i}")
    (fundus / "train.csv").write_text("\n".join([*rows, "a9"]) + "\n")
    (fundus / "notes.csv").write_bytes(b"caf\xe9,x\n")  # another CSV in the tree, not UTF-8
    manifest = convert("fundus", fundus, tmp_path / "out_fundus", ConvertOptions(fractions={"train": 1.0}))
    assert (
        manifest.rejects == 1
        and rejects_of(tmp_path / "out_fundus")[0]["reason"] == "row has 1 fields, the header has 2"
    )


def test_chexpert_valid_csv_is_its_own_split_unless_pooled(tmp_path):
    """The official, radiologist-labelled valid.csv is what CheXpert results are reported on: it
    stays a split of its own ('valid'); --pool-valid puts it into the random splits."""
    base = make_chexpert(tmp_path / "src")
    manifest = convert("chexpert", base, tmp_path / "kept", ConvertOptions(seed=1))
    split_of = {r["image_id"]: r["split"] for r in all_rows(tmp_path / "kept")}
    assert split_of["patient64541_study1_view1_frontal"] == "valid"
    assert manifest.counts["valid"]["images"] == 1 and manifest.options["pool_valid"] is False
    assert "valid" not in {s for i, s in split_of.items() if not i.startswith("patient64541")}
    pooled = convert("chexpert", base, tmp_path / "pooled", ConvertOptions(seed=1, pool_valid=True))
    assert "valid" not in pooled.counts
    assert {r["split"] for r in all_rows(tmp_path / "pooled") if r["patient_id"] == "patient64541"} <= {
        "train",
        "val",
        "test",
    }
