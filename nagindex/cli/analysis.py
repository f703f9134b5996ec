"""`nag deactivate ...`, `nag explain`, `nag plot ...`: interpretability commands.

Thin wrappers over `nagindex.analysis` (the numbers) and `nagindex.analysis.plots` (the pictures).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import List, Optional

import typer

from nagindex.atomic import check_output_path
from nagindex.errors import NagError
from nagindex.schemas import DEFAULT_NEURON_TYPE
from nagindex.cli import scoring as S
from nagindex.cli.app import MODEL_HELP, app, deactivate_app, plot_app


# -- shared options -------------------------------------------------------------

_TARGETS_HELP = (
    "Target documents: parquet (web/final), JSONL (.jsonl/.jsonl.gz, `text` or `doc` field) or .txt "
    "(one document a line); their NAGs are extracted with the index's backbone. Or use --target-features."
)
_FEATURES_HELP = (
    "Read the target's NAG features from this file (a `nag extract` parquet or upstream JSONL made with the "
    "index's backbone, L, K and max_length) instead of extracting TARGET files."
)


def _target_features_opt():
    return typer.Option(None, "--target-features", help=_FEATURES_HELP)


def _fmt_opt():
    return typer.Option("auto", "--format", "-f", help="Layout of TARGET files: auto, web, final, jsonl or txt.")


def _neuron_type_opt():
    return typer.Option(DEFAULT_NEURON_TYPE, "--neuron-type", "-t", help="Neuron type of the features used. Default: fwd_up.")


def _batch_opt(default: int = 32):
    return typer.Option(default, "--batch-size", "-b", help=f"Texts per forward pass. Default: {default}.")


def _progress_opt():
    return typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")


def _model_opt():
    return typer.Option(None, "--model", "-m", help=MODEL_HELP)


def _open_index(index_dir: Path, model: Optional[str] = None):
    from nagindex.api import Index

    return Index.open(index_dir, model=model)


def _targets(index, targets, target_features, fmt, neuron_type, batch_size, progress):
    from nagindex.analysis.views import target_features_for

    return target_features_for(
        index, [str(t) for t in targets or []], target_features=target_features, neuron_type=neuron_type,
        fmt=fmt, batch_size=batch_size, progress=progress,
    )


def _picture(out: Path, width: int, height: int) -> tuple[int, int]:
    """The picture's size, with it and `out` checked before any work."""
    from nagindex.analysis.plots import check_size

    check_output_path(out)
    return check_size((width, height))


def _width_opt():
    return typer.Option(1200, "--width", help="Picture width in pixels. Default: 1200.")


def _height_opt():
    return typer.Option(800, "--height", help="Picture height in pixels. Default: 800.")


# -- nag deactivate ---------------------------------------------------------------


@deactivate_app.command("keys")
def deactivate_keys_cmd(
    index_dir: Path = typer.Argument(..., help="A NAG index (its backbone, L and K define the keys)."),
    targets: Optional[List[Path]] = typer.Argument(None, help=_TARGETS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Keys file to write: JSON {layer: [neuron, ...]} as upstream reads it; nagindex's metadata "
                     "(backbone, L, width) goes beside it in NAME.meta.json."),
    per_layer: int = typer.Option(
        20, "--per-layer", "-k", help="Neurons per layer: the most frequent target neurons (ties: lower index). Default: 20."
    ),
    target_features: Optional[Path] = _target_features_opt(),
    fmt: str = _fmt_opt(),
    neuron_type: str = _neuron_type_opt(),
    batch_size: int = _batch_opt(),
    progress: bool = _progress_opt(),
    model: Optional[str] = _model_opt(),
) -> None:
    """Find a target's key neurons (SPEC 4): per layer, its most frequent NAG neurons."""
    from nagindex.analysis.deactivation import keys_for_index, save_keys

    index = _open_index(index_dir, model)
    feats = _targets(index, targets, target_features, fmt, neuron_type, batch_size, progress)
    keys = keys_for_index(index, feats, per_layer, neuron_type)
    save_keys(out, keys)
    share = keys.count / (keys.num_layers * keys.width)
    typer.echo(
        f"wrote {out}: {keys.count} neurons in {sum(1 for v in keys.values() if v)} layers "
        f"({share:.3%} of {keys.num_layers * keys.width} {neuron_type} neurons) from {len(feats)} target documents"
    )


