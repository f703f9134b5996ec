"""The typer applications that every command module registers itself on, and the CLI's
one error path: a `NagError` from any command becomes one ``Error: ...`` line and exit 2."""

import functools

import typer

from nagindex.errors import NagError

# Recent typer versions vendor click; take the ClickException class that typer
# itself catches (the base of its public BadParameter), not the standalone
# click package's, or the CLI would show a traceback and exit 1.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class CommandError(_ClickException):
    """A NagError as the command line shows it: one line (a parameter named by its flag), exit 2."""

    exit_code = 2

    def __init__(self, error: NagError):
        super().__init__(error.cli_message())

    def __str__(self) -> str:
        return self.message


def one_line_errors(function):
    """`function` with every NagError it raises turned into a `CommandError`."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except NagError as error:
            raise CommandError(error) from None

    return run


class _Typer(typer.Typer):
    """A typer app whose commands and callbacks map NagError to one line and exit 2."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda function: (register(one_line_errors(function)), function)[1]

    def callback(self, *args, **kwargs):
        register = super().callback(*args, **kwargs)
        return lambda function: (register(one_line_errors(function)), function)[1]

# rich_markup_mode=None keeps errors to a single "Error: ..." line (a rich
# panel would spread one message over five lines).
_SETTINGS = dict(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                 context_settings={"help_option_names": ["-h", "--help"]})

app = _Typer(
    help=(
        "nagindex: target-oriented pretraining data selection with Neuron-Activated "
        "Graphs (NAG). Index a pool once with `nag index build`, then rank it against "
        "any target set with `nag query`. Start with `nag demo`."
    ),
    **_SETTINGS,
)
index_app = _Typer(help="Build, grow, inspect and compact a NAG index.", **_SETTINGS)
deactivate_app = _Typer(help="Neuron deactivation: find, apply and test a target's key neurons.", **_SETTINGS)
plot_app = _Typer(help="Pictures of scores, layers and feature maps, written as PNG.", **_SETTINGS)

app.add_typer(index_app, name="index")
app.add_typer(deactivate_app, name="deactivate")
app.add_typer(plot_app, name="plot")

# `--model` of every command that loads the index's backbone.
MODEL_HELP = (
    "The index's backbone, where it is not at the location the index recorded: a local model directory, "
    ".gguf file, hub id, or 'embedded'. Its weights are checked against the index's."
)
