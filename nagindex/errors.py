"""The one exception type users see.

Anything raised as `NagError` is a problem with the user's input or
environment (bad file, incompatible index, ...), never a bug. It subclasses
the click exception class that typer handles, so that every `nag` command,
however it is invoked, prints it as a single ``Error: ...`` line and exits
with code 2, while the Python API raises it like any other exception.
"""

import typer

# Recent typer versions vendor click; take the ClickException class that typer
# itself catches (the base of its public BadParameter), not the standalone
# click package's, or the CLI would show a traceback and exit 1.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class NagError(_ClickException):
    """A user-facing error: bad input, incompatible data, unusable path."""

    exit_code = 2

    def __str__(self) -> str:
        return self.message


def damaged(path, problem: str) -> NagError:
    """The one-line error for an index whose files do not match its manifest
    (`.problem` keeps the problem alone, for `nag index check`)."""
    error = NagError(
        f"index {path} is damaged: {problem}; nothing was changed. Run `nag index check {path}` for every problem, "
        "and restore the index from a copy or rebuild it"
    )
    error.problem = problem
    return error


def require_extra(module: str, extra: str, feature: str):
    """Import an optional dependency, or a NagError saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise NagError(f"{feature} needs {module.split('.')[0]}: pip install 'nagindex[{extra}]'") from None