@deactivate_app.command("apply")
def deactivate_apply_cmd(
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Model to copy: Hugging Face repo id, local directory or .gguf file. Default: the embedded SmolLM2-135M-Instruct.",
    ),
    keys_file: Path = typer.Option(..., "--keys", help="Keys file written by `nag deactivate keys`."),
    out: Path = typer.Option(..., "--out", "-o", help="New directory for the deactivated copy (save_pretrained layout)."),
) -> None:
    """Save a copy of a model with the keyed up-projection neurons zeroed."""
    from nagindex.analysis.deactivation import load_keys, save_deactivated_model
    from nagindex.extraction.backbones import load_backbone

    keys = load_keys(keys_file)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NagError(f"--out {out} already exists and is not an empty directory")
    backbone = load_backbone(model, device="cpu")
    n = save_deactivated_model(backbone, keys, out)
    typer.echo(f"zeroed {n} neurons of {backbone.name}; wrote {out}")


def _read_texts(paths: List[Path], fmt: str, limit: int, what: str) -> list[str]:
    from nagindex.io import read_documents
    from nagindex.schemas import TEXT

    texts = read_documents([str(p) for p in paths], fmt).column(TEXT).to_pylist()
    if limit > 0:
        texts = texts[:limit]
    if not texts:
        raise NagError(f"the {what} is empty: no document with text in " + ", ".join(map(str, paths)))
    return texts


def format_report(report) -> str:
    """The deactivation test as a small text table."""
    d = report.to_dict()
    lines = [
        f"zeroed {d['zeroed']} of {d['total_neurons']} MLP neurons ({d['share_zeroed']:.3%})",
        f"{'condition':<18}{'target loss':>12}{'change':>10}{'control loss':>14}{'change':>10}",
    ]

    def row(name, losses, rel):
        t = f"{rel['target']:+.1%}" if rel else "-"
        c = f"{rel['control']:+.1%}" if rel else "-"
        lines.append(f"{name:<18}{losses['target']:>12.4f}{t:>10}{losses['control']:>14.4f}{c:>10}")

    row("intact", d["intact"], None)
    row("NAG keys zeroed", d["keys"], d["keys_relative"])
    for seed, losses in zip(d["random_seeds"], d["random"]):
        row(f"random (seed {seed})", losses, report.relative(losses))
    if d["random"]:
        row("random (mean)", d["random_mean"], d["random_relative"])
    return "\n".join(lines)


@deactivate_app.command("eval")
def deactivate_eval_cmd(
    targets: List[Path] = typer.Argument(..., help="Target items to measure the loss on (any document format)."),
    keys_file: Path = typer.Option(..., "--keys", help="Keys file written by `nag deactivate keys`."),
    control: List[Path] = typer.Option(..., "--control", "-c", help="Control items (repeatable): text the keys should not matter for."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model to test. Default: the embedded SmolLM2-135M-Instruct."
    ),
    limit: int = typer.Option(200, "--limit", "-n", help="Items read from the targets and from the controls (the first N of each; 0 = all). Default: 200."),
    seeds: int = typer.Option(3, "--seeds", help="Random-neuron baselines (seeds 0..N-1), each zeroing as many neurons per layer as the keys. Default: 3."),
    max_length: int = typer.Option(120, "--max-length", help="Tokens read per item (truncated). Default: 120."),
    fmt: str = _fmt_opt(),
    batch_size: int = _batch_opt(16),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report as JSON to this file."),
    progress: bool = _progress_opt(),
) -> None:
    """Mean token loss of target and control items: intact, NAG keys zeroed, random neurons zeroed."""
    from nagindex.analysis.deactivation import deactivation_eval, load_keys
    from nagindex.atomic import atomic_write_text
    from nagindex.extraction.backbones import load_backbone

    keys = load_keys(keys_file)
    target_texts = _read_texts(targets, fmt, limit, "target")
    control_texts = _read_texts(control, fmt, limit, "control")
    backbone = load_backbone(model)
    report = deactivation_eval(
        backbone, keys, target_texts, control_texts, seeds=tuple(range(seeds)),
        max_length=max_length, batch_size=batch_size, progress=progress,
    )
    typer.echo(f"{backbone.name}: {len(target_texts)} target items, {len(control_texts)} control items")
    typer.echo(format_report(report))
    if json_out is not None:
        d = report.to_dict()
        d.update(model=backbone.name, keys=str(keys_file), targets=[str(t) for t in targets],
                 control=[str(c) for c in control], target_items=len(target_texts),
                 control_items=len(control_texts), max_length=max_length)
        atomic_write_text(json_out, json.dumps(d, indent=1) + "\n")


