"""The scoring options every command that scores a pool takes (`nag query`,
`explain`, `plot scores`): declared once here, turned into the scoring keywords
of one `ranking.request.QueryRequest` by `scoring_flags`. Every default is None:
the preset (default: the measured best; `--preset paper`: the SPEC) decides
what is not given."""

from __future__ import annotations

from typing import Optional

import typer


PRESET = typer.Option(None, "--preset", help="default (the best configuration measured, docs/quality.md) or "
                      "paper (the SPEC exactly: K=20, SPEC weighting, no discount, NAG alone). Default: default.")
WEIGHTING = typer.Option(None, "--weighting", help="Profile weighting: spec (c^p, SPEC 2), idf (c^p times the "
                         "neuron's idf over the pool) or contrast (c^p times its lift over the pool). Default: idf.")
POWER = typer.Option(None, "--power", help="Raise target neuron counts to this power before weighting. "
                     "Default: 0.5 (paper: 1.0).")
DISCOUNT = typer.Option(None, "--discount", help="Document-side rank discount: log2 (slot r weighs "
                        "1/log2(r+2)) or none (the SPEC). Default: log2.")
TOP_K = typer.Option(None, "--top-k", help="Neurons per layer used (the first K of each document's NAG); at most "
                     "the K the index was built with. Default: all of them (paper: 20).")
LAYERS = typer.Option(None, "--layers", help="Layers used for target and pool alike: all, first, last or a "
                      "list such as 0,5,9. Default: all.")
MODE = typer.Option(None, "--mode", help="nag, embedding, fusion (of both, see --fusion) or auto "
                    "(fusion where the index and the targets have embeddings: text targets, or feature files that "
                    "`nag extract --embedder` wrote; else nag). Default: auto.")
EMBEDDING_SCORE = typer.Option(None, "--embedding-score", help="centroid (cosine to the mean target vector) or "
                               "nn (mean of the --neighbours highest cosines to single target items). Default: nn.")
NEIGHBOURS = typer.Option(None, "--neighbours", help="Target items averaged by --embedding-score nn. Default: 10.")
FUSION = typer.Option(None, "--fusion", help="How fusion combines the two scores: sum (each min-max scaled over "
                      "the pool, weighted by --nag-weight) or rrf (reciprocal ranks, k=60). Default: sum.")
NAG_WEIGHT = typer.Option(None, "--nag-weight", help="NAG's share of --fusion sum, 0 to 1 (the embedding has the "
                          "rest). Default: 0.5.")
CONTRAST = typer.Option(None, "--contrast", help="Older spelling: pool is --weighting contrast; none keeps the weighting.")


def scoring_flags(preset: Optional[str] = None, weighting: Optional[str] = None, power: Optional[float] = None,
                  discount: Optional[str] = None, top_k: Optional[int] = None, layers: Optional[str] = None,
                  mode: Optional[str] = None, embedding_score: Optional[str] = None,
                  neighbours: Optional[int] = None, contrast: Optional[str] = None,
                  fusion: Optional[str] = None, nag_weight: Optional[float] = None) -> dict:
    """The scoring keywords of `QueryRequest.build` that a command's flags give (None: the preset's,
    or the index's, decides); `--contrast none` is the same as not giving it."""
    return dict(preset=preset, weighting=weighting, power=power, discount=discount, top_k=top_k, layers=layers,
                mode=mode, embedding_score=embedding_score, neighbours=neighbours, fusion=fusion,
                nag_weight=nag_weight, contrast=None if contrast == "none" else contrast)
