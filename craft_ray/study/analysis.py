"""`craft study analyze`: what the readers' answers say, unblinded with key.parquet.

A reader's answer to a pair is its latest revision. The unit of the preference statistics is the
pair, counted once however many readers answered it: its vote is the answer most of its readers
gave (left, right or none), and a tie (one reader for each side, or as many for a side as for
none) is no preference. Three readers who agree are one vote, not three: their answers are not
independent trials (they judge the same two images). For each two sources compared (two runs, or
real vs a run for control pairs), overall and per label (pairs whose label set has the label):

- the preference rate of the first over the second among decisive pairs (no-preference pairs left
  out), with a 95 % Wilson interval and the two-sided exact sign test against 1/2;
- the no-preference rate among all pairs, with its Wilson interval.

Agreement between readers is over the pairs every reader answered, on the answer itself
(left / right / none): Cohen's kappa for two readers, Fleiss' kappa for more. Time per pair is the
median of the answers' time taken; findings ticked as visibly wrong are counted per source.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from craft_ray.errors import StudyError
from craft_ray.study.layout import StudyDir, StudyManifest
from craft_ray.study.stats import cohen_kappa, fleiss_kappa, sign_test, wilson
from craft_ray.study.store import AnswerStore

ALL = "all labels"


@dataclass
class Judgement:
    reader: str
    pair_id: str
    labels: list[str]
    choice: str  # left | right | none
    left: str  # source names
    right: str
    wrong_left: list[str]
    wrong_right: list[str]
    time_ms: int

    @property
    def winner(self) -> str | None:
        return {"left": self.left, "right": self.right}.get(self.choice)


@dataclass
class StudyAnalysis:
    manifest: StudyManifest
    judgements: list[Judgement]
    preferences: list[dict] = field(default_factory=list)
    agreement: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)
    flags: list[dict] = field(default_factory=list)

    @property
    def readers(self) -> list[str]:
        return sorted({j.reader for j in self.judgements})


def load_judgements(study: StudyDir) -> list[Judgement]:
    pairs = {p["pair_id"]: p for p in study.pairs()}
    key = study.key()
    out = []
    for (reader, pair_id), answer in sorted(AnswerStore(study.answers_path, readonly=True).latest().items()):
        if pair_id not in key or pair_id not in pairs:
            raise StudyError(
                f"{study.answers_path}: answer to pair '{pair_id}', which the study does not have"
            )
        sides = key[pair_id]
        out.append(
            Judgement(
                reader,
                pair_id,
                list(pairs[pair_id]["labels"]),
                answer.choice,
                sides["left_source"],
                sides["right_source"],
                answer.wrong_left,
                answer.wrong_right,
                answer.time_ms,
            )
        )
    return out


def pair_vote(first: str, second: str, answers: list[Judgement]) -> str | None:
    """The pair's one vote: the source most of its readers preferred, None for no preference (most
    readers said none, or a tie)."""
    counts = {
        first: sum(j.winner == first for j in answers),
        second: sum(j.winner == second for j in answers),
    }
    counts[None] = len(answers) - counts[first] - counts[second]
    top = max(counts.values())
    leaders = [k for k, v in counts.items() if v == top]
    return leaders[0] if len(leaders) == 1 else None


def preference_row(first: str, second: str, label: str, judgements: list[Judgement]) -> dict:
    by_pair: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        by_pair[j.pair_id].append(j)
    votes = [pair_vote(first, second, answers) for answers in by_pair.values()]
    wins, losses = votes.count(first), votes.count(second)
    ties = len(votes) - wins - losses
    rate_low, rate_high = wilson(wins, wins + losses)
    none_low, none_high = wilson(ties, len(votes))
    return {
        "first": first,
        "second": second,
        "label": label,
        "pairs": len(votes),
        "answers": len(judgements),
        "first_preferred": wins,
        "second_preferred": losses,
        "no_preference": ties,
        "first_rate": wins / (wins + losses) if wins + losses else float("nan"),
        "first_rate_low": rate_low,
        "first_rate_high": rate_high,
        "sign_test_p": sign_test(wins, losses),
        "no_preference_rate": ties / len(votes),
        "no_preference_low": none_low,
        "no_preference_high": none_high,
    }


def preferences(manifest: StudyManifest, judgements: list[Judgement]) -> list[dict]:
    order = {s.name: i for i, s in enumerate(manifest.sources)}
    groups: dict[tuple[str, str], list[Judgement]] = defaultdict(list)
    for j in judgements:
        groups[tuple(sorted((j.left, j.right), key=lambda s: order.get(s, len(order))))].append(j)
    rows = []
    for (first, second), group in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0]), order.get(kv[0][1]))
    ):
        rows.append(preference_row(first, second, ALL, group))
        for label in manifest.labels:
            subset = [j for j in group if label in j.labels]
            if subset:
                rows.append(preference_row(first, second, label, subset))
    return rows


def agreement(judgements: list[Judgement]) -> dict:
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for j in judgements:
        by_pair[j.pair_id][j.reader] = j.choice
    readers = sorted({j.reader for j in judgements})
    common = sorted(pid for pid, answers in by_pair.items() if len(answers) == len(readers))
    result = {"readers": len(readers), "pairs": len(common), "statistic": None, "kappa": None}
    if len(readers) < 2 or not common:
        return result
    if len(readers) == 2:
        a, b = ([by_pair[pid][r] for pid in common] for r in readers)
        return {**result, "statistic": "Cohen's kappa", "kappa": cohen_kappa(a, b)}
    choices = ("left", "right", "none")
    table = [[list(by_pair[pid].values()).count(c) for c in choices] for pid in common]
    return {**result, "statistic": "Fleiss' kappa", "kappa": fleiss_kappa(table)}


def times(judgements: list[Judgement]) -> dict:
    per_reader: dict[str, list[float]] = defaultdict(list)
    for j in judgements:
        per_reader[j.reader].append(j.time_ms / 1000)
    return {
        "median_s": statistics.median(j.time_ms / 1000 for j in judgements),
        "per_reader_median_s": {r: statistics.median(v) for r, v in sorted(per_reader.items())},
    }


def flags(manifest: StudyManifest, judgements: list[Judgement]) -> list[dict]:
    shown: dict[str, list[list[str]]] = defaultdict(list)
    for j in judgements:
        shown[j.left].append(j.wrong_left)
        shown[j.right].append(j.wrong_right)
    rows = []
    for source in (s.name for s in manifest.sources):
        if source in shown:
            ticks = shown[source]
            flagged = sum(bool(t) for t in ticks)
            rows.append(
                {
                    "source": source,
                    "images_shown": len(ticks),
                    "images_flagged": flagged,
                    "flagged_rate": flagged / len(ticks),
                    "findings_flagged": sum(len(t) for t in ticks),
                }
            )
    return rows


def analyze_study(root: str | Path) -> StudyAnalysis:
    study = StudyDir(root)
    manifest = study.manifest()
    judgements = load_judgements(study)
    if not judgements:
        raise StudyError(f"{root}: no answers yet (readers answer through `craft study serve`)")
    return StudyAnalysis(
        manifest,
        judgements,
        preferences(manifest, judgements),
        agreement(judgements),
        times(judgements),
        flags(manifest, judgements),
    )
