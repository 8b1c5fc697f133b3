"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class CnnzipError(Exception):
    """An error caused by the user's input (a path, a file, an option), not by a bug."""


class DataError(CnnzipError):
    """A dataset is missing, truncated or not in the expected format."""


class ModelError(CnnzipError):
    """A model name, factory or architecture cannot be built."""


class CheckpointError(CnnzipError):
    """A checkpoint file is missing, damaged or was not written by cnnzip."""
