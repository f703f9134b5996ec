"""The typer applications that every command module registers itself on."""

import typer

# rich_markup_mode=None keeps errors to a single "Error: ..." line (a rich
# panel would spread one message over five lines).
_SETTINGS = dict(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                 context_settings={"help_option_names": ["-h", "--help"]})

app = typer.Typer(
    help=(
        "nagindex: target-oriented pretraining data selection with Neuron-Activated "
        "Graphs (NAG). Index a pool once with `nag index build`, then rank it against "
        "any target set with `nag query`. Start with `nag demo`."
    ),
    **_SETTINGS,
)
index_app = typer.Typer(help="Build, grow, inspect and compact a NAG index.", **_SETTINGS)
deactivate_app = typer.Typer(help="Neuron deactivation: find, apply and test a target's key neurons.", **_SETTINGS)
plot_app = typer.Typer(help="Pictures of scores, layers and feature maps, written as PNG.", **_SETTINGS)

app.add_typer(index_app, name="index")
app.add_typer(deactivate_app, name="deactivate")
app.add_typer(plot_app, name="plot")

# `--model` of every command that loads the index's backbone.
MODEL_HELP = (
    "The index's backbone, where it is not at the location the index recorded: a local model directory, "
    ".gguf file, hub id, or 'embedded'. Its weights are checked against the index's."
)
