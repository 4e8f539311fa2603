"""The one error type of weight loading: user-facing, one line, names the file / source / parameter."""
from lib.errors import UserError


class PretrainedError(UserError, ValueError):
    """A pretrained-weights source or file that cannot be used (missing, altered, unsafe, mismatched)."""
