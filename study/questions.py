"""Interview questions, each answered by a function that measures the answer on the mirrors.

Every function returns plain data (a dataclass or a dict); `study.figures` writes them into
docs/generated/ and tests/test_questions.py asserts the claim each one makes. Weights are random
(`weights.initialize`) unless said otherwise: the questions are about structure, not training.

    bert_base_parameters()      where BERT-base's 109,482,240 parameters go
    why_scale()                 score variance ~ Dh without 1/sqrt(Dh); softmax saturation
    attention_cost()            the T x T score matrix: memory exactly ~ T^2, time measured
    without_positions()         no positional encoding: permutation equivariance, bag of words
    pre_vs_post_norm()          gradient norm at the bottom of the stack against depth
    bert_vs_gpt_masks()         bidirectional padding mask vs causal mask, and what a later token changes
    layer_vs_batch_norm()       per-example independence, and padding
    model_families()            BERT, RoBERTa, DistilBERT and GPT-2 in parameters and FLOPs
"""
from __future__ import annotations

import math
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from conformance.spec import presets
from conformance import weights
from conformance.backends.build import build
from conformance.core.config import Config
from conformance.costs import flops, params
from numpy_ref.activations import softmax
from numpy_ref.attention import attention_mask
from numpy_ref.normalization import layer_norm

# A word-level vocabulary of our own: no tokenizer download, ids readable by eye.
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "the", "dog", "man", "bites", "cat", "sat", "on", "mat", "a", "barks"]


