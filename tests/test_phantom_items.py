"""Item-level ground truth and implausible phantoms: `attributes["items"]` and
`attributes["implausible"]` agree with what is drawn, measured on the pixels (never with the
recorded parameters), labels are those of before, and a defect violates exactly its items."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from scipy import ndimage

from craft_ray.data import read_manifest, read_table
from craft_ray.data.images import decode_png
from craft_ray.data.phantoms import (
    GENERATORS,
    derm,
    generate_image,
    make_phantom_dataset,
    patient_of_image,
)
from craft_ray.errors import ConfigError
from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import dataset_for_modality

SEED = 7

# sha256 of json.dumps([labels of images 0..199, seed 0]) made by the generators before items and
# defects existed: the same seed still gives the same labels, image for image.
LABELS_BEFORE = {
    "chest": "e97fdde3131b5eec",
    "derm": "27670e87168f35c2",
    "fundus": "d7fb964759a90e3f",
    "histo": "4adc4e20e6f07654",
}


def pairwise_auroc(scores, truth) -> float:
    """P(score of a positive > score of a negative), ties half: the definition, by brute force."""
    scores, truth = np.asarray(scores, float), np.asarray(truth, bool)
    pos, neg = scores[truth], scores[~truth]
    assert len(pos) and len(neg), "both classes needed"
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


def grid(size):
    return np.mgrid[0:size, 0:size] / size + 0.5 / size


def patient_of(modality, seed, index):
    pid = int(patient_of_image(index + 1, seed)[index])
    return GENERATORS[modality].patient(np.random.default_rng([seed, 1, pid]))


@pytest.mark.parametrize("modality", list(GENERATORS))
def test_labels_are_those_of_before_with_or_without_defects(modality):
    labels = [generate_image(modality, 0, i, 16)[1] for i in range(200)]
    digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:16]
    assert digest == LABELS_BEFORE[modality]
    assert [generate_image(modality, 0, i, 16, implausible=0.5)[1] for i in range(200)] == labels


@pytest.mark.parametrize("modality", list(GENERATORS))
def test_items_are_static_knowledge_ids_with_ground_truth_for_every_image(modality):
    spec = dataset_for_modality(modality)
    kb = load_knowledge()
    known = {i.id for i in kb.all_items()}
    plausibility = {i.id for i in (*kb.anatomy(modality), *kb.realism(modality))}
    keys = None
    for i in range(40):
        _, labels, attrs = generate_image(modality, SEED, i, 32, implausible=0.5)
        items = attrs["items"]
        assert set(items) <= known and plausibility <= set(items)
        assert all(isinstance(v, bool) for v in items.values())
        keys = keys or set(items)
        assert set(items) == keys  # the same items are drawn on every image
    for label in spec.phantom_labels:  # every phantom label has items with ground truth
        assert any(k.startswith(f"{spec.name}:{label}:") for k in keys), label


def test_chest_items_agree_with_the_pixels():
    """Costophrenic angle and lung base brightness, the heart's area and its left border, measured
    at windows placed from the patient's anatomy alone."""
    size, n = 64, 300
    yy, xx = grid(size)
    corner, blunted, base_zone, basal = [], [], [], []
    area, enlarged, gap, border = [], [], [], []
    for i in range(n):
        px, labels, attrs = generate_image("chest", SEED, i, size)
        img, items, pat = px.astype(float), attrs["items"], patient_of("chest", SEED, i)
        rx0, ry, cy, dx, dome = (pat[k] for k in ("lung_rx", "lung_ry", "lung_cy", "lung_dx", "dome_h"))
        for side, sign in (("right", -1), ("left", 1)):
            rx = rx0 * (1 if side == "right" else 0.95)
            lcy = cy - (0.01 if side == "right" else 0.0)  # the liver lifts the right hemidiaphragm
            s = (-ry + np.sqrt(ry**2 + 4 * dome * 0.78 * ry)) / (2 * dome)  # ellipse meets dome
            u, y_angle = np.sqrt(1 - s**2), lcy + ry * s
            fluid = attrs.get("effusion_side") in (side, "both")
            if fluid and not attrs["effusion_dense"]:
                continue  # thin fluid is as bright as a lung crossed by a rib: not a pixel test
            lcx = 0.5 + sign * dx
            window = (np.abs(xx - lcx - sign * (u - 0.12) * rx) < 0.015) & (
                np.abs(yy - y_angle + 0.025) < 0.015
            )
            corner.append(img[window].mean())
            blunted.append(fluid and items["chexpert:Pleural Effusion:1"])
            above_dome = lcy + 0.78 * ry - 0.91 * dome - 0.012
            window = (np.abs(xx - lcx - sign * 0.3 * rx) < 0.012) & (np.abs(yy - above_dome) < 0.012)
            base_zone.append(img[window].mean())
            basal.append(fluid and items["chexpert:Pleural Effusion:0"])
        if "effusion_side" in attrs or "opacity_count" in attrs:
            continue  # fluid and opacities are as dense as the heart
        lung = np.median(img[(np.abs(yy - cy + 0.1) < 0.03) & (np.abs(xx - 0.5 + dx) < 0.03)])
        tissue = np.median(img[yy > cy + 0.85 * ry + 0.05])
        bright = img > 0.5 * (lung + tissue)
        box = (yy > cy) & (yy < cy + 0.78 * ry - dome) & (np.abs(xx - 0.5) < dx + 0.6 * rx0)
        area.append(bright[box].mean())
        enlarged.append(items["chexpert:Cardiomegaly:0"])
        if "Cardiomegaly" in labels:  # the heart's left border: the bright run right of the midline
            edge = 0
            for y in np.flatnonzero(box.any(axis=1)):
                r = size // 2
                while r < size - 1 and (bright & box)[y, r + 1]:
                    r += 1
                edge = max(edge, r)
            gap.append((0.5 + dx + 0.95 * rx0) * size - edge)
            border.append(items["chexpert:Cardiomegaly:1"])
    assert pairwise_auroc(corner, blunted) > 0.95  # fluid fills the angle
    assert pairwise_auroc(base_zone, basal) > 0.85  # fluid above the dome
    assert pairwise_auroc(area, enlarged) > 0.98  # cardiothoracic ratio > 0.5
    assert pairwise_auroc(-np.array(gap), border) > 0.9  # left border near the chest wall
    assert 0.1 < np.mean(border) < 0.9 and 0.1 < np.mean(blunted) < 0.5


