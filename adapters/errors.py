"""What the fine-tuning side reports to callers; the gateway maps these to OpenAI errors."""

from __future__ import annotations


class FineTuningError(Exception):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidJobRequest(FineTuningError):
    """The request cannot become a job (bad file, model, hyperparameter...): a 400."""


class NotFound(FineTuningError):
    """No such job or model for this tenant (also when it belongs to another tenant): a 404."""
