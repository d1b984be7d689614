"""Every error a user can cause. The CLI prints one line for each and exits non-zero.

A message names the bad value, what was expected, and how to fix it.
"""


class GigadreamError(Exception):
    """Base class: an error caused by input, configuration or environment, not a bug."""

    exit_code = 2


class ConfigError(GigadreamError):
    """A config file, preset or ``--set`` override is invalid."""


class InputError(GigadreamError):
    """The input image is missing, unreadable or of an unsupported kind."""


class OutputError(GigadreamError):
    """The output cannot be written where or how it was asked for."""


class StoreError(GigadreamError):
    """The store folder is not a gigadream store, or does not match the run."""


class ModelError(GigadreamError):
    """Model weights are missing or do not match the architecture."""


class ClusterError(GigadreamError):
    """The Dask scheduler could not be reached or started, or its workers keep dying."""


class DiskFullError(GigadreamError):
    """A disk filled up while writing; what was finished is kept, the run can resume."""

    exit_code = 1


class GpuMemoryError(GigadreamError):
    """A tile does not fit in the GPU's memory even alone and in the smallest parts."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (a preemption notice): the run stops at once, resumable. The CLI
    raises it from its signal handler; the studio's batch catches it to say what waits."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