def tokenize(sentence: str, length: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """'dog bites man' -> tokens, ids (1, T) and attention mask (1, T): [CLS] ... [SEP] [PAD]..."""
    words = sentence.lower().split()
    unknown = [w for w in words if w not in VOCAB]
    if unknown:
        raise ValueError(f"sentence must use words of study.questions.VOCAB {VOCAB[3:]}; received unknown {unknown}")
    tokens = ["[CLS]", *words, "[SEP]"]
    length = length or len(tokens)
    if length < len(tokens):
        raise ValueError(f"length must be >= {len(tokens)} (the tokens with [CLS] and [SEP]); received length={length}")
    tokens += ["[PAD]"] * (length - len(tokens))
    ids = np.array([[VOCAB.index(t) for t in tokens]])                   # (1, T)
    return tokens, ids, (ids != 0).astype(np.int64)                      # (1, T)


def small(kind: str, **changes) -> Config:
    """A small model on the study vocabulary: width 64, 4 heads, 2 layers."""
    base = presets.get("bert-tiny" if kind == "bert" else "gpt2-tiny")
    return base.replace(d_model=64, num_heads=4, d_ff=256, vocab_size=len(VOCAB), max_positions=32, **changes)


# -------------------------------------------------------------------------------- parameters

def bert_base_parameters() -> dict:
    """BERT-base's parameters, split into embeddings (by table), layers (by sub-block) and pooler."""
    cfg = presets.get("bert-base")
    a = params.count(cfg)
    D, layer = cfg.d_model, a["per_layer"]["encoder"]
    embeddings = {"token (V x D)": cfg.vocab_size * D, "position (P x D)": cfg.max_positions * D,
                  "segment (G x D)": cfg.type_vocab_size * D, "layer norm (2 D)": 2 * D}
    return {"total": a["total"], "embeddings": embeddings, "embeddings_total": sum(embeddings.values()),
            "layers": cfg.num_layers, "per_layer": {k: layer[k] for k in ("attention", "feed_forward", "norms")},
            "per_layer_total": layer["total"], "layers_total": cfg.num_layers * layer["total"],
            "pooler": a["breakdown"]["pooler"]}


# -------------------------------------------------------------------------------- 1 / sqrt(Dh)

@dataclass(frozen=True)
class ScaleRow:
    head_dim: int
    score_var_unscaled: float   # var(q . k) for unit-variance q, k: ~ Dh
    score_var_scaled: float     # var(q . k / sqrt(Dh)): ~ 1
    entropy_unscaled: float     # softmax entropy over the keys, nats (uniform: log S)
    entropy_scaled: float
    max_prob_unscaled: float    # mean largest attention weight of a row (one-hot: 1)
    max_prob_scaled: float
    jacobian_unscaled: float    # mean Frobenius norm of d softmax / d scores (saturated: ~0)
    jacobian_scaled: float


def why_scale(head_dims=(16, 64, 256, 1024), keys: int = 64, rows: int = 256, seed: int = 0) -> list[ScaleRow]:
    """Random q, k with unit-variance entries: the scores' variance, and what the softmax does with them.

    The softmax Jacobian is diag(p) - p p^T; when p is one-hot it is zero, so no gradient flows.
    """
    rng = np.random.default_rng(seed)
    out = []
    for dh in head_dims:
        q = rng.standard_normal((rows, dh))                               # (rows, Dh)
        k = rng.standard_normal((keys, dh))                               # (S, Dh)
        scores = q @ k.T                                                  # (rows, S)
        stats = []
        for s in (scores, scores / math.sqrt(dh)):
            p = softmax(s)                                                # (rows, S)
            entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(-1).mean()
            frobenius2 = (p ** 2).sum(-1) - 2 * (p ** 3).sum(-1) + (p ** 2).sum(-1) ** 2   # ||diag(p) - p p^T||^2
            jac = np.sqrt(np.maximum(frobenius2, 0)).mean()                                 # rounding: >= 0
            stats.append((float(s.var()), float(entropy), float(p.max(-1).mean()), float(jac)))
        (vu, eu, mu, ju), (vs, es, ms, js) = stats
        out.append(ScaleRow(dh, vu, vs, eu, es, mu, ms, ju, js))
    return out


# -------------------------------------------------------------------------------- O(T^2)

@dataclass(frozen=True)
class CostRow:
    length: int
    score_bytes: int      # the traced `scores` tensor of the reference, B H T T x 8 (float64)
    peak_bytes: int       # tracemalloc peak of one reference attention call
    seconds: float        # best of `repeats` calls, recorded only
    flops: int            # analytic: scores + context matmuls, 4 B H T^2 Dh


def attention_cost(lengths=(256, 512, 1024, 2048), heads: int = 4, head_dim: int = 64, repeats: int = 3,
                   seed: int = 0) -> dict:
    """Run the reference `ScaledDotProductAttention` at growing T; fit log(y) = a + b log(T) for each measure."""
    if len(lengths) < 2:
        raise ValueError(f"lengths must hold at least 2 sequence lengths to fit an exponent; received {lengths}")
    cfg = Config(kind="scaled_dot_product_attention", d_model=heads * head_dim, num_heads=heads)
    m = build("numpy", cfg, {}, dtype="float64")
    rng = np.random.default_rng(seed)
    rows = []
    for T in lengths:
        q, k, v = (rng.standard_normal((1, heads, T, head_dim)) for _ in range(3))   # (B, H, T, Dh)
        _, records = m.trace(q=q, k=k, v=v)
        tracemalloc.start()
        m(q=q, k=k, v=v)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            m(q=q, k=k, v=v)
            best = min(best, time.perf_counter() - start)
        rows.append(CostRow(T, records["scores"].nbytes, peak, best, 4 * heads * T * T * head_dim))
    fit = lambda ys: float(np.polyfit(np.log(lengths), np.log(ys), 1)[0])  # noqa: E731
    return {"rows": rows, "exponent_score_bytes": fit([r.score_bytes for r in rows]),
            "exponent_peak_bytes": fit([r.peak_bytes for r in rows]),
            "exponent_seconds": fit([r.seconds for r in rows]), "exponent_flops": fit([r.flops for r in rows])}


# -------------------------------------------------------------------------------- positions

def without_positions(seed: int = 0) -> dict:
    """A BERT whose position table is zero sees a bag of words: 'dog bites man' = 'man bites dog'.

    Attention, the feed-forward and layer norm treat positions alike, so with no positional signal
    the encoder is permutation-equivariant: permuting the input tokens permutes the outputs. The
    [CLS] output, hence the pooled output, is then the same for any order of the other tokens.
    """
    cfg = small("bert")
    w = weights.initialize(cfg, seed=seed, std=0.2)
    flat = {**w, "embeddings.position.table": np.zeros_like(w["embeddings.position.table"])}
    _, a, mask = tokenize("dog bites man")
    _, b, _ = tokenize("man bites dog")
    perm = [0, 3, 2, 1, 4]  # b's tokens are a's in this order: [CLS] man bites dog [SEP]
    out = {}
    for label, table in (("with positions", w), ("without positions", flat)):
        m = build("numpy", cfg, table, dtype="float64")
        oa, ob = m(input_ids=a, attention_mask=mask), m(input_ids=b, attention_mask=mask)
        out[label] = {
            "pooled_difference": float(np.abs(oa["pooled_output"] - ob["pooled_output"]).max()),
            "permuted_difference": float(np.abs(oa["last_hidden_state"][:, perm] - ob["last_hidden_state"]).max()),
        }
    return out


# -------------------------------------------------------------------------------- pre- vs post-norm

def pre_vs_post_norm(depths=(1, 2, 4, 8, 16, 32), d_model: int = 64, length: int = 16, seeds=(0, 1, 2)) -> dict:
    """Gradient norm at the input and at layer 0's query kernel of a stack of `torch_impl.EncoderLayer`s.

    Random weights with std 1/sqrt(D) (Xavier-like: each sub-layer's output has the scale of its
    input), float64, loss = <output, a fixed random tensor> / sqrt(numel). Pre-norm stacks end with a
    final layer norm, as GPT-2 does. Returns the mean over `seeds` per depth.
    """
    import torch

    from conformance.backends import backend
    from torch_impl import EncoderLayer, LayerNorm
    if min(depths) < 1:
        raise ValueError(f"depths must be >= 1; received depths={depths}")
    out = {}
    for norm_first in (False, True):
        cfg = Config(kind="encoder_layer", d_model=d_model, num_heads=4, d_ff=4 * d_model, norm_first=norm_first,
                     layer_norm_eps=1e-5, dropout=0.0)
        rows = []
        for depth in depths:
            at_input, at_first = [], []
            for seed in seeds:
                layers = []
                for i in range(depth):
                    layer = EncoderLayer(cfg).double()
                    w = weights.initialize(cfg, seed=1000 * seed + i, std=1 / math.sqrt(d_model))
                    backend("torch").load(layer, w, "float64")
                    layers.append(layer)
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(2, length, d_model, generator=g, dtype=torch.float64, requires_grad=True)
                h = x
                for layer in layers:
                    h = layer(h)                                                        # (B, T, D)
                if norm_first:
                    h = LayerNorm(cfg).double()(h)
                loss = (h * torch.randn(h.shape, generator=g, dtype=torch.float64)).sum() / math.sqrt(h.numel())
                loss.backward()
                at_input.append(x.grad.norm().item())
                at_first.append(layers[0].attention.query.weight.grad.norm().item())
            rows.append({"depth": depth, "input_grad": float(np.mean(at_input)),
                         "first_layer_grad": float(np.mean(at_first))})
        out["pre-norm" if norm_first else "post-norm"] = rows
    return out


# -------------------------------------------------------------------------------- masks

def bert_vs_gpt_masks(sentence: str = "the dog barks", length: int = 7, seed: int = 0) -> dict:
    """The (T, T) masks each model applies (True = attend), and the effect of changing the last word.

    BERT: every query sees every non-padding key (bidirectional). GPT-2: query i sees keys 0..i
    (causal) and the padding rule. Changing the token at position p moves BERT's outputs at every
    position, GPT-2's only at positions >= p.
    """
    tokens, ids, mask = tokenize(sentence, length)
    T = ids.shape[1]
    bert_mask = attention_mask(mask, T, T, causal=False)[0, 0] & np.ones((T, T), bool)  # (T, T)
    gpt_mask = attention_mask(mask, T, T, causal=True)[0, 0]                             # (T, T)
    changed = ids.copy()
    p = int(mask.sum()) - 2  # the last word, before [SEP]
    changed[0, p] = VOCAB.index("cat")
    effect = {}
    for kind in ("bert", "gpt2"):
        cfg = small(kind)
        m = build("numpy", cfg, weights.initialize(cfg, seed=seed, std=0.2), dtype="float64")
        a = m(input_ids=ids, attention_mask=mask)["last_hidden_state"][0]                # (T, D)
        b = m(input_ids=changed, attention_mask=mask)["last_hidden_state"][0]            # (T, D)
        delta = np.abs(a - b).max(-1)                                                     # (T,)
        effect[kind] = {"before": float(delta[:p].max()), "at_and_after": float(delta[p:int(mask.sum())].max())}
    return {"tokens": tokens, "changed_position": p, "bert_mask": bert_mask, "gpt2_mask": gpt_mask,
            "effect": effect}


# -------------------------------------------------------------------------------- layer norm vs batch norm

def batch_norm(x, mask=None, eps: float = 1e-5):
    """Training-mode batch norm of (B, T, D): each feature over every (example, position) kept by mask."""
    keep = np.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)             # (B, T)
    rows = x[keep]                                                                        # (N, D)
    return (x - rows.mean(0)) / np.sqrt(rows.var(0) + eps)                                # (B, T, D)


