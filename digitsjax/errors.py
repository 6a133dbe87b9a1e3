"""User-facing errors.

Anything a user can get wrong (a pipeline key, a data folder, a checkpoint, an image) raises a
`UserError`. The CLI prints its message as one line and exits with status 2; a traceback is
shown only with `--debug`. Bugs stay ordinary exceptions, so they still surface loudly.
"""


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(UserError):
    """A pipeline file or `--set` override is invalid."""


class DataError(UserError):
    """MNIST is missing, corrupt or cannot be prepared."""


class CheckpointError(UserError):
    """A workdir or checkpoint is missing, incompatible or unreadable."""


class ClusterError(UserError):
    """The multi-process setup (flags, environment, coordinator) is incomplete or unreachable."""


class ImageError(UserError):
    """An image to classify cannot be decoded, is too large, or shows no digit."""


class DivergenceError(UserError):
    """Training produced a NaN or infinite loss (usually a learning rate that is too high)."""
