"""Exceptions that the `hpc-sr` command reports as one clear line (no traceback)."""


class HpcSrError(Exception):
    """Base class: a problem with the user's input, files or environment, named in the message."""


class DataError(HpcSrError):
    """Bad input data: a source file, a shard or a manifest (the message names the file)."""


class CheckpointError(HpcSrError):
    """A checkpoint that is missing, incomplete, corrupt or of another model config."""


class TrainingError(HpcSrError):
    """Training cannot go on (too many non-finite losses, an unwritable run directory, ...)."""


class EnvironmentVariableError(HpcSrError, ValueError):
    """An environment variable the toolkit reads holds a value it cannot use (the message names both)."""


class LedgerError(HpcSrError):
    """An output folder whose ledger refuses a run: another run's settings, or a damaged ledger."""