def layer_vs_batch_norm(seed: int = 0) -> dict:
    """How much example 0's normalized output moves when (a) another example in the batch changes,
    (b) the batch is padded to a longer length (the pads counted as positions, as a naive batch norm
    does). Layer norm works per position, so neither moves it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 6, 16))                                                   # (B, T, D)
    other = x.copy()
    other[1:] = 3.0 * rng.standard_normal((3, 6, 16)) + 1.0                             # the rest of the batch
    padded = np.concatenate([x, np.zeros((4, 4, 16))], axis=1)                           # (B, T + 4, D)
    ones, zeros = np.ones(16), np.zeros(16)
    ln = lambda a: layer_norm(a, ones, zeros, 1e-5)  # noqa: E731
    move = lambda f, g: float(np.abs(f[0, :6] - g[0, :6]).max())  # noqa: E731
    return {"batch_norm": {"other_examples": move(batch_norm(x), batch_norm(other)),
                           "padding": move(batch_norm(x), batch_norm(padded))},
            "layer_norm": {"other_examples": move(ln(x), ln(other)), "padding": move(ln(x), ln(padded))}}


# -------------------------------------------------------------------------------- families

@dataclass(frozen=True)
class Family:
    name: str
    config: Config
    pooler: bool           # BertModel / RobertaModel have one, DistilBertModel does not
    differs: str           # what changes against BERT-base
    hf_class: str          # the `transformers` base model with the same parameters
    hf_config: dict


def families() -> list[Family]:
    bert = presets.get("bert-base")
    return [
        Family("BERT-base", bert, True, "(the reference)", "BertModel", {"model_type": "bert"}),
        Family("RoBERTa-base", bert.replace(vocab_size=50265, max_positions=514, type_vocab_size=1), True,
               "byte-level BPE vocabulary 50,265; 514 position rows (positions start after the padding id); "
               "one segment type; training changes (no next-sentence task, dynamic masking) cost nothing",
               "RobertaModel", {"model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 514,
                                "type_vocab_size": 1}),
        Family("DistilBERT-base", bert.replace(num_layers=6, type_vocab_size=0), False,
               "6 layers instead of 12; no segment embeddings; no pooler", "DistilBertModel",
               {"model_type": "distilbert"}),
        Family("GPT-2 (124M)", presets.get("gpt2"), False,
               "decoder-only: causal, pre-norm with a final layer norm, tanh GELU, vocabulary 50,257, "
               "1,024 positions, no segments, no pooler; the LM head is the token table (tied, no parameters)",
               "GPT2Model", {"model_type": "gpt2"}),
    ]


def model_families(seq_len: int = 128) -> list[dict]:
    """Parameters (`costs.params.count`) and forward FLOPs of the base model (`costs.flops`, no
    LM head: GPT-2's tied `logits` left out) at B = 1, T = `seq_len`; DistilBERT is BERT's count
    without the pooler."""
    out = []
    for f in families():
        a = params.count(f.config)
        ops = [o for o in flops.ops(f.config, 1, seq_len)
               if (f.pooler or not o.name.startswith("pooler")) and o.name != "logits"]
        pooler = 0 if f.pooler else a["breakdown"]["pooler"]
        out.append({"model": f.name, "parameters": a["total"] - pooler,
                    "embeddings": a["breakdown"]["embeddings"], "layers": f.config.num_layers,
                    "layer_parameters": sum(n * a["per_layer"][k]["total"] for k, n in a["layers"].items()),
                    "flops": flops.totals(ops)["all"], "differs": f.differs})
    return out


def transformers_parameters(family: Family) -> int:
    """`num_parameters()` of the `transformers` base model for `family`, built on the meta device."""
    import torch
    import transformers
    config = transformers.AutoConfig.for_model(**family.hf_config)
    with torch.device("meta"):
        return getattr(transformers, family.hf_class)(config).num_parameters()
