"""One base class for every mistake or fault a user can act on: the CLI prints its message as
one line on stderr and exits non-zero; the API raises it as it is."""

from __future__ import annotations


class LadderError(Exception):
    """A message for the user, one line, no traceback."""


class ConfigError(LadderError, ValueError):
    """An option that names nothing: a device, a precision, a layout, an optimizer."""
