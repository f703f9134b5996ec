"""The one exception type users see.

Anything raised as `NagError` is a problem with the user's input or
environment (bad file, incompatible index, ...), never a bug. It subclasses
`click.ClickException` so that every `nag` command, however it is invoked,
prints it as a single ``Error: ...`` line and exits with code 2, while the
Python API raises it like any other exception.
"""

import click


class NagError(click.ClickException):
    """A user-facing error: bad input, incompatible data, unusable path."""

    exit_code = 2

    def __str__(self) -> str:
        return self.message
