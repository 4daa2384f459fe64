"""Where an evaluation's results live, and the rules that keep them whole.

    <run>/eval/                 a finished evaluation (only ever appears complete)
      eval.json                 what was asked (request) and which model answered (source)
      scores.parquet            one row per generated image (no image bytes)
      images/                   the generated images as a canonical dataset (split `generated`)
      metrics.json              the metric tables; `baselines` holds comparisons, one per baseline
      calibration.json          thresholds and realism reference used (copied or made)
      classifier/               the out-of-family classifier used (copied, loaded or trained)
      memorisation_pairs.png    the most similar generated / real training pairs
    <run>/eval.partial/         an evaluation under way: the same files, plus shards/ of finished
                                images; a rerun of the same command continues it

The finished directory replaces an older one only with `--overwrite`, in one rename at the end.
eval.json's identity holds digests of every input (data, calibration, models, plan; see
`craft_ray.evaluation.runner.request_identity`): an evaluation is reused or continued only when
all are the same, and each shard records its plan's digest, so shards of another plan are never
mixed in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from craft_ray.errors import EvaluationError

SETTINGS = "eval.json"
SHARDS = "shards"
SCORES = "scores.parquet"
IMAGES = "images"
METRICS = "metrics.json"
CALIBRATION = "calibration.json"
CLASSIFIER = "classifier"
PAIRS_PNG = "memorisation_pairs.png"


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What changed between two identities, by dotted key (nested dicts compared key by key)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


PLAN_KEY = b"craft_ray.plan"  # a shard's parquet metadata: the digest of the plan it was generated for


class EvalStore:
    def __init__(self, final: str | Path):
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + ".partial")
        # whether artefacts cached here (calibration, classifier) belong to the evaluation asked
        # for: not when an evaluation with other settings is being replaced (--overwrite)
        self.cache_valid = True

    def _settings(self, directory: Path) -> dict[str, Any] | None:
        path = directory / SETTINGS
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def state(self, identity: dict[str, Any], overwrite: bool, replace_hint: str) -> str:
        """'complete' (nothing to do), 'partial' (continue) or 'new'. A finished or unfinished
        evaluation made with other settings is an error unless `overwrite`; the error ends with
        `replace_hint`, how the caller's user replaces it."""
        for directory, kind in ((self.final, "complete"), (self.partial, "partial")):
            if not directory.exists():
                continue
            settings = self._settings(directory)
            if settings is not None and settings.get("identity") == identity:
                if kind == "complete" and not (directory / METRICS).is_file():
                    continue  # promoted without metrics: cannot happen, but then redo from partial
                return kind
            if overwrite:
                self.cache_valid = False
                continue
            what = "an evaluation" if kind == "complete" else "an unfinished evaluation"
            diff = _differences((settings or {}).get("identity", {}), identity)
            raise EvaluationError(
                f"{directory} holds {what} with other settings ({'; '.join(diff[:4]) or 'unreadable eval.json'}); "
                f"{replace_hint}"
            )
        return "new"

    def start(self, settings: dict[str, Any], fresh: bool) -> Path:
        """The partial directory, emptied when `fresh`, with eval.json written."""
        if fresh and self.partial.exists():
            shutil.rmtree(self.partial)
        (self.partial / SHARDS).mkdir(parents=True, exist_ok=True)
        (self.partial / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
        return self.partial

    def shard_path(self, shard: int) -> Path:
        return self.partial / SHARDS / f"shard-{shard:05d}.parquet"

    def done_shards(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in (self.partial / SHARDS).glob("shard-*.parquet")}

    def check_shards(self, plan_digest: str) -> None:
        """Every finished shard was generated for this plan: shards of another are never mixed in."""
        import pyarrow.parquet as pq

        for shard in sorted(self.done_shards()):
            path = self.shard_path(shard)
            metadata = pq.read_schema(path).metadata or {}
            found = metadata.get(PLAN_KEY, b"none").decode()
            if found != plan_digest:
                raise EvaluationError(
                    f"{path} was generated for another plan (digest {found}, this evaluation's plan is "
                    f"{plan_digest}): its images would be mixed with others; pass --overwrite to start again"
                )

    def promote(self) -> Path:
        """partial -> final in one rename (an older final, allowed by --overwrite, goes first)."""
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            self.final.rename(old)
            self.partial.rename(self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.partial.rename(self.final)
        shutil.rmtree(self.final / SHARDS, ignore_errors=True)  # the images now live in images/
        return self.final

    def existing(self, name: str) -> Path | None:
        """A cached artefact (calibration, classifier) of this evaluation, finished or under way
        (none while an evaluation with other settings is being replaced)."""
        if not self.cache_valid:
            return None
        for directory in (self.final, self.partial):
            if (directory / name).exists():
                return directory / name
        return None
