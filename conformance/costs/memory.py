"""Memory from the config alone: weights, activations, training state.

Shape legend as in `flops`; f is the bytes of one activation (4 in float32), masks are bool
(1 byte), token ids int64 (8 bytes). Each numpy_ref module declares what it keeps
(`Module.saved`) and what it holds at once in inference (`Module.peak`); a model's figure is the
sum (or, for the peak, the largest stage) over its module tree.

Training: what backward needs, listed tensor by tensor as this project's PyTorch mirror saves
it (the unfused path; `tests/test_costs.py` checks the list against the tensors autograd
actually holds). Per layer, with dropout on:
    floats  8 B T D + 2 B T F + 2 B H T S + 4 B T    (two score-shaped tensors: the softmax
            output and the copy with fully masked rows zeroed; a fused softmax keeps one)
    bools   2 B T D + B T F + mask                   (dropout keep masks, the attention mask)
BERT-base, B = 1, T = 128, float32: 8.5 MB a layer. The T^2 term is Korthikanti et al. 2022's
5 a s / h; their 34 s b h for the rest assumes 16-bit activations and attention dropout.
    selective recomputation  keep all but the score-shaped tensors, recompute the attention core
    full recomputation       keep each layer's input (B T D), recompute one layer at a time

Inference (no autograd): nothing is kept across layers; the peak is the largest set of tensors
alive at once inside one layer. The mirrors keep `k` score-shaped tensors alive at the end of
the masked softmax (read off the code: scores, masked scores, softmax output, zeroed rows; NumPy's
softmax adds exp()) and `m` (B, T, F) tensors in the feed-forward (inner and activated; the
written-out GELU of NumPy and TensorFlow adds its temporaries).

Training state per parameter, AdamW (two moments): float32 4 + 4 (gradient) + 8 (moments)
= 16 bytes; mixed precision 2 (16-bit weights) + 2 (gradients) + 4 (float32 master copy) + 8 =
16 bytes (Rajbhandari et al. 2020, ZeRO). int8 weights ignore quantization scales.
"""
from __future__ import annotations

import re

from conformance.core.config import Config
from conformance.costs.flops import input_shapes
from conformance.spec import registry

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
LIVE = {"torch": (4, 2), "tf": (4, 4), "numpy": (5, 4)}  # (score-shaped k, (B, T, F) m) at the inference peak
TRAINING_STATE = {  # bytes per parameter
    "float32 + AdamW": {"weights": 4, "gradients": 4, "master copy": 0, "AdamW moments": 8},
    "mixed precision + AdamW": {"weights": 2, "gradients": 2, "master copy": 4, "AdamW moments": 8},
}
SCORE_SHAPED = ("attention mask", "softmax output", "row-has-a-key mask", "probabilities, fully masked rows zeroed")


def saved(cfg: Config, B: int, T: int, f: int = 4) -> list:
    """Every `Saved` tensor of one training forward of `cfg` at (B, T)."""
    return list(registry.get(cfg.kind).reference(cfg).saved(f, **input_shapes(cfg, B, T)))


def activations(cfg: Config, B: int, T: int, f: int = 4, dropout: bool | None = None) -> dict:
    """Training (saved for backward; no, selective and full recomputation) and inference bytes.
    `dropout=False` counts a run without dropout's keep masks (default: on when cfg.dropout > 0)."""
    if dropout is False:
        cfg = cfg.replace(dropout=0.0)
    records = saved(cfg, B, T, f)
    stacks: dict[str, dict] = {}  # "encoder" -> {layer index: [Saved]}
    top = 0
    for r in records:
        m = re.match(r"(\w+)\.(\d+)(\.|$)", r.name)
        if m:
            stacks.setdefault(m.group(1), {}).setdefault(m.group(2), []).append(r)
        else:
            top += r.bytes
    first = {name: layers["0"] for name, layers in stacks.items()}
    per_layer = {name: sum(r.bytes for r in rs) for name, rs in first.items()}
    score = {name: sum(r.bytes for r in rs if r.tensor in SCORE_SHAPED) for name, rs in first.items()}
    inputs = {name: rs[0].bytes for name, rs in first.items()}  # each layer's first record: its input
    counts = {name: len(layers) for name, layers in stacks.items()}
    none = sum(r.bytes for r in records)
    return {
        "saved_per_layer": {k: [{"tensor": _within_layer(r), "bytes": r.bytes} for r in rs] for k, rs in first.items()},
        "training_per_layer": per_layer,
        "training": {"none": none,
                     "selective": none - sum(counts[k] * score[k] for k in first),
                     "full": top + sum(counts[k] * inputs[k] for k in first) + max(per_layer.values(), default=0)},
        "inference_peak": {fw: inference_peak(cfg, B, T, f, LIVE[fw]) for fw in LIVE},
    }