def test_derm_fundus_histo_items_agree_with_the_pixels():
    size, n = 64, 200
    yy, xx = grid(size)
    diameter, large = [], []
    for i in range(n):
        px, _, attrs = generate_image("derm", SEED, i, size)
        skin = np.asarray(patient_of("derm", SEED, i)["skin"])
        dark = (1 - px.astype(float).mean(-1) / 255 / skin.mean() > 0.25) & (
            np.hypot(xx - 0.5, yy - 0.5) < 0.42
        )
        parts, count = ndimage.label(dark)
        if count:
            biggest = ndimage.binary_fill_holes(
                parts == 1 + int(np.argmax(ndimage.sum(dark, parts, range(1, count + 1))))
            )
            diameter.append(2 * np.sqrt(biggest.sum() / np.pi) / size * derm.FIELD_MM)
            large.append(attrs["items"]["isic:MEL:3"])
    assert pairwise_auroc(diameter, large) > 0.97  # over 6 mm

    yellow, exudates = [], []
    for i in range(n):
        px, _, attrs = generate_image("fundus", SEED, i, size)
        img = px.astype(float) / 255
        yellow.append(((img[..., 0] > 0.7) & (img[..., 1] > 0.55) & (img[..., 2] < 0.5 * img[..., 1])).sum())
        exudates.append(attrs["items"]["fundus:Moderate NPDR:1"])
    assert pairwise_auroc(yellow, exudates) > 0.88  # hard exudates present

    purple, scant = [], []
    for i in range(n):
        px, _, attrs = generate_image("histo", SEED, i, size)
        img = px.astype(float) / 255
        purple.append(((img.mean(-1) < 0.45) & (img[..., 2] > img[..., 1])).mean())
        scant.append(attrs["items"]["histopath:LYM:2"])
    assert pairwise_auroc(purple, scant) > 0.95  # nuclei cover the patch: scant cytoplasm


