"""Reader-study analysis on constructed answers whose preference rates and kappa are known by hand."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from craft_ray.errors import StudyError
from craft_ray.study.analysis import ALL, analyze_study
from craft_ray.study.layout import (
    KEY,
    KEY_SCHEMA,
    PAIRS,
    PAIRS_SCHEMA,
    Source,
    StudyManifest,
    write_manifest,
    write_table,
)
from craft_ray.study.stats import cohen_kappa, fleiss_kappa, sign_test, wilson
from craft_ray.study.store import AnswerStore

ROOT = Path(__file__).resolve().parents[1]
Z = 1.959963984540054  # the 97.5 % normal quantile


def hand_wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


def hand_sign_p(wins: int, losses: int) -> float:
    n, k = wins + losses, min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_statistics_match_hand_formulas_and_textbook_examples():
    for k, n in [(11, 17), (0, 9), (9, 9), (3, 20)]:
        assert wilson(k, n) == pytest.approx(hand_wilson(k, n), abs=1e-9)
    assert all(math.isnan(x) for x in wilson(0, 0))
    assert sign_test(11, 6) == pytest.approx(hand_sign_p(11, 6)) and sign_test(11, 6) > 0.05
    assert sign_test(15, 1) == pytest.approx(2 * 17 / 2**16)  # P(X <= 1 | 16, 1/2) = 17 / 2^16, two-sided
    # Cohen's kappa, the textbook 2x2 example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    # Fleiss' kappa, the textbook example (10 subjects, 14 raters, 5 categories): 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 0]])  # unequal raters per item


def make_study(root: Path, pairs: list[tuple[list[str], str, str]], readers: list[str]) -> Path:
    """A study directory with pairs (labels, left source, right source) and no images: the analysis
    reads only the manifest, the pairs, the key and the answers."""
    (root / "images").mkdir(parents=True)
    ids = [f"p{i:04d}" for i in range(1, len(pairs) + 1)]
    write_table(
        root / PAIRS,
        [
            {"pair_id": pid, "labels": labels, "seed": i, "left_image": f"l{i}", "right_image": f"r{i}"}
            for i, (pid, (labels, _, _)) in enumerate(zip(ids, pairs, strict=True))
        ],
        PAIRS_SCHEMA,
    )
    write_table(
        root / KEY,
        [
            {"pair_id": pid, "kind": "generated", "left_source": left, "right_source": right}
            for pid, (_, left, right) in zip(ids, pairs, strict=True)
        ],
        KEY_SCHEMA,
    )
    write_manifest(
        root,
        StudyManifest(
            dataset="chexpert",
            data_uri="-",
            split="test",
            labels=["Cardiomegaly", "Pleural Effusion"],
            n=len(pairs),
            seed=0,
            pairs=len(pairs),
            sources=[Source(name="alpha", method="craft"), Source(name="beta", method="lora_sft")],
            readers=readers,
        ),
    )
    return root


def side_of(winner: str, left: str) -> str:
    return "none" if winner == "none" else ("left" if winner == left else "right")


@pytest.fixture
def preference_study(tmp_path) -> Path:
    """One reader, 20 pairs alternating sides. Cardiomegaly: alpha 8, beta 1, none 1;
    Pleural Effusion: alpha 3, beta 5, none 2. Overall alpha 11 / beta 6 / none 3."""
    outcomes = {
        "Cardiomegaly": ["alpha"] * 8 + ["beta"] + ["none"],
        "Pleural Effusion": ["alpha"] * 3 + ["beta"] * 5 + ["none"] * 2,
    }
    pairs, winners = [], []
    for label, results in outcomes.items():
        for i, winner in enumerate(results):
            left, right = ("alpha", "beta") if i % 2 == 0 else ("beta", "alpha")
            pairs.append(([label], left, right))
            winners.append(winner)
    root = make_study(tmp_path / "study", pairs, ["r1"])
    store = AnswerStore(root / "answers.sqlite")
    for i, ((_, left, _), winner) in enumerate(zip(pairs, winners, strict=True), start=1):
        if i == 1:  # first answered the other way, then changed: only the latest revision counts
            store.add("r1", "p0001", "right", [], [], 500)
            store.add("r1", "p0001", side_of(winner, left), [], [], 700, change=True)
            continue
        # a finding ticked wrong in the losing (left, beta) image of pairs 2 and 4
        wrong = ["chexpert:Cardiomegaly:0"] if winner == "alpha" and left == "beta" and i < 5 else []
        store.add("r1", f"p{i:04d}", side_of(winner, left), wrong, [], 1000 * i)
    return root


def test_preference_rates_cis_and_times_on_known_answers(preference_study):
    analysis = analyze_study(preference_study)
    rows = {r["label"]: r for r in analysis.preferences}
    assert set(rows) == {ALL, "Cardiomegaly", "Pleural Effusion"}
    overall = rows[ALL]
    assert (overall["first"], overall["second"]) == ("alpha", "beta")
    assert (overall["first_preferred"], overall["second_preferred"], overall["no_preference"]) == (11, 6, 3)
    assert overall["first_rate"] == pytest.approx(11 / 17)
    assert (overall["first_rate_low"], overall["first_rate_high"]) == pytest.approx(hand_wilson(11, 17))
    assert overall["sign_test_p"] == pytest.approx(hand_sign_p(11, 6))
    assert overall["no_preference_rate"] == pytest.approx(3 / 20)
    assert (overall["no_preference_low"], overall["no_preference_high"]) == pytest.approx(hand_wilson(3, 20))
    cardio, effusion = rows["Cardiomegaly"], rows["Pleural Effusion"]
    assert cardio["first_rate"] == pytest.approx(8 / 9) and cardio["sign_test_p"] == pytest.approx(
        hand_sign_p(8, 1)
    )
    assert effusion["first_rate"] == pytest.approx(3 / 8) and effusion["no_preference_rate"] == pytest.approx(
        0.2
    )
    assert analysis.agreement["kappa"] is None  # one reader
    # times: pair 1 took 0.7 s (its latest revision), pairs 2..20 took i seconds -> median of {0.7, 2..20} = 10.5
    assert analysis.times["median_s"] == pytest.approx(10.5)
    flagged = {f["source"]: f for f in analysis.flags}
    assert flagged["beta"]["images_flagged"] == 2 and flagged["alpha"]["images_flagged"] == 0
    assert flagged["beta"]["images_shown"] == 20 and flagged["beta"]["findings_flagged"] == 2


def test_readers_who_agree_count_each_pair_once(preference_study, tmp_path):
    """Three readers giving the one reader's answers: the same pairs, votes, rates and sign test
    (counting answers would make 33 of 51 and p = 0.049 out of 11 of 17 and p = 0.33)."""
    one = {r["label"]: r for r in analyze_study(preference_study).preferences}
    root = tmp_path / "three"
    shutil.copytree(preference_study, root)
    store = AnswerStore(root / "answers.sqlite")
    for (_, pair_id), answer in (
        AnswerStore(preference_study / "answers.sqlite", readonly=True).latest().items()
    ):
        for reader in ("r2", "r3"):
            store.add(reader, pair_id, answer.choice, [], [], answer.time_ms)
    three = analyze_study(root)
    assert three.readers == ["r1", "r2", "r3"] and len(three.judgements) == 60
    keys = ("pairs", "first_preferred", "second_preferred", "no_preference", "first_rate", "sign_test_p")
    rows = {r["label"]: r for r in three.preferences}
    assert set(rows) == set(one)
    for label, row in one.items():
        assert {k: rows[label][k] for k in keys} == {k: row[k] for k in keys}
        assert rows[label]["answers"] == 3 * row["answers"]
    overall = next(r for r in three.preferences if r["label"] == ALL)
    assert (overall["pairs"], overall["first_preferred"], overall["second_preferred"]) == (20, 11, 6)
    assert overall["sign_test_p"] == pytest.approx(hand_sign_p(11, 6))
    assert hand_sign_p(33, 18) < 0.05 < hand_sign_p(11, 6)  # what counting answers would claim
    assert three.agreement["kappa"] == pytest.approx(1.0)


def test_a_pair_votes_with_the_majority_of_its_readers_and_a_tie_is_no_preference(tmp_path):
    # four pairs (alpha left), three readers: 2 alpha + 1 none -> alpha; 1 alpha + 1 beta + 1 none
    # -> tie; 2 none + 1 beta -> none; 2 beta + 1 alpha -> beta
    answers = [
        ("left", "left", "none"),
        ("left", "right", "none"),
        ("none", "none", "right"),
        ("right", "right", "left"),
    ]
    root = make_study(tmp_path / "s", [(["Cardiomegaly"], "alpha", "beta")] * 4, ["r1", "r2", "r3"])
    store = AnswerStore(root / "answers.sqlite")
    for i, triple in enumerate(answers, start=1):
        for reader, choice in zip(("r1", "r2", "r3"), triple, strict=True):
            store.add(reader, f"p{i:04d}", choice, [], [], 1000)
    overall = next(r for r in analyze_study(root).preferences if r["label"] == ALL)
    assert (overall["pairs"], overall["answers"]) == (4, 12)
    assert (overall["first_preferred"], overall["second_preferred"], overall["no_preference"]) == (1, 1, 2)
    assert overall["sign_test_p"] == pytest.approx(1.0) and overall["no_preference_rate"] == 0.5
    # two readers split between the sides: no preference, not one vote each
    root = make_study(tmp_path / "t", [(["Cardiomegaly"], "alpha", "beta")], ["r1", "r2"])
    store = AnswerStore(root / "answers.sqlite")
    store.add("r1", "p0001", "left", [], [], 1000)
    store.add("r2", "p0001", "right", [], [], 1000)
    row = analyze_study(root).preferences[0]
    assert (row["first_preferred"], row["second_preferred"], row["no_preference"]) == (0, 0, 1)


def test_an_answer_to_a_pair_the_study_lacks_is_an_error(tmp_path):
    root = make_study(tmp_path / "s", [(["Cardiomegaly"], "alpha", "beta")], ["r1"])
    AnswerStore(root / "answers.sqlite").add("r1", "p0099", "left", [], [], 1000)
    with pytest.raises(StudyError, match="p0099"):
        analyze_study(root)


def test_cohen_and_fleiss_kappa_through_the_analysis(tmp_path):
    pairs = [(["Cardiomegaly"], "alpha", "beta")] * 50
    root = make_study(tmp_path / "k2", pairs, ["r1", "r2"])
    store = AnswerStore(root / "answers.sqlite")
    r1 = ["left"] * 25 + ["right"] * 25
    r2 = ["left"] * 20 + ["right"] * 5 + ["left"] * 10 + ["right"] * 15
    for i, (a, b) in enumerate(zip(r1, r2, strict=True), start=1):
        store.add("r1", f"p{i:04d}", a, [], [], 1000)
        store.add("r2", f"p{i:04d}", b, [], [], 1000)
    agreement = analyze_study(root).agreement
    assert agreement["statistic"] == "Cohen's kappa" and agreement["pairs"] == 50
    assert agreement["kappa"] == pytest.approx(0.4)

    # three readers, four pairs: counts (left, right, none) per pair (3,0,0), (2,1,0), (0,2,1), (0,0,3)
    # P_i = 1, 1/3, 1/3, 1 -> mean 2/3; p_j = 5/12, 3/12, 4/12 -> P_e = 50/144; kappa = 23/47
    root = make_study(tmp_path / "k3", [(["Cardiomegaly"], "alpha", "beta")] * 5, ["r1", "r2", "r3"])
    store = AnswerStore(root / "answers.sqlite")
    answers = [("left", "left", "left"), ("left", "left", "right"), ("right", "right", "none"), ("none",) * 3]
    for i, triple in enumerate(answers, start=1):
        for reader, choice in zip(("r1", "r2", "r3"), triple, strict=True):
            store.add(reader, f"p{i:04d}", choice, [], [], 1000)
    store.add("r1", "p0005", "left", [], [], 1000)  # answered by one reader only: not in the kappa
    agreement = analyze_study(root).agreement
    assert agreement["statistic"] == "Fleiss' kappa" and agreement["pairs"] == 4
    assert agreement["kappa"] == pytest.approx(23 / 47)


def test_analyze_cli_writes_markdown_and_chart(preference_study, tmp_path):
    out = tmp_path / "analysis"

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "craft_ray.cli",
                "study",
                "analyze",
                "--study",
                str(preference_study),
                "--out",
                str(out),
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    result = run()
    assert result.returncode == 0, result.stderr
    markdown = (out / "study.md").read_text()
    assert "| alpha vs beta | all labels | 20 | 20 | 11 | 6 | 3 | 65% [41%, 83%] |" in markdown
    with Image.open(out / "preferences.png") as chart:
        assert chart.format == "PNG" and chart.width > 600 and chart.height > 150
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers"] == 20 and summary["readers"] == ["r1"]
    again = run()
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert run("--overwrite").returncode == 0
