"""The exception of model selection, shared by every module of ``fnn.selection``."""

from __future__ import annotations

__all__ = ["SelectionError"]


class SelectionError(ValueError):
    """A bad search space, metric or selection option; the message names the option or key.

    Example:
        >>> raise SelectionError("--folds: must be an int >= 2, got 1")
        Traceback (most recent call last):
        fnn.selection.errors.SelectionError: --folds: must be an int >= 2, got 1
    """