def _within_layer(r) -> str:
    """"attention: softmax output" for a record of `encoder.0.attention`."""
    within = r.name.split(".", 2)[2] if r.name.count(".") >= 2 else ""
    return f"{within}: {r.tensor}" if within else r.tensor


def inference_peak(cfg: Config, B: int, T: int, f: int, live: tuple) -> int:
    """Bytes alive at the largest moment of a forward without autograd: each module's `peak`
    (attention: its input, q, k, v and `live[0]` score-shaped tensors; feed-forward: its input
    and `live[1]` (B, T, F) tensors; a head: the last hidden state and the logits)."""
    return registry.get(cfg.kind).reference(cfg).peak(f, live, **input_shapes(cfg, B, T))


def kv_cache_per_token(cfg: Config, f: int) -> int:
    """Bytes of key/value cache a generated token adds, over every causal self-attention layer
    (each declares its `cache_bytes`): 2 L KV Dh f. llama3-8b in bfloat16: 2 x 32 x 8 x 128 x 2 =
    128 KiB a token, 1 GiB at 8,192 tokens; with 32 key/value heads it would be 4 GiB."""
    model = registry.get(cfg.kind).reference(cfg)
    return sum(m.cache_bytes(f) for _, m in model.named_modules() if hasattr(m, "cache_bytes"))


def kv_cache_per_source_token(cfg: Config, f: int) -> int:
    """Bytes an encoder-decoder's cache keeps a source token: every decoder layer's cross-attention k and v
    of the encoder's output, 2 L' KV Dh f, computed on the first step and read by every later one (each
    declares `cache_bytes(f, source=True)`). t5-small in float32: 2 x 6 x 8 x 64 x 4 = 24 KiB, as much
    as a target token's self-attention keeps."""
    model = registry.get(cfg.kind).reference(cfg)
    return sum(m.cache_bytes(f, source=True) for _, m in model.named_modules() if hasattr(m, "cache_bytes"))


def kv_cache(cfg: Config, batch: int, tokens: int, source: int = 0) -> dict:
    """The cache at `tokens` tokens a sequence (and, for an encoder-decoder, `source` source tokens), per
    dtype, and what it would be with one key/value head per query head (no grouping) for comparison."""
    full = cfg.replace(num_kv_heads=None)
    dtypes = [d for d in BYTES if d != "int8"]
    return {"tokens": tokens, "source_tokens": source, "batch": batch, "kv_heads": cfg.kv_heads,
            "num_heads": cfg.num_heads,
            "per_token": {d: kv_cache_per_token(cfg, BYTES[d]) for d in dtypes},
            "per_source_token": {d: kv_cache_per_source_token(cfg, BYTES[d]) for d in dtypes},
            "bytes": {d: batch * (tokens * kv_cache_per_token(cfg, BYTES[d])
                                  + source * kv_cache_per_source_token(cfg, BYTES[d])) for d in dtypes},
            "bytes_without_grouping": {d: batch * (tokens * kv_cache_per_token(full, BYTES[d])
                                                   + source * kv_cache_per_source_token(full, BYTES[d]))
                                       for d in dtypes}}


def section(cfg: Config, batch: int, seq_len: int, params: int) -> dict:
    source = cfg.longest if kv_cache_per_source_token(cfg, 4) else 0  # an encoder-decoder's: its source's too
    return {"weights": {dtype: params * b for dtype, b in BYTES.items()},
            "kv_cache": kv_cache(cfg, batch, cfg.longest, source) if kv_cache_per_token(cfg, 4) else None,
            "activations_float32": activations(cfg, batch, seq_len),
            "training_state": {regime: {**parts, "per_parameter": sum(parts.values()),
                                        "bytes": params * sum(parts.values())}
                               for regime, parts in TRAINING_STATE.items()}}
