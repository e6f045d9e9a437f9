"""Errors a user can meet that are not plain ValueError / TypeError, importable without the training stack."""
from __future__ import annotations

__all__ = ["CheckpointError", "NonFiniteError"]


class CheckpointError(ValueError):
    """A checkpoint file exists but is broken, truncated or does not fit what it is loaded into."""


class NonFiniteError(RuntimeError):
    """Training stopped because the loss or the weights became NaN or infinite (no checkpoint of them written)."""

    def __init__(self, message: str, *, step: int, what: str):
        super().__init__(message)
        self.step, self.what = step, what