# -- nag explain --------------------------------------------------------------------


def _cut(ex: dict) -> str:
    return f"--top {ex['top']}" if ex.get("top") is not None else f"budget r_f={ex['fraction']:g}"


def _query_request(targets, target_features, fraction, top, neuron_type, fmt, batch_size, progress, scoring: dict):
    """The QueryRequest `nag query` would build from the same flags (one target)."""
    from nagindex.ranking.request import QueryRequest

    return QueryRequest.build([str(t) for t in targets or []],
                              target_features=[str(target_features)] if target_features else None,
                              fraction=fraction, top=top, neuron_type=neuron_type, fmt=fmt, batch_size=batch_size,
                              progress=progress, **scoring)


def _query_target(index, request):
    """The one target of `request`, loaded as the query loads it (with embeddings where it fuses)."""
    from nagindex.ranking.query import embeds, load_targets

    given = [what for what, there in (("TARGET files", bool(request.targets)),
                                      ("--target-features", bool(request.target_features))) if there]
    if len(given) > 1:
        raise NagError(f"give the target one way only, not as {' and '.join(given)}")
    if not given:
        raise NagError("no target given: pass TARGET files or --target-features FILE")
    if len(request.targets) > 1:  # several TARGET files are the shards of one set
        request = dataclasses.replace(request, targets=(list(request.targets),))
    target = load_targets(index, request, embed=embeds(index, request))[0]
    if target.features.ndim != 2 or len(target.features) == 0:
        raise NagError("the target is empty: no target document has NAG features")
    return target


def format_explanation(ex: dict, top_layers: int = 10, top_neurons: int = 8) -> str:
    lines = [
        f"{ex['docid']} (label {ex['label']}): similarity {ex['similarity']:.6f} "
        f"(= {ex['score']}/{ex['denominator']}), nag_distance {ex['nag_distance']:.6f}",
        f"rank {ex['rank']} of {ex['pool_size']}; "
        + (f"selected ({_cut(ex)} keeps {ex['selected_count']})" if ex["selected"]
           else f"not selected ({_cut(ex)} keeps the first {ex['selected_count']})")
        + (f"; scored by {ex['scoring']}" if ex.get("scoring") else ""),
        "",
        f"layers by contribution (top {top_layers}; share = part of the similarity):",
        f"{'layer':>5} {'contrib':>10} {'share':>7} {'layer sim':>9}  shared neurons (neuron:weight)",
    ]
    total = ex["similarity"] or 1.0
    for layer in sorted(ex["layers"], key=lambda l: (-l["contribution"], l["layer"]))[:top_layers]:
        shared = " ".join(f"{s['neuron']}:{s['weight']:.3f}" for s in layer["shared"][:top_neurons])
        more = f" (+{len(layer['shared']) - top_neurons})" if len(layer["shared"]) > top_neurons else ""
        lines.append(
            f"{layer['layer']:>5} {layer['contribution']:>10.6f} {layer['contribution'] / total:>7.1%} "
            f"{layer['layer_similarity']:>9.4f}  {shared}{more}"
        )
    lines += ["", "nearest selected neighbours (share of (layer, neuron) pairs in common):"]
    for nb in ex["neighbours"]:
        lines.append(f"  {nb['docid']} (label {nb['label']}, rank {nb['rank']}): overlap {nb['overlap']:.3f}")
    if not ex["neighbours"]:
        lines.append("  (none: no other document is selected)")
    return "\n".join(lines)


