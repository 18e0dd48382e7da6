"""Memory from the config alone: weights, activations, training state.

Shape legend as in `flops`; f is the bytes of one activation (4 in float32), masks are bool
(1 byte), token ids int64 (8 bytes).

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

from conformance.core.config import Config
from conformance.costs import flops
from conformance.costs.params import layer_lists

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
LIVE = {"torch": (4, 2), "tf": (4, 4), "numpy": (5, 4)}  # (score-shaped k, (B, T, F) m) at the inference peak
TRAINING_STATE = {  # bytes per parameter
    "float32 + AdamW": {"weights": 4, "gradients": 4, "master copy": 0, "AdamW moments": 8},
    "mixed precision + AdamW": {"weights": 2, "gradients": 2, "master copy": 4, "AdamW moments": 8},
}


def attention_saved(cfg, B, T, S, causal, f, dropout, self_attention=True):
    """(tensor, bytes) that one attention sub-block saves for backward, its layer norm included."""
    D, H = cfg.d_model, cfg.num_heads
    out = [("q/k/v input" if self_attention else "query input", B * T * D * f),
           ("q (B H, T, Dh) copy for the batched matmul", B * T * D * f),
           ("k^T (B H, Dh, S) copy", B * S * D * f), ("v (B H, S, Dh) copy", B * S * D * f),
           ("attention mask", (B * T * S if causal else B * S)),
           ("softmax output", B * H * T * S * f), ("row-has-a-key mask", B * T if causal else B),
           ("probabilities, fully masked rows zeroed", B * H * T * S * f),
           ("merged heads (output projection input)", B * T * D * f)]
    if dropout:
        out.append(("residual dropout keep mask", B * T * D))
    return out + [("layer-norm input", B * T * D * f), ("layer-norm mean and 1/std", 2 * B * T * f)]


def feed_forward_saved(cfg, B, T, f, dropout):
    D, F = cfg.d_model, cfg.d_ff
    out = [("feed-forward input", B * T * D * f), ("activation input", B * T * F * f),
           ("outer projection input", B * T * F * f)]
    if dropout:
        out += [("inner dropout keep mask", B * T * F), ("residual dropout keep mask", B * T * D)]
    return out + [("layer-norm input", B * T * D * f), ("layer-norm mean and 1/std", 2 * B * T * f)]


def layer_saved(cfg, B, T, f, dropout, S=None):
    """An encoder layer (S None) or a decoder layer (cross-attention over S positions)."""
    out = attention_saved(cfg, B, T, T, cfg.causal if S is None else True, f, dropout)
    if S is not None:
        out += attention_saved(cfg, B, T, S, False, f, dropout, self_attention=False)
    return out + feed_forward_saved(cfg, B, T, f, dropout)


def model_saved(cfg, B, T, f, dropout):
    """(tensor, bytes) saved outside the layers: ids, embeddings, the head's inputs."""
    D, keep = cfg.d_model, (B * T * cfg.d_model if dropout else 0)
    if cfg.kind == "bert":
        out = [("token, position, segment ids", (2 * B * T + T) * 8), ("embedding layer-norm input", B * T * D * f),
               ("embedding layer-norm mean and 1/std", 2 * B * T * f), ("embedding dropout keep mask", keep),
               ("last hidden state (head input)", B * T * D * f)]
        if cfg.head in ("none", "classification"):
            out.append(("pooler tanh output", B * D * f))
        if cfg.head == "mlm":
            out += [("mlm activation input", B * T * D * f), ("mlm layer-norm input", B * T * D * f),
                    ("mlm layer-norm mean and 1/std", 2 * B * T * f), ("mlm decoder input", B * T * D * f)]
        return out
    if cfg.kind == "gpt2":
        return [("token and position ids", (B * T + T) * 8), ("embedding dropout keep mask", keep),
                ("final layer-norm input", B * T * D * f), ("final layer-norm mean and 1/std", 2 * B * T * f),
                ("logits input", B * T * D * f)]
    S, T = T, flops.target_length(cfg, T)
    return [("source and target ids", B * (S + T) * 8),
            ("embedding dropout keep masks", (B * (S + T) * D) if dropout else 0),
            ("encoder output (every cross-attention's k/v input)", B * S * D * f), ("logits input", B * T * D * f)]


def activations(cfg: Config, B: int, T: int, f: int = 4, dropout: bool | None = None) -> dict:
    """Training (saved for backward; no, selective and full recomputation) and inference bytes."""
    dropout = cfg.dropout > 0 if dropout is None else dropout
    counts, S = layer_lists(cfg), T
    layers = {"encoder": layer_saved(cfg, B, S, f, dropout)} if "encoder" in counts else {
        "layers": layer_saved(cfg, B, T, f, dropout)}
    if "decoder" in counts:
        T = flops.target_length(cfg, T)
        layers["decoder"] = layer_saved(cfg, B, T, f, dropout, S=S)
    per_layer = {name: sum(b for _, b in saved) for name, saved in layers.items()}
    score = {name: sum(b for what, b in saved if what in SCORE_SHAPED) for name, saved in layers.items()}
    inputs = {"encoder": B * S * cfg.d_model * f, "layers": B * T * cfg.d_model * f, "decoder": B * T * cfg.d_model * f}
    top = sum(b for _, b in model_saved(cfg, B, S, f, dropout))
    none = top + sum(counts[k] * per_layer[k] for k in layers)
    return {
        "saved_per_layer": {k: [{"tensor": w, "bytes": b} for w, b in v] for k, v in layers.items()},
        "training_per_layer": per_layer,
        "training": {"none": none,
                     "selective": none - sum(counts[k] * score[k] for k in layers),
                     "full": top + sum(counts[k] * inputs[k] for k in layers) + max(per_layer.values())},
        "inference_peak": {fw: inference_peak(cfg, B, S, f, *LIVE[fw]) for fw in LIVE},
    }


SCORE_SHAPED = ("attention mask", "softmax output", "row-has-a-key mask", "probabilities, fully masked rows zeroed")


def inference_peak(cfg: Config, B: int, T: int, f: int, k: int, m: int) -> int:
    """Bytes alive at the largest moment of a forward without autograd (see the module docstring).

    attention: layer input, q, k, v (B S D each) and k score-shaped tensors (+ a causal bool mask);
    feed-forward: its input and m (B, T, F) tensors; head: the last hidden state and the logits
    (twice for BERT's MLM head: the product, then + bias).
    """
    D, F, H, V = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.vocab_size
    S = T
    if cfg.kind == "transformer":
        T = flops.target_length(cfg, T)
    stages = [(B * T * D + 2 * B * S * D + B * T * D) * f + k * B * H * T * S * f + (B * T * S if cfg.causal else 0),
              B * T * D * f + m * B * T * F * f]
    if cfg.kind in ("gpt2", "transformer") or cfg.head == "mlm":
        stages.append(B * T * D * f + (2 if cfg.head == "mlm" else 1) * B * T * V * f)
    return max(stages)


def section(cfg: Config, batch: int, seq_len: int, params: int) -> dict:
    return {"weights": {dtype: params * b for dtype, b in BYTES.items()},
            "activations_float32": activations(cfg, batch, seq_len),
            "training_state": {regime: {**parts, "per_parameter": sum(parts.values()),
                                        "bytes": params * sum(parts.values())}
                               for regime, parts in TRAINING_STATE.items()}}