def _chest_defect_shows(kind, img, twin):
    size = twin.shape[0]
    yy, xx = grid(size)
    grey = img.mean(-1) if img.ndim == 3 else img.astype(float)
    diff = grey - twin.astype(float)
    if kind == "colour":
        return img.ndim == 3 and (img.max(-1).astype(float) - img.min(-1)).mean() > 10
    if kind == "laterality":  # the heart mirrored: density gained on the image's left (the patient's
        # right), lost on its right unless fluid there is as dense as the heart was
        gained, lost = diff > 30, diff < -30
        moved = (gained.sum() > 20 and xx[gained].mean() < 0.5) or (lost.sum() > 20 and xx[lost].mean() > 0.5)
        return moved and not (gained.sum() > 20 and xx[gained].mean() > 0.5)
    if kind == "duplicated":  # a lung-dark field below the diaphragm
        darker = diff < -40
        return darker.sum() > 0.01 * size**2 and yy[darker].mean() > 0.75
    if kind == "missing":  # the clavicles gone: density lost in the upper chest, on both sides
        lost = (diff < -8) & (yy < 0.25)
        return (lost & (xx < 0.45)).sum() > 8 and (lost & (xx > 0.55)).sum() > 8
    if kind == "half":  # ribs gone on one side, heavier on the other
        lost, gained = diff < -8, diff > 8
        lost_left, lost_right = (lost & (xx < 0.45)).sum(), (lost & (xx > 0.55)).sum()
        gained_left, gained_right = (gained & (xx < 0.45)).sum(), (gained & (xx > 0.55)).sum()
        left_gone = lost_left > 5 * max(lost_right, 1) and gained_right > 5 * max(gained_left, 1)
        right_gone = lost_right > 5 * max(lost_left, 1) and gained_left > 5 * max(gained_right, 1)
        return left_gone or right_gone
    if kind == "texture":  # dark spots confined to a square
        spots = diff < -20
        rows, cols = np.flatnonzero(spots.any(1)), np.flatnonzero(spots.any(0))
        return spots.sum() > 15 and (np.ptp(rows) + 1) * (np.ptp(cols) + 1) < 0.3 * size**2
    raise AssertionError(kind)


def _derm_defect_shows(kind, img, twin):
    img, twin = img.astype(float), twin.astype(float)
    diff = img.mean(-1) - twin.mean(-1)
    if kind == "colour":  # saturated hues outside red-orange-yellow: neither skin nor pigment

        def unnatural(x):
            hsv = rgb_to_hsv(x / 255)
            return (hsv[..., 1] > 0.5) & (hsv[..., 2] > 0.25) & (hsv[..., 0] > 0.2) & (hsv[..., 0] < 0.92)

        return unnatural(img).sum() > 20 and unnatural(twin).sum() == 0
    if kind == "duplicated":  # new pigment away from the lesion, with skin between: a second lesion,
        from scipy import ndimage  # not a lobe of the first

        changed = np.abs(img - twin).max(-1) > 30
        yy, xx = grid(img.shape[0])
        skin = np.median(twin.mean(-1))
        dark, dark_img = twin.mean(-1) < skin - 30, img.mean(-1) < skin - 30
        away = np.hypot(yy[changed].mean() - yy[dark].mean(), xx[changed].mean() - xx[dark].mean())
        dark, dark_img = ndimage.binary_opening(dark), ndimage.binary_opening(dark_img)  # hairs out
        parts, _ = ndimage.label(dark)  # the lesion: the twin's largest pigment clear of the border
        border = set(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]]).tolist())
        inner = [k for k in range(1, parts.max() + 1) if k not in border]
        lesion = parts == max(inner, key=lambda k: (parts == k).sum())
        pigment, _ = ndimage.label(dark_img & ~(dark & ~lesion))  # the field stop left out
        copy_parts = set(np.unique(pigment[dark_img & ~dark])) - {0}
        separate = bool(copy_parts - set(np.unique(pigment[lesion])))
        return changed.sum() > 10 and away > 0.08 and separate
    if kind == "half":  # pigment removed: skin shows where lesion was
        return (diff > 25).sum() > 5
    if kind == "texture":  # red strokes: redder than skin, in a square
        changed = np.abs(img - twin).max(-1) > 30
        return changed.sum() > 10 and (img[changed][:, 0] > img[changed][:, 1] + 30).mean() > 0.5
    raise AssertionError(kind)


