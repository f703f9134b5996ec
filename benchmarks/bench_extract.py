"""Extraction throughput: nagindex against a reference-style extraction, side by side.

The reference does what the upstream research code does: the full causal-LM
forward WITH the LM head, eager attention, hooks for all six neuron types on
every layer (the up projection computed a second time from the MLP input),
batches in input order left-padded to their longest document, impacts
computed from the kept projection outputs after the forward. nagindex computes
only the requested types (default fwd_up) with sdpa attention, no LM head,
length-sorted right-padded batches under the causal mask alone, and top-K
inside the hooks, stopping after the last layer's up projection.

Both run in this process on the same model, the same documents (a fixed-seed
sample of ../shared/eval/pool.jsonl.gz), the same K and max_length. Prints
docs/s of both, the ratio, and how many fwd_up features agree.

    python benchmarks/bench_extract.py                       # embedded SmolLM2-135M, 600 docs, CPU
    python benchmarks/bench_extract.py --device cuda --model-config qwen3-1.7b --n 2000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nagindex.extraction.backbones import backbone_from_model, load_backbone, resolve_dtype  # noqa: E402
from nagindex.extraction.features import extract_texts  # noqa: E402
from nagindex.schemas import NEURON_TYPES, parse_neuron_types  # noqa: E402

DEFAULT_POOL = Path(__file__).resolve().parents[2] / "shared" / "eval" / "pool.jsonl.gz"


def sample_documents(path: Path, n: int, seed: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    return [texts[i] for i in sorted(rng.sample(range(len(texts)), n))]


def qwen3_1_7b_config():
    """Qwen3-1.7B's shapes, random-init (no download): 28 layers, 2048 wide, GQA 16/8, q/k norm."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
    )


