"""The one exception type users see.

Anything raised as `NagError` is a problem with the user's input or
environment (bad file, incompatible index, ...), never a bug. It is a plain
exception, so that the Python API, the query service and the CLI each show
it their own way: the API raises it, the service answers 4xx with its line,
and the CLI (`cli/app.py`) prints it as a single ``Error: ...`` line and
exits with code 2. An error about one parameter names it (`param`): the
Python name in the message, the flag in the CLI's (`cli_message`).
"""

from __future__ import annotations


class NagError(Exception):
    """A user-facing error: bad input, incompatible data, unusable path."""

    exit_code = 2

    def __init__(self, message: str, *, param: str | None = None, cli: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.cli = cli  # the message in the command line's words, where they differ

    @classmethod
    def for_param(cls, param: str, text: str) -> "NagError":
        """An error about parameter `param`: ``"<param> <text>"``, e.g. ``top must be at least 1``."""
        error = cls(f"{param} {text}", param=param)
        error.text = text
        return error

    def cli_message(self) -> str:
        """The message as the command line says it: a parameter named by its flag."""
        if self.cli is not None:
            return self.cli
        text = getattr(self, "text", None)
        if self.param is None or text is None:
            return self.message
        return f"--{self.param.replace('_', '-')} {text}"

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
