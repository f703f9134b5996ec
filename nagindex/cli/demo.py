"""`nag demo`: a thin wrapper over `nagindex.demo.run_demo`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from nagindex.cli.app import app
from nagindex.schemas import DEMO_FRACTION


@app.command("demo")
def demo(
    out: Path = typer.Option(
        Path("nag-demo"), "--out", "-o",
        help="Folder for the demo's index, selections, plot and summary. Default: ./nag-demo. "
             "A rerun reuses the index it finds there.",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Backbone: a Hugging Face id, a local model folder or a .gguf file. "
             "Default: the embedded SmolLM2-135M (no download).",
    ),
    fraction: float = typer.Option(
        DEMO_FRACTION, "--fraction", help="Token budget of each target's selection, as a share of the pool "
        "(about one domain's share of the demo pool). Default: 0.1.",
    ),
    contrast: str = typer.Option(
        "none", "--contrast", help="pool: weigh neurons by how much more often they fire in the target than in "
                                   "the pool, instead of the default weighting. Default: none.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Index a bundled 600-document pool (8 domains), rank it for a medical and a code target,
    and show which domains NAG selects. Runs in a few minutes on a laptop CPU."""
    from nagindex.demo import next_steps, run_demo, format_table, DEMO_TARGETS

    t0 = time.perf_counter()
    result = run_demo(out, model=model, fraction=fraction, contrast=None if contrast == "none" else contrast,
                      progress=progress)
    typer.echo("")
    typer.echo(f"Demo pool: {result.pool_docs} documents; targets: 50 MedQA questions (medical), "
               f"50 HumanEval prompts (code).")
    typer.echo(format_table(result.rows, list(DEMO_TARGETS), result.selected_counts, result.fraction,
                            result.paper_counts, result.scoring))
    typer.echo("")
    typer.echo(f"Outputs in {result.out}/ ({time.perf_counter() - t0:.0f} s"
               + (", index reused" if result.index_reused else "") + "):")
    typer.echo(f"  index:      {result.index_path}")
    for name, path in result.selected_files.items():
        typer.echo(f"  selected:   {path}  ({result.selected_counts[name]} documents for {name})")
    typer.echo(f"  plot:       {result.plot}")
    typer.echo(f"  table:      {result.summary}")
    typer.echo("")
    typer.echo(next_steps(result))