@app.command("explain")
def explain_cmd(
    index_dir: Path = typer.Argument(..., help="A NAG index."),
    docid: str = typer.Argument(..., help="The document to explain."),
    targets: Optional[List[Path]] = typer.Argument(None, help=_TARGETS_HELP),
    target_features: Optional[Path] = _target_features_opt(),
    fraction: Optional[float] = typer.Option(None, "--fraction", "-r", help="Token budget that decides 'selected', "
                                             "as `nag query --fraction`. Default: 0.2."),
    top: Optional[int] = typer.Option(None, "--top", help="Selected = the best N, as `nag query --top`."),
    neighbours: int = typer.Option(5, "--neighbours", help="Nearest selected neighbours to list. Default: 5."),
    preset: Optional[str] = S.PRESET,
    weighting: Optional[str] = S.WEIGHTING,
    power: Optional[float] = S.POWER,
    discount: Optional[str] = S.DISCOUNT,
    top_k: Optional[int] = S.TOP_K,
    layers: Optional[str] = S.LAYERS,
    mode: Optional[str] = S.MODE,
    embedding_score: Optional[str] = S.EMBEDDING_SCORE,
    neighbours_: Optional[int] = typer.Option(None, "--embedding-neighbours", help="Target items averaged by "
                                              "--embedding-score nn (`nag query --neighbours`). Default: 10."),
    fusion: Optional[str] = S.FUSION,
    nag_weight: Optional[float] = S.NAG_WEIGHT,
    contrast: Optional[str] = S.CONTRAST,
    as_json: bool = typer.Option(False, "--json", help="Print the whole explanation as JSON (every layer and neuron)."),
    fmt: str = _fmt_opt(),
    neuron_type: str = _neuron_type_opt(),
    batch_size: int = _batch_opt(),
    progress: bool = _progress_opt(),
    model: Optional[str] = _model_opt(),
) -> None:
    """Why a document scored as it did: its rank and whether it is selected, exactly as `nag query`
    with the same options ranks and cuts; per-layer contribution, shared neurons, neighbours."""
    from nagindex.analysis import views as analysis
    from nagindex.analysis.explain import explain

    request = _query_request(targets, target_features, fraction, top, neuron_type, fmt, batch_size, progress,
                             S.scoring_flags(preset, weighting, power, discount, top_k, layers, mode, embedding_score,
                                             neighbours_, contrast, fusion, nag_weight))
    index = _open_index(index_dir, model)
    # Fail on a wrong docid before spending time on the target's extraction.
    analysis.pool_view(index, neuron_type, labels=False).row_of(docid)
    target = _query_target(index, request)
    ex = explain(index, docid, target.features, neuron_type=neuron_type, neighbours=neighbours, request=request,
                 target=target)
    typer.echo(json.dumps(ex, indent=1) if as_json else format_explanation(ex))


# -- nag plot -------------------------------------------------------------------------


