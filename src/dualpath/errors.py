"""The one exception type users see: a clear, one-line message about bad input or state."""


class DualPathError(Exception):
    """A user-facing error. The CLI prints `str(err)` on one line and exits non-zero."""


class BankError(DualPathError):
    """A bank directory is missing, corrupt, misaligned or incompatible."""


class CorpusError(DualPathError):
    """A corpus source is empty, malformed or unreadable."""


class CheckpointError(DualPathError):
    """A model checkpoint is missing, corrupt or does not fit the bank."""


class ConfigError(DualPathError):
    """A configuration or lane profile is invalid."""


class DeciderError(DualPathError, ValueError):
    """Vectors or shortlists given to the decider are malformed (shape, NaN/inf, zero norm)."""


class LockedError(DualPathError):
    """Another process is writing the same bank (or model directory) right now."""


class ModelInputError(DualPathError, ValueError):
    """Vectors given to a model are malformed (a context of the wrong shape or dimension)."""


class EncoderError(DualPathError):
    """Encoding failed while it ran (a worker process of a multi-process build failed or died)."""
