"""Project exceptions: each carries a message a user can act on; the CLI prints it as one line."""


class CraftError(Exception):
    """Base class for errors caused by the user's input, config or data (CLI exit status 2)."""


class ConfigError(CraftError):
    """An experiment config is malformed: unknown key, wrong type, unknown dataset or label."""


class DataError(CraftError):
    """A dataset on disk is unusable: missing files, missing columns, wrong layout."""


class ModelError(CraftError):
    """A model spec cannot be built or loaded."""


class ScoringError(CraftError):
    """Bad input to a CAS evaluator: wrong shape or range, NaN pixels, unknown label, empty batch."""


class TrainingError(CraftError):
    """Training cannot continue: too many non-finite steps, an unusable checkpoint, a run clash."""


class StudyError(CraftError):
    """A reader study cannot be built, served or analysed: runs of different datasets, a broken study
    directory, an unknown reader or pair."""


class EvaluationError(CraftError):
    """An evaluation cannot run as asked: no finished checkpoint, mismatched runs, clashing results."""


class EndpointError(ModelError):
    """A remote model endpoint stayed unavailable (network error, timeout, HTTP 5xx) after retries.
    Training skips the step and counts it apart from non-finite steps."""


class TrainingFailure(RuntimeError):
    """An internal failure of a training run (a bug, out of memory, a lost worker): NOT a CraftError,
    so the CLI exits 1. `log_path` says where the full traceback was written."""

    def __init__(self, message: str, log_path: str | None = None):
        super().__init__(message)
        self.log_path = log_path
