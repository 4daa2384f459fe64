"""Early stopping per dataset x method: one ASHA scheduler (Ray Tune's) for each group of trials.

ASHA compares a trial with the others that reached the same rung. Across datasets or methods that
comparison means nothing (a histopathology CAS is not on a chest radiograph's scale, and a
baseline is not a worse reward-weight setting of CRAFT), so each group gets its own ASHA. Time is
the training step (`step` in the trial's reports); results without the metric (training
progress) are ignored by ASHA.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

TIME_ATTR = "step"


class GroupedASHA(FIFOScheduler):
    def __init__(
        self,
        metric: str,
        mode: str,
        groups: dict[str, tuple[int, int]],  # group -> (max_t, grace_period) in training steps
        reduction_factor: float,
        group_of: dict[str, str],  # trial name -> group
    ):
        super().__init__()
        # Not `self._metric`: Tune would then demand the metric in every result, and training
        # progress reports have none (the per-group ASHAs skip such results).
        self.target_metric, self.target_mode = metric, mode
        self.groups, self.reduction_factor, self.group_of = groups, reduction_factor, group_of
        self.schedulers: dict[str, AsyncHyperBandScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # set at construction

    def _for(self, trial) -> AsyncHyperBandScheduler | None:
        group = self.group_of.get(trial.config.get("name", ""))
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

    def on_trial_add(self, tune_controller, trial) -> None:
        scheduler = self._for(trial)
        if scheduler is not None:
            scheduler.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        scheduler = self._for(trial)
        if scheduler is None:
            return TrialScheduler.CONTINUE
        return scheduler.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        scheduler = self._for(trial)
        if scheduler is not None and trial.trial_id in scheduler._trial_info:
            scheduler.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        scheduler = self._for(trial)
        if scheduler is not None and trial.trial_id in scheduler._trial_info:
            scheduler.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{g}: {s.debug_string()}" for g, s in self.schedulers.items()) or "GroupedASHA"


def build_scheduler(spec, plan) -> TrialScheduler:
    """The spec's scheduler for the plan's trials: grouped ASHA, or FIFO (every trial runs out)."""
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
    )