@plot_app.command("scores")
def plot_scores_cmd(
    index_dir: Path = typer.Argument(..., help="A NAG index."),
    targets: Optional[List[Path]] = typer.Argument(None, help=_TARGETS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    fraction: Optional[float] = typer.Option(None, "--fraction", "-r", help="Token budget whose cut is marked, "
                                             "as `nag query --fraction`. Default: 0.2."),
    top: Optional[int] = typer.Option(None, "--top", help="Mark the cut after the best N, as `nag query --top`."),
    target_features: Optional[Path] = _target_features_opt(),
    preset: Optional[str] = S.PRESET,
    weighting: Optional[str] = S.WEIGHTING,
    power: Optional[float] = S.POWER,
    discount: Optional[str] = S.DISCOUNT,
    top_k: Optional[int] = S.TOP_K,
    layers: Optional[str] = S.LAYERS,
    mode: Optional[str] = S.MODE,
    embedding_score: Optional[str] = S.EMBEDDING_SCORE,
    neighbours: Optional[int] = S.NEIGHBOURS,
    fusion: Optional[str] = S.FUSION,
    nag_weight: Optional[float] = S.NAG_WEIGHT,
    contrast: Optional[str] = S.CONTRAST,
    fmt: str = _fmt_opt(),
    neuron_type: str = _neuron_type_opt(),
    width: int = _width_opt(),
    height: int = _height_opt(),
    batch_size: int = _batch_opt(),
    progress: bool = _progress_opt(),
    model: Optional[str] = _model_opt(),
) -> None:
    """Distribution of nag_distance per `dataset` label, with the cut of `nag query` (same options) marked."""
    from nagindex.analysis.views import pool_view
    from nagindex.analysis.explain import query_distribution, query_ranking
    from nagindex.analysis.plots import plot_scores

    size = _picture(out, width, height)
    request = _query_request(targets, target_features, fraction, top, neuron_type, fmt, batch_size, progress,
                             S.scoring_flags(preset, weighting, power, discount, top_k, layers, mode, embedding_score,
                                             neighbours, contrast, fusion, nag_weight))
    index = _open_index(index_dir, model)
    target = _query_target(index, request)
    dist = query_distribution(pool_view(index, neuron_type), query_ranking(index, request, target), request.fraction)
    plot_scores(dist, out, size=size)
    kept = int(dist["selected"].sum())
    typer.echo(f"wrote {out}: {len(dist['distance'])} documents, {kept} selected, cut at nag_distance "
               f"{dist['cut_distance']:.6f} (scored by {dist['scoring']})")


@plot_app.command("layers")
def plot_layers_cmd(
    index_dir: Path = typer.Argument(..., help="A NAG index."),
    targets: Optional[List[Path]] = typer.Argument(None, help=_TARGETS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    target_features: Optional[Path] = _target_features_opt(),
    fmt: str = _fmt_opt(),
    neuron_type: str = _neuron_type_opt(),
    width: int = _width_opt(),
    height: int = _height_opt(),
    batch_size: int = _batch_opt(),
    progress: bool = _progress_opt(),
    model: Optional[str] = _model_opt(),
) -> None:
    """Per-layer mean contribution to the similarity: target documents vs pool documents."""
    from nagindex.analysis.explain import layer_means
    from nagindex.analysis.views import pool_view, target_profile
    from nagindex.analysis.plots import plot_layers

    size = _picture(out, width, height)
    index = _open_index(index_dir, model)
    feats = _targets(index, targets, target_features, fmt, neuron_type, batch_size, progress)
    profile = target_profile(index, feats, neuron_type)
    means = layer_means(feats, pool_view(index, neuron_type, labels=False), profile.weights, profile.denominator)
    plot_layers(means, out, size=size)
    best = int(means["target"].argmax())
    typer.echo(f"wrote {out}: {len(means['layers'])} layers; the target relies most on layer {best}")


@plot_app.command("map")
def plot_map_cmd(
    index_dir: Path = typer.Argument(..., help="A NAG index."),
    targets: Optional[List[Path]] = typer.Argument(None, help="Optional target documents, drawn as black crosses. " + _TARGETS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    method: str = typer.Option("pca", "--method", help="pca (always available) or tsne (needs the `analysis` extra: scikit-learn). Default: pca."),
    per_label: int = typer.Option(300, "--per-label", help="Documents sampled per `dataset` label (and targets drawn). Default: 300."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample and of t-SNE. Default: 0."),
    target_features: Optional[Path] = _target_features_opt(),
    fmt: str = _fmt_opt(),
    neuron_type: str = _neuron_type_opt(),
    width: int = _width_opt(),
    height: int = _height_opt(),
    batch_size: int = _batch_opt(),
    progress: bool = _progress_opt(),
    model: Optional[str] = _model_opt(),
) -> None:
    """2-D map of NAG features (bag of (layer, neuron) pairs), coloured by `dataset` label."""
    from nagindex.analysis.maps import feature_map
    from nagindex.analysis.views import pool_view
    from nagindex.analysis.plots import plot_map

    size = _picture(out, width, height)
    index = _open_index(index_dir, model)
    feats = None
    if targets or target_features is not None:
        feats = _targets(index, targets, target_features, fmt, neuron_type, batch_size, progress)
    fmap = feature_map(pool_view(index, neuron_type), target_features=feats, method=method, per_label=per_label, seed=seed)
    plot_map(fmap, out, size=size)
    typer.echo(f"wrote {out}: {len(fmap['labels'])} points ({method})")
