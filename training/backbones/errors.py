"""The one error the backbone registry raises."""

from training.cli import UserError


class BackboneError(UserError, ValueError):
    """A backbone cannot be built as asked; the message says what to do instead."""
