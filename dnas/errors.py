"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations


class DnasError(Exception):
    """A mistake in the user's input (file, key, value) rather than a bug in dnas."""


class ConfigError(DnasError):
    """A config/YAML value is missing or wrong; the message names the file and the key path."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.detail = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")
