"""Early stopping per dataset x method: one ASHA scheduler (Ray Tune's) for each group of trials.

ASHA compares a trial with the others that reached the same rung. Across datasets or methods that
comparison means nothing (a histopathology CAS is not on a chest radiograph's scale, and a
baseline is not a worse reward-weight setting of CRAFT), so each group gets its own ASHA. Time is
the training step (`step` in the trial's reports); results without the metric (training
progress) are ignored by ASHA.

**Memory across restarts.** Tune does not save a scheduler's state: a restored sweep starts with
the scheduler as it was built, so without help ASHA would forget the rungs of every trial that
finished or was stopped before the interruption, and stop (or keep) the remaining trials
differently than an uninterrupted sweep. The sweep stores every validated rung
(`validation/<trial>/step_N.json`, with the time it was validated), so before its first decision
the scheduler replays them in the order they were validated: its rungs are then what they were
when the driver died. A rung is decided once: a result Tune delivers again for the same trial and
step (a resumed trial re-reporting its stored rungs, Tune's duplicate final result) gets the
decision it already had. Trials are known to ASHA by name, which survives restarts (Tune's trial
ids do not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

TIME_ATTR = "step"


@dataclass(frozen=True)
class _Named:
    """What ASHA reads of a trial (its id), keyed by the trial's name."""

    trial_id: str


def replay_order(records: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """(trial, record) of every stored rung in the order they were validated (records from before
    the time was stored go first, by step)."""
    flat = [(name, r) for name, rs in records.items() for r in rs]
    return sorted(flat, key=lambda nr: (nr[1].get("validated_at", -math.inf), nr[1]["step"], nr[0]))


class GroupedASHA(FIFOScheduler):
    def __init__(
        self,
        metric: str,
        mode: str,
        groups: dict[str, tuple[int, int]],  # group -> (max_t, grace_period) in training steps
        reduction_factor: float,
        group_of: dict[str, str],  # trial name -> group
        sweep_uri: str | None = None,  # where the validated rungs are stored (replayed on restart)
    ):
        super().__init__()
        # Not `self._metric`: Tune would then demand the metric in every result, and training
        # progress reports have none (the per-group ASHAs skip such results).
        self.target_metric, self.target_mode = metric, mode
        self.groups, self.reduction_factor, self.group_of = groups, reduction_factor, group_of
        self.sweep_uri = sweep_uri
        self.schedulers: dict[str, AsyncHyperBandScheduler] = {}
        self.decisions: dict[tuple[str, float], str] = {}  # (trial name, step) -> ASHA's decision
        self.added: set[str] = set()
        self.replayed = sweep_uri is None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # set at construction

    def _scheduler(self, name: str) -> AsyncHyperBandScheduler | None:
        group = self.group_of.get(name)
        if group is None or group not in self.groups:
            return None
        max_t, grace = self.groups[group]
        if max_t <= 0:
            return None  # nothing to stop early (a method that trains nothing)
        if group not in self.schedulers:
            self.schedulers[group] = AsyncHyperBandScheduler(
                time_attr=TIME_ATTR,
                metric=self.target_metric,
                mode=self.target_mode,
                max_t=max_t,
                grace_period=min(grace, max_t),
                reduction_factor=self.reduction_factor,
            )
        return self.schedulers[group]

    def _add(self, name: str) -> AsyncHyperBandScheduler | None:
        scheduler = self._scheduler(name)
        if scheduler is not None and name not in self.added:
            scheduler.on_trial_add(None, _Named(name))
            self.added.add(name)
        return scheduler

    def decide(self, name: str, result: dict[str, Any]) -> str:
        """ASHA's decision on one result of trial `name`, made once per (trial, step)."""
        if TIME_ATTR not in result or self.target_metric not in result:
            return TrialScheduler.CONTINUE  # training progress
        key = (name, float(result[TIME_ATTR]))
        if key not in self.decisions:
            scheduler = self._add(name)
            self.decisions[key] = (
                TrialScheduler.CONTINUE
                if scheduler is None
                else scheduler.on_trial_result(None, _Named(name), result)
            )
        return self.decisions[key]

    def replay(self, records: dict[str, list[dict[str, Any]]]) -> None:
        """Feed the stored rungs of earlier runs of the sweep (trial name -> its validation records)."""
        for name, record in replay_order(records):
            self.decide(name, record)
        self.replayed = True

    def _remember(self) -> None:
        if self.replayed:
            return
        from craft_ray.tune.results import validations

        self.replay({name: validations(self.sweep_uri, name) for name in self.group_of})

    def on_trial_add(self, tune_controller, trial) -> None:
        self._remember()
        self._add(trial.config.get("name", ""))

    def on_trial_result(self, tune_controller, trial, result) -> str:
        self._remember()
        return self.decide(trial.config.get("name", ""), result)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        # Not forwarded: every validated rung already reached ASHA as a result, and ASHA would
        # record the last result once more, at a lower rung the trial skipped.
        pass

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass  # a removed trial's rungs stay: they were validated, and a restart replays them too

    def debug_string(self) -> str:
        return "\n".join(f"{g}: {s.debug_string()}" for g, s in self.schedulers.items()) or "GroupedASHA"


def build_scheduler(spec, plan, sweep_uri: str | None = None) -> TrialScheduler:
    """The spec's scheduler for the plan's trials: grouped ASHA (remembering the rungs stored in
    `sweep_uri`), or FIFO (every trial runs out)."""
    if spec.scheduler.type == "fifo":
        return FIFOScheduler()
    groups: dict[str, tuple[int, int]] = {}
    for trial in plan.trials:
        max_t = spec.scheduler.max_t or max(trial.rungs)
        grace = spec.scheduler.grace_period or trial.rungs[0]
        previous = groups.get(trial.group, (0, grace))
        groups[trial.group] = (max(previous[0], max_t), min(previous[1], grace))
    return GroupedASHA(
        spec.metric,
        spec.best_mode,
        groups,
        spec.scheduler.reduction_factor,
        {t.name: t.group for t in plan.trials},
        sweep_uri,
    )