def smollm2_135m_config():
    """SmolLM2-135M's shapes, random-init: for machines without the embedded model's cache."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )


MODEL_CONFIGS = {"qwen3-1.7b": qwen3_1_7b_config, "smollm2-135m": smollm2_135m_config}


# --------------------------------------------------------------------------
# Reference-style extraction (what the upstream research code does)
# --------------------------------------------------------------------------


def reference_extract(model, tokenizer, texts, *, top_k: int, max_length: int, batch_size: int) -> dict[str, np.ndarray]:
    layers = model.model.layers
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    qk_norm = hasattr(layers[0].self_attn, "q_norm")
    kept: dict[tuple[str, int], torch.Tensor] = {}

    def keep(name, li, per_head=False):
        def hook(mod, args, out):
            kept[(name, li)] = out.flatten(2) if per_head else out
        return hook

    def up_again(li):
        def hook(mod, args, out):
            kept[("fwd_up", li)] = mod.up_proj(args[0])  # the up projection, computed twice
        return hook

    handles = []
    for li, layer in enumerate(layers):
        att = layer.self_attn
        handles += [
            (att.q_norm if qk_norm else att.q_proj).register_forward_hook(keep("att_q", li, qk_norm)),
            (att.k_norm if qk_norm else att.k_proj).register_forward_hook(keep("att_k", li, qk_norm)),
            att.v_proj.register_forward_hook(keep("att_v", li)),
            att.o_proj.register_forward_hook(keep("att_o", li)),
            layer.mlp.register_forward_hook(up_again(li)),
            layer.mlp.down_proj.register_forward_hook(keep("fwd_down", li)),
        ]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = {t: [] for t in NEURON_TYPES}
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length, add_special_tokens=False).to(device)
                kept.clear()
                model(**enc)  # the full causal LM: logits included
                mask = enc["attention_mask"].unsqueeze(-1).float()
                for t in NEURON_TYPES:
                    per_layer = []
                    for li in range(len(layers)):
                        h = kept[(t, li)].float()
                        if t in ("att_k", "att_v"):
                            b, s, _ = h.shape
                            h = h.view(b, s, kv_heads, -1).repeat_interleave(heads // kv_heads, dim=2).reshape(b, s, -1)
                        impact = (h.abs() * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
                        per_layer.append(torch.topk(impact, top_k, dim=-1).indices)
                    out[t].append(torch.stack(per_layer, 1).reshape(len(per_layer[0]), -1).cpu())
    finally:
        for h in handles:
            h.remove()
    return {t: torch.cat(v).numpy().astype(np.uint16) for t, v in out.items()}


# --------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600, help="documents (default 600)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--pool", type=Path, default=DEFAULT_POOL, help="JSONL(.gz) with a 'text' field")
    p.add_argument("--batch-size", type=int, default=32, help="documents per forward (default 32)")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-length", type=int, default=120)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="fp32 / bf16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--neuron-types", default="fwd_up", help="what nagindex extracts (default fwd_up)")
    p.add_argument("--model-config", default=None, choices=[None, *MODEL_CONFIGS],
                   help="random-init model of these shapes instead of the embedded SmolLM2-135M")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory for --model-config (default: the embedded one)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved reference/nagindex rounds (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = sample_documents(args.pool, args.n, args.seed)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model_config:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else load_backbone(device="cpu").tokenizer
        torch.manual_seed(0)
        cfg = MODEL_CONFIGS[args.model_config]()
        model = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(args.dtype, device))
        bb = backbone_from_model(model.to(device), tokenizer, f"random-{args.model_config}")
    else:
        bb = load_backbone(device=device, dtype=args.dtype)
    model = bb.model
    types = parse_neuron_types(args.neuron_types)
    kw = dict(top_k=args.top_k, max_length=args.max_length, batch_size=args.batch_size)
    print(f"model {bb.name}: L={bb.num_layers}, fwd_up width {bb.width('fwd_up')}, device {bb.device}, "
          f"dtype {bb.dtype}, threads {torch.get_num_threads()}; {len(texts)} docs, K={args.top_k}, "
          f"max_length={args.max_length}, batch {args.batch_size}, {args.rounds} interleaved rounds", flush=True)

    def sync():
        if bb.device.type == "cuda":
            torch.cuda.synchronize()

    def run_reference(chunk):
        model.set_attn_implementation("eager")
        return reference_extract(model, bb.tokenizer, chunk, **kw)

    def run_nagindex(chunk):
        model.set_attn_implementation("sdpa")
        return extract_texts(bb, chunk, neuron_types=types, **kw)

    # Warm up both paths (allocator, kernels, and on a GPU the kernels of every
    # sequence length that length-sorted batches meet).
    warm = texts[: args.batch_size * (4 if bb.device.type == "cuda" else 1)]
    run_reference(warm)
    run_nagindex(warm)

    # Interleave the two in rounds, so that a change in machine load (other
    # jobs, clocks) falls on both alike. CPU time (this process's user+sys) is
    # reported next to wall time: on a shared machine it is the steadier
    # measure of work done (use --threads 1 there, so no thread spin-waits).
    wall = {"ref": 0.0, "ours": 0.0}
    cpu = {"ref": 0.0, "ours": 0.0}
    ref_parts, our_parts = [], []
    bounds = np.linspace(0, len(texts), args.rounds + 1).astype(int)
    done = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunk = texts[a:b]
        for name, fn, parts in (("ref", run_reference, ref_parts), ("ours", run_nagindex, our_parts)):
            sync(); w0, c0 = time.perf_counter(), time.process_time()
            parts.append(fn(chunk))
            sync(); wall[name] += time.perf_counter() - w0; cpu[name] += time.process_time() - c0
        done += len(chunk)
        print(f"  after {done} docs: reference {done / wall['ref']:8.2f} docs/s ({done / cpu['ref']:.2f} per CPU-s), "
              f"nagindex {done / wall['ours']:8.2f} docs/s ({done / cpu['ours']:.2f} per CPU-s); "
              f"speed-up {wall['ref'] / wall['ours']:.2f}x wall, {cpu['ref'] / cpu['ours']:.2f}x CPU", flush=True)
    ref = {t: np.concatenate([r[t] for r in ref_parts]) for t in NEURON_TYPES}
    ours = {t: np.concatenate([r[t] for r in our_parts]) for t in types}
    n = len(texts)
    print(f"reference-style (LM head, eager, 6 types, input order): {n / wall['ref']:8.2f} docs/s  "
          f"({wall['ref']:.1f} s wall, {cpu['ref']:.1f} CPU-s)")
    print(f"nagindex ({','.join(types)}, sdpa, no head, length-sorted): {n / wall['ours']:8.2f} docs/s  "
          f"({wall['ours']:.1f} s wall, {cpu['ours']:.1f} CPU-s)")
    print(f"speed-up: {wall['ref'] / wall['ours']:.2f}x (wall time), {cpu['ref'] / cpu['ours']:.2f}x (CPU time)")
    for t in types:
        rows = float((ours[t] == ref[t]).all(axis=1).mean())
        entries = float((ours[t] == ref[t]).mean())
        print(f"{t}: identical rows {rows:.3f}, identical entries {entries:.4f} "
              "(eager vs sdpa rounding can swap near-tied neurons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
