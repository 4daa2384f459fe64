"""The live table of a sweep's trials in the terminal (a Tune callback drawing with rich).

One row per trial: its state (pending, training, validating, done, stopped early by ASHA, error),
the training step reached out of its total, and its latest and best validation metric. Tune
pickles callbacks with the experiment (and unpickles them on restore), so the rich display is made
lazily and left out of the pickle.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback

MAX_ROWS = 24


class TrialRow:
    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self.state, self.step = "pending", 0.0
        self.metric: float | None = None
        self.best: float | None = None


class LiveTable(Callback):
    def __init__(self, metric: str, mode: str, totals: dict[str, int], console=None):
        self.metric, self.mode, self.totals = metric, mode, totals
        self.console = console
        self.rows = {name: TrialRow(name, total) for name, total in totals.items()}
        self._live = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_live"] = state["console"] = None
        return state

    # --- Tune events -------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial).state = "training"
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        row.step = float(result.get("step", row.step))
        value = result.get(self.metric)
        if isinstance(value, float) and not math.isnan(value):
            row.metric = value
            row.best = value if row.best is None else (max if self.mode == "max" else min)(row.best, value)
            row.state = "training" if row.step < row.total else "done"
        elif result.get("phase") == "train":
            row.state = "validating" if row.step >= row.total else "training"
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        row.state = "done" if row.step >= row.total else "stopped early"
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._row(trial).state = "error"
        self._refresh()

    def on_step_end(self, iteration, trials, **info) -> None:
        """Trials finished before a restore send no events: take their state from Tune's records."""
        changed = False
        for trial in trials:
            row = self._row(trial)
            if row.state != "pending" or trial.status not in ("TERMINATED", "ERROR"):
                continue
            last = trial.last_result or {}
            row.step = float(last.get("step", 0.0))
            if isinstance(last.get(self.metric), float):
                row.metric = row.best = last[self.metric]
            row.state = (
                "error" if trial.status == "ERROR" else "done" if row.step >= row.total else "stopped early"
            )
            changed = True
        if changed:
            self._refresh()

    def on_experiment_end(self, trials, **info) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None

    # --- drawing -----------------------------------------------------------------------------
    def _row(self, trial) -> TrialRow:
        name = trial.config.get("name", str(trial))
        if name not in self.rows:
            self.rows[name] = TrialRow(name, self.totals.get(name, 0))
        return self.rows[name]

    def _refresh(self) -> None:
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self.console = self.console or Console(stderr=True)
            self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
        self._live.update(self.render())

    def render(self):
        from rich.table import Table

        order = {"training": 0, "validating": 0, "pending": 2, "done": 1, "stopped early": 1, "error": 1}
        rows = sorted(self.rows.values(), key=lambda r: (order.get(r.state, 3), r.name))
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.state] = counts.get(row.state, 0) + 1
        title = "sweep: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table = Table(title=title, title_justify="left")
        for col, justify in (("trial", "left"), ("state", "left"), ("step", "right"), (self.metric, "right")):
            table.add_column(col, justify=justify)
        table.add_column(f"best ({self.mode})", justify="right")
        for row in rows[:MAX_ROWS]:
            table.add_row(
                row.name,
                row.state,
                f"{row.step:.0f}/{row.total}",
                "" if row.metric is None else f"{row.metric:.4f}",
                "" if row.best is None else f"{row.best:.4f}",
            )
        if len(rows) > MAX_ROWS:
            table.caption = f"... and {len(rows) - MAX_ROWS} more"
        return table