def _fundus_defect_shows(kind, img, twin):
    img, twin = img.astype(float), twin.astype(float)

    def pale(x):  # the optic disc's pale yellow (exudates are far smaller, cotton-wool spots whiter)
        return ((x[..., 0] > 190) & (x[..., 1] > 140) & (x[..., 2] < 190)).sum()

    if kind == "duplicated":  # a second disc's worth of pale area
        return pale(img) >= max(1.5 * pale(twin), pale(twin) + 8)
    if kind == "missing":
        return pale(img) <= min(0.5 * pale(twin), pale(twin) - 8)
    if kind == "colour":
        return (img.max(-1) - img.min(-1)).max() <= 3 and (twin.max(-1) - twin.min(-1)).max() > 50
    if kind == "laterality":  # the dark macula moved: brighter where it was, darker elsewhere
        diff = img.mean(-1) - twin.mean(-1)
        return (diff > 12).sum() > 5 and (diff < -12).sum() > 5
    if kind == "half":  # the lower vessels gone: brighter below the disc only
        size = img.shape[0]
        gained = img.mean(-1) - twin.mean(-1) > 15
        lower, upper = gained[size // 2 + 4 :].sum(), gained[: size // 2 - 4].sum()
        return lower > 10 and lower > 5 * upper
    if kind == "texture":  # purple nuclei on an orange retina: blue where the retina has none
        return (img[..., 2] - twin[..., 2] > 25).sum() > 15
    raise AssertionError(kind)


def _histo_defect_shows(kind, img, twin):
    img, twin = img.astype(float), twin.astype(float)
    size = img.shape[0]
    if kind == "colour":  # the mean colour is no longer pink-purple (red and blue alike, above green)

        def h_and_e(x):
            r, g, b = x.reshape(-1, 3).mean(0)
            return r > g and b > g and 0.75 < b / r < 1.35

        return h_and_e(twin) and not h_and_e(img)
    if kind == "texture":  # a grey square: no chroma where H&E always has some

        def grey(x):
            return ((x.max(-1) - x.min(-1)) < 8).mean()

        return grey(img) > grey(twin) + 0.1
    if kind == "half":  # half the patch replaced by one flat colour
        changed = np.abs(img - twin).max(-1) > 5
        return 0.2 < changed.mean() < 0.8
    if kind == "duplicated":  # one square changed: a copy of another square of the patch under other
        # stain and exposure (log intensities correlate ~1, where the twin repeats nothing), with
        # an abrupt seam (the step across its border well above the twin's at the same pixels)
        changed = np.abs(img - twin).max(-1) > 3
        ys, xs = np.nonzero(changed)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        side = y1 - y0
        if side != x1 - x0 or side < int(0.3 * size) - 1 or changed[y0:y1, x0:x1].mean() < 0.95:
            return False

        def best_repeat(x):  # highest correlation of the square's log intensity with one apart
            log = -np.log(np.clip(x, 1, None) / 255).mean(-1)
            tile = log[y0:y1, x0:x1] - log[y0:y1, x0:x1].mean()
            best = -1.0
            for a in range(size - side + 1):
                for b in range(size - side + 1):
                    if max(abs(a - y0), abs(b - x0)) >= side:
                        other = log[a : a + side, b : b + side] - log[a : a + side, b : b + side].mean()
                        best = max(best, (tile * other).sum() / np.sqrt((tile**2).sum() * (other**2).sum()))
            return best

        def seam_step(x):  # mean step between the square's border pixels and their outside neighbours
            steps = []
            if y0 > 0:
                steps.append(np.abs(x[y0, x0:x1] - x[y0 - 1, x0:x1]))
            if y1 < size:
                steps.append(np.abs(x[y1 - 1, x0:x1] - x[y1, x0:x1]))
            if x0 > 0:
                steps.append(np.abs(x[y0:y1, x0] - x[y0:y1, x0 - 1]))
            if x1 < size:
                steps.append(np.abs(x[y0:y1, x1 - 1] - x[y0:y1, x1]))
            return np.concatenate(steps).mean()

        return best_repeat(img) > 0.99 and best_repeat(twin) < 0.9 and seam_step(img) > 1.5 * seam_step(twin)
    raise AssertionError(kind)


# a misplaced organ changes what its findings' items read: a heart on the patient's right is not
# near the left chest wall; lesions at the macula are judged where the macula is drawn
SIDE_EFFECTS = {
    ("chest", "laterality"): {"chexpert:Cardiomegaly:1"},
    ("fundus", "laterality"): {"fundus:No DR:3"},
}
SHOWS = {
    "chest": _chest_defect_shows,
    "derm": _derm_defect_shows,
    "fundus": _fundus_defect_shows,
    "histo": _histo_defect_shows,
}


@pytest.mark.parametrize("modality", list(GENERATORS))
def test_implausible_images_violate_exactly_the_recorded_items(modality):
    gen = GENERATORS[modality]
    seen = set()
    for i in range(36):
        img, labels, attrs = generate_image(modality, SEED, i, 64, implausible=1.0)
        twin, twin_labels, twin_attrs = generate_image(modality, SEED, i, 64)
        defect = attrs["implausible"]
        kind = defect["defect"]
        seen.add(kind)
        assert "implausible" not in twin_attrs and labels == twin_labels
        assert defect["violates"] == sorted(gen.DEFECTS[kind])
        items, twin_items = attrs["items"], twin_attrs["items"]
        changed = {k for k in items if items[k] != twin_items[k]}
        violated = set(defect["violates"])
        assert violated <= changed <= violated | SIDE_EFFECTS.get((modality, kind), set()), (i, kind)
        assert not any(items[k] for k in violated)
        if modality == "fundus" and kind in ("duplicated", "missing") and attrs["neovascularisation"]:
            continue  # new vessels on the disc hide its pallor at 64 px: no pixel test for the disc
        assert SHOWS[modality](kind, img, twin), (i, kind)
    assert seen == set(gen.DEFECTS)


def test_implausible_share_is_nested_deterministic_and_stored(tmp_path):
    few = [generate_image("chest", 3, i, 16, implausible=0.3)[2].get("implausible") for i in range(200)]
    many = [generate_image("chest", 3, i, 16, implausible=0.6)[2].get("implausible") for i in range(200)]
    assert all(m == f for f, m in zip(few, many, strict=True) if f)  # same defect, same images
    assert 40 <= sum(f is not None for f in few) < sum(m is not None for m in many) <= 150
    for i in range(200):
        if few[i] is None:
            assert np.array_equal(
                generate_image("chest", 3, i, 16, implausible=0.3)[0], generate_image("chest", 3, i, 16)[0]
            )

    a = make_phantom_dataset("chest", 40, tmp_path / "a", 16, seed=3, implausible=0.5)
    make_phantom_dataset("chest", 40, tmp_path / "b", 16, seed=3, implausible=0.5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert a.options["implausible"] == 0.5
    rows = [r for s in a.counts for r in read_table(str(tmp_path / "a"), s).to_pylist()]
    for row in rows:
        attrs = json.loads(row["attributes"])
        colour = attrs.get("implausible", {}).get("defect") == "colour"
        assert decode_png(row["image"]).shape[-1] == (3 if colour else 1)  # a colour cast is kept
    assert sum(a.options["defects"].values()) == sum(
        "implausible" in json.loads(r["attributes"]) for r in rows
    )
    make_phantom_dataset("chest", 8, tmp_path / "c", 16, fractions={"train": 1.0})
    assert "implausible" not in read_manifest(str(tmp_path / "c")).options  # a plausible manifest as before


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_bad_implausible_share_is_refused_before_any_work(tmp_path, share):
    with pytest.raises(ConfigError, match="--implausible must be a share between 0 and 1"):
        make_phantom_dataset("chest", 8, tmp_path / "x", 16, implausible=share)
    with pytest.raises(ConfigError, match="--implausible"):
        generate_image("chest", 0, 0, 16, implausible=share)
    assert not (tmp_path / "x").exists()


def test_cli_implausible_option(tmp_path, craft_in_process):
    bad = craft_in_process(
        "data", "phantom", "--modality", "chest", "--out", str(tmp_path / "x"), "--implausible", "2"
    )
    assert bad.returncode == 2 and not (tmp_path / "x").exists()
    assert bad.stderr.strip().splitlines() == [
        "error: --implausible must be a share between 0 and 1, got 2.0"
    ]
    ok = craft_in_process(
        "data",
        "phantom",
        "--modality",
        "fundus",
        "--out",
        str(tmp_path / "f"),
        "--n",
        "30",
        "--size",
        "16",
        "--implausible",
        "0.25",
    )
    assert ok.returncode == 0, ok.stderr
    rows = [r for s in ("train", "val", "test") for r in read_table(str(tmp_path / "f"), s).to_pylist()]
    implausible = [json.loads(r["attributes"]).get("implausible") for r in rows]
    assert 0 < sum(x is not None for x in implausible) < 30
    assert "implausible" in ok.stdout


def test_a_repeated_histology_square_lies_apart_from_its_source_inside_the_patch():
    """Every draw, wherever the source falls (a centred one too): no overlap, inside the patch."""
    from craft_ray.data.phantoms.histo import _two_squares_apart

    rng = np.random.default_rng(0)
    for size in (16, 33, 64, 96):
        for _ in range(3000):
            (sy, sx), (dy, dx), side = _two_squares_apart(rng, size)
            assert 0.3 * size - 1 <= side <= 0.42 * size
            assert min(sy, sx, dy, dx) >= 0 and max(sy, sx, dy, dx) + side <= size
            assert max(abs(dy - sy), abs(dx - sx)) >= side, (size, sy, sx, dy, dx, side)
