"""User-facing errors: one message naming file, key path, rule, value and valid choices; exit status 2."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable

EXIT_USER_ERROR = 2


class Verbatim(str):
    """A value already written out for the message (shown without quotes)."""


def show(value: Any, limit: int | None = None) -> str:
    """A value as the user would write it, shortened when long: past `limit` characters, by default
    400 for a string (a path is shown whole) and 80 for anything else (a mapping, a list)."""
    if limit is None:
        limit = 400 if isinstance(value, str) else 80
    text = repr(value) if isinstance(value, str) and not isinstance(value, Verbatim) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(Exception):
    """A mistake in the user's input, reported without a traceback (exit status 2).

    The message reads `FILE: KEY: RULE, but got VALUE; valid choices: A, B` with the parts
    that apply.
    """

    def __init__(self, rule: str, *, file: str | None = None, key: str | None = None,
                 value: Any = ..., choices: Iterable[Any] | None = None, origin: str | None = None):
        self.rule, self.file, self.key, self.value = rule, file, key, value
        self.choices = list(choices) if choices is not None else None
        self.origin = origin  # e.g. "--set run.epochs=ten" when the value came from the command line
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        text = f"{where}: {self.rule}" if where else self.rule
        if self.value is not ...:
            text += f", but got {show(self.value)}"
        if self.origin:
            text += f" (from {self.origin})"
        if self.choices is not None:
            shown = ", ".join(show(c, 40) for c in self.choices[:40])
            more = f", ... ({len(self.choices)} in all)" if len(self.choices) > 40 else ""
            text += f"; valid choices: {shown}{more}"
        return text

    def __str__(self) -> str:
        return self.message

    def at(self, file: str | None = None, origin: str | None = None) -> "UserError":
        """The same error with the file (and origin) filled in where missing (`file=""`: an error
        about something else than the experiment file, which keeps naming no file)."""
        self.file = file if self.file is None else self.file
        self.origin = self.origin or origin
        self.args = (self.message,)
        return self


@contextmanager
def in_file(file: str | None):
    """UserErrors raised in the block name `file` (where they do not name one already): the file
    is attached once, where the experiment file is known, not passed down to every check."""
    try:
        yield
    except UserError as error:
        raise error.at(file=file) from error.__cause__
