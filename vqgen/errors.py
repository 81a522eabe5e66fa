"""The error family the library raises; the CLI turns each into one line and exit code 1."""


class VqgenError(Exception):
    """Base of every error vqgen reports to a user (message says what is wrong and what to do)."""


class DataError(VqgenError):
    """An image set or data spec that cannot be used."""


class CheckpointError(VqgenError):
    """A weights or training-state file that is missing, foreign, corrupt or mismatched."""


class CodesError(VqgenError):
    """An index-grid file that fails validation."""


class ConfigError(VqgenError):
    """Options that do not fit together (bad device, unknown prior, unknown class, ...)."""


class TrainingError(VqgenError):
    """Training cannot go on (non-finite loss, resume from an empty folder, ...)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM stopped training after a checkpoint was written; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code  # 128 + the signal's number, as a shell reports a process that signal ended
