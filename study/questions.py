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
    model_families()            BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA, DeBERTa-v3, GPT-2: parameters, FLOPs
    decoding_strategies()       greedy vs beam vs sampling on one model; what length_penalty does to the length
    rotary_is_relative()        RoPE scores depend on m - n only; an additive encoding's do not
    rms_vs_layer_norm()         equal on zero-mean rows; the FLOPs and parameters RMSNorm saves
    swiglu_width()              why SwiGLU's inner width is 8/3 D at a 4 D GELU MLP's parameters
    efficient_attention()       tiled (flash) attention: the same output, peak memory linear in T, not quadratic
    lora_parameters()           why LoRA trains so few parameters: r (in + out) a target against in x out
    fine_tuning_methods()       full, frozen, layer-wise, accumulation, mixed precision, LoRA: trainable, memory
"""
from __future__ import annotations

import functools
import math
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from conformance.spec import presets
from conformance import weights
from conformance.backends.build import build
from conformance.core.config import Config
from conformance.costs import flops, memory, params
from conformance.generate import log_softmax, search
from conformance.training import TrainConfig, train
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
    preset: str            # the model itself: `conformance.spec.presets`, its Config as the mirrors build it
    differs: str           # what changes against BERT-base

    @property
    def config(self) -> Config:
        return presets.get(self.preset)


def families() -> list[Family]:
    return [
        Family("BERT-base", "bert-base", "(the reference)"),
        Family("RoBERTa-base", "roberta-base",
               "byte-level BPE vocabulary 50,265; 514 position rows (numbered from the padding id + 1, padding "
               "skipped); one segment type; LN eps 1e-5; training changes (no next-sentence task, dynamic "
               "masking) cost nothing"),
        Family("DistilBERT-base", "distilbert-base", "6 layers instead of 12; no segment embeddings; no pooler"),
        Family("ALBERT-base-v2", "albert-base-v2",
               "embeddings factorized to E = 128 and projected to 768; one layer's weights shared by all 12 "
               "(parameters of 1 layer, FLOPs of 12); vocabulary 30,000; tanh GELU"),
        Family("ELECTRA-small", "electra-small",
               "the discriminator: D = 256, 4 heads, F = 1,024, embeddings E = 128 projected to 256; no pooler"),
        Family("ELECTRA-base", "electra-base", "BERT-base's shapes without the pooler (the discriminator's "
                                               "replaced-token head sits on top)"),
        Family("DeBERTa-v3-base", "deberta-v3-base",
               "no absolute positions: one relative table (512 rows) and disentangled attention (content-to-"
               "position and position-to-content terms, each layer projecting the table); vocabulary 128,100; "
               "no segments, no pooler"),
        Family("GPT-2 (124M)", "gpt2",
               "decoder-only: causal, pre-norm with a final layer norm, tanh GELU, vocabulary 50,257, "
               "1,024 positions, no segments, no pooler; the LM head is the token table (tied, no parameters)"),
    ]


def model_families(seq_len: int = 128) -> list[dict]:
    """Parameters (`costs.params.count`) and forward FLOPs (`costs.flops`) of each family's base model,
    as its preset declares it (a pooler where the model has one; no LM head: GPT-2's tied `logits` left
    out), at B = 1, T = `seq_len`. "layer parameters" are the distinct layer weights (ALBERT: one layer)."""
    out = []
    for f in families():
        cfg = f.config
        a = params.count(cfg)
        ops = [o for o in flops.ops(cfg, 1, seq_len) if o.name != "logits"]
        out.append({"model": f.name, "parameters": a["total"],
                    "embeddings": a["breakdown"]["embeddings"], "layers": cfg.num_layers,
                    "layer_parameters": sum(n * a["per_layer"][k]["total"] for k, n in a["layers"].items()),
                    "flops": flops.totals(ops)["all"], "differs": f.differs})
    return out


def transformers_parameters(family: Family) -> int:
    """`num_parameters()` of the `transformers` model of `family`'s checkpoint layout (`RobertaModel`,
    `AlbertModel`, `DebertaV2Model`, ...), built from the config `to_hf` writes, on the meta device."""
    return params.transformers_count(family.config)["total"]


# -------------------------------------------------------------------------------- decoding

# A corpus whose continuations of "[CLS] the dog" have known probabilities (count / 20) and lengths.
CORPUS = {"the dog barks": 6, "the dog bites the man": 5, "the dog sat on the mat": 4, "the dog sat on a mat": 3,
          "the dog sat on a cat": 2}
PROMPT = "the dog"
EOS = VOCAB.index("[SEP]")


def words(ids) -> str:
    return " ".join(VOCAB[i] for i in ids)


@functools.lru_cache(maxsize=None)
def toy_lm(steps: int = 60, seed: int = 0) -> tuple[Config, dict]:
    """A one-layer GPT-2 (D = 16) trained on `CORPUS` by the NumPy reference (`conformance.training`, 60 AdamW
    steps on the whole corpus, under a second): small enough to read, trained enough to end its sentences."""
    cfg = small("gpt2").replace(d_model=16, num_heads=2, d_ff=64, num_layers=1, dropout=0.0)
    sentences = [s for s, n in CORPUS.items() for _ in range(n)]
    T = max(len(s.split()) for s in sentences) + 2
    ids = np.zeros((len(sentences), T), np.int64)                                        # (N, T) [PAD] = 0
    for i, s in enumerate(sentences):
        ids[i, :len(s.split()) + 2] = [VOCAB.index(t) for t in ["[CLS]", *s.split(), "[SEP]"]]
    batch = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "labels": np.where(ids != 0, ids, -100)}
    tcfg = TrainConfig(task="causal_lm", steps=steps, micro_batch_size=len(sentences), seq_len=T, learning_rate=3e-2,
                       warmup_steps=5, weight_decay=0.0)
    return cfg, train("numpy", cfg, weights.initialize(cfg, seed=seed, std=0.02), [batch] * steps, tcfg).weights


@dataclass(frozen=True)
class Decoded:
    strategy: str          # e.g. "beam (4 beams, length_penalty 1.0)"
    text: str              # the continuation, up to and including [SEP]
    length: int            # its tokens, [SEP] included: what the length penalty divides by
    log_prob: float        # the model's log-probability of it
    score: float           # what the strategy ranked by: log_prob / length ** length_penalty for beams


def _decoded(label: str, out, row: int = 0, length_penalty: float = 0.0) -> Decoded:
    n = int(out.lengths[row])
    new = out.sequences[row, len(PROMPT.split()) + 1:][:n]
    return Decoded(label, words(new), n, float(out.scores[row]) * n ** length_penalty, float(out.scores[row]))


def decoding_strategies(num_beams: int = 3, penalties=(-1.0, 0.0, 0.5, 1.0, 2.0), samples: int = 5) -> dict:
    """Greedy, beam search and sampling on one model and prompt ("[CLS] the dog"), and beam search's choice
    as length_penalty varies: the measured continuations, their lengths and log-probabilities.

    Beam search ranks finished hypotheses by log p / length ** length_penalty: at 0 by the plain sum, which
    every extra token lowers, so the shortest wins; the larger the penalty, the more a long hypothesis's sum
    is divided, and the longer the winner.
    """
    cfg, w = toy_lm()
    m = build("numpy", cfg, w, dtype="float64")
    prompt = np.array([[VOCAB.index(t) for t in ["[CLS]", *PROMPT.split()]]])           # (1, T)
    limit = dict(max_new_tokens=8, eos_token_id=EOS)
    rows = [_decoded("greedy", search(m, prompt, **limit))]
    beam = search(m, prompt, strategy="beam", num_beams=num_beams, **limit)
    rows.append(_decoded(f"beam ({num_beams} beams, length_penalty 1.0)", beam, length_penalty=1.0))
    rows += [_decoded(f"sample (seed {seed})", search(m, prompt, strategy="sample", seed=seed, **limit))
             for seed in range(samples)]
    by_penalty = [_decoded(f"length_penalty {lp:g}", search(m, prompt, strategy="beam", num_beams=num_beams,
                                                           length_penalty=lp, **limit), length_penalty=lp)
                  for lp in penalties]
    corpus = {s[len(PROMPT) + 1:]: (n / sum(CORPUS.values()), continuation_log_prob(m, s[len(PROMPT) + 1:]))
              for s, n in CORPUS.items()}
    return {"strategies": rows, "length_penalty": by_penalty, "corpus": corpus, "num_beams": num_beams}


def continuation_log_prob(model, continuation: str) -> float:
    """The model's log p of `continuation` [SEP] after "[CLS] the dog", from one forward pass."""
    ids = np.array([[VOCAB.index(t) for t in ["[CLS]", *PROMPT.split(), *continuation.split(), "[SEP]"]]])
    logp = log_softmax(model(input_ids=ids)["logits"][0, :-1])                           # (T - 1, V) predicts 1..
    start = len(PROMPT.split())                                                          # the last prompt token
    return float(logp[np.arange(start, ids.shape[1] - 1), ids[0, start + 1:]].sum())


def beam_walkthrough(num_beams: int = 3, length_penalty: float = 1.0) -> dict:
    """Beam search on the toy model step by step (`generate.BeamStep`): every candidate of each step, its sum of
    log p, whether it ended, ran on or entered the store of finished hypotheses."""
    cfg, w = toy_lm()
    m = build("numpy", cfg, w, dtype="float64")
    prompt = np.array([[VOCAB.index(t) for t in ["[CLS]", *PROMPT.split()]]])           # (1, T)
    steps = []
    out = search(m, prompt, 8, "beam", num_beams=num_beams, length_penalty=length_penalty, eos_token_id=EOS,
                 steps=steps)
    start = prompt.shape[1]
    table = []
    for i, step in enumerate(steps, start=1):
        for k in range(step.candidates.shape[1]):
            fate = "stored" if step.stored[0, k] else "runs on" if step.runs[0, k] else "dropped"
            table.append({"step": i, "candidate": words(step.candidates[0, k, start:]),
                          "log_prob": float(step.scores[0, k]), "ends": bool(step.ends[0, k]), "fate": fate,
                          "final": float(step.scores[0, k]) / i ** length_penalty if step.ends[0, k] else None})
    return {"rows": table, "steps": len(steps), "result": _decoded("beam", out, length_penalty=length_penalty),
            "num_beams": num_beams, "length_penalty": length_penalty}


# -------------------------------------------------------------------------------- the LLaMA family

def _rotary_scores(cfg, q, k, start: int, T: int):
    """(T, T) scores q_m . k_n of one q and one k vector placed at positions start .. start + T - 1."""
    m = build("numpy", cfg, {}, dtype="float64")
    positions = np.arange(start, start + T)[None]                                        # (1, T)
    out = m(q=np.broadcast_to(q, (1, 1, T, q.size)).copy(), k=np.broadcast_to(k, (1, 1, T, k.size)).copy(),
            position_ids=positions)
    return out["q"][0, 0] @ out["k"][0, 0].T                                             # (T, T)


def rotary_is_relative(head_dim: int = 16, T: int = 12, shift: int = 37, seed: int = 0) -> dict:
    """Shift both positions by `shift`: with the rotary embedding (the reference `RotaryEmbedding`) every
    score q_m . k_n stays the same, for every rope type whose frequencies do not depend on the length; an
    additive encoding, (q + PE(m)) . (k + PE(n)) with the 2017 sinusoidal PE, changes. Dynamic NTK is
    relative only while the sequence stays within max_positions: past it, the frequencies depend on
    the longest position. With float32 angles (`rotary_float32`, as transformers) it holds up to the
    angle's rounding, which grows with the position."""
    from numpy_ref.embeddings import sinusoidal_encoding
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal(head_dim), rng.standard_normal(head_dim)                  # (Dh,)
    base = Config(kind="rotary_embedding", d_model=head_dim, num_heads=1, max_positions=64, rotary_float32=False)

    def moved(cfg):
        return float(np.abs(_rotary_scores(cfg, q, k, shift, T) - _rotary_scores(cfg, q, k, 0, T)).max())

    types = {kind: moved(base.replace(rope_scaling=kind, rope_factor=4.0))
             for kind in ("none", "linear", "llama3", "yarn")}
    types["dynamic, within max_positions"] = moved(base.replace(rope_scaling="dynamic", rope_factor=4.0,
                                                                  max_positions=shift + T))
    types["dynamic, past max_positions"] = moved(base.replace(rope_scaling="dynamic", rope_factor=4.0,
                                                                max_positions=T))
    scores = _rotary_scores(base, q, k, 0, T)
    by_offset = [np.diagonal(scores, d) for d in range(-T + 1, T)]                       # one offset m - n each
    pe = lambda start: sinusoidal_encoding(np.arange(start, start + T), head_dim)        # noqa: E731  (T, Dh)
    additive = lambda start: (q + pe(start)) @ (k + pe(start)).T                          # noqa: E731  (T, T)
    return {"rotary": types["none"], "by_type": types,
            "same_offset_spread": float(max(d.max() - d.min() for d in by_offset)),
            "float32_angles": moved(base.replace(rotary_float32=True)),
            "additive_sinusoidal": float(np.abs(additive(shift) - additive(0)).max()),
            "score_scale": float(np.abs(scores).max())}


def rms_vs_layer_norm(d_model: int = 768, seed: int = 0) -> dict:
    """The reference RMSNorm and LayerNorm (same gamma, beta 0) on zero-mean rows (the same numbers) and on
    rows with a mean (not); their declared parameters and forward FLOPs at BERT-base width (B = 1, T = 128,
    `conformance.costs.flops`)."""
    from conformance.spec import registry
    from numpy_ref.normalization import rms_norm
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 16, d_model)) + rng.standard_normal((4, 16, 1))          # (B, T, D) rows with a mean
    centred = x - x.mean(-1, keepdims=True)                                               # (B, T, D) zero-mean rows
    gamma = 1 + 0.1 * rng.standard_normal(d_model)
    ln = lambda a: layer_norm(a, gamma, 0.0, 1e-6)                                       # noqa: E731
    rms = lambda a: rms_norm(a, gamma, 1e-6, 0.0, "statistic")                           # noqa: E731
    out = {"zero_mean_difference": float(np.abs(ln(centred) - rms(centred)).max()),
           "with_mean_difference": float(np.abs(ln(x) - rms(x)).max())}
    for name in ("layer_norm", "rms_norm"):
        cfg = registry.get(name).config().replace(d_model=d_model, num_heads=12)
        out[name] = {"parameters": sum(math.prod(s) for s in registry.param_shapes(cfg).values()),
                     "flops": flops.totals(flops.ops(cfg, 1, 128))["all"]}
    out["flops_saved"] = 1 - out["rms_norm"]["flops"] / out["layer_norm"]["flops"]
    out["parameters_saved"] = out["layer_norm"]["parameters"] - out["rms_norm"]["parameters"]
    return out


def swiglu_width(d_model: int = 4096, multiple_of: int = 256) -> dict:
    """The gated feed-forward's inner width F' that gives it the parameters of a standard 4 D MLP, from the
    declared parameter counts (`registry.param_shapes`): a gated layer holds three D x F' matrices, so its
    count is linear in F' (read off at two widths), and F' = count(4 D MLP) / (3 D) = 8/3 D (plus 5/3 for
    the standard MLP's biases). Llama rounds it up to a multiple of 256; the FLOPs follow the parameters."""
    from conformance.spec import registry
    def count(name, **changes):
        cfg = registry.get(name).config().replace(d_model=d_model, num_heads=32, **changes)
        return sum(math.prod(s) for s in registry.param_shapes(cfg).values()), cfg
    standard, standard_cfg = count("feed_forward", d_ff=4 * d_model)
    one, _ = count("gated_feed_forward", d_ff=1)
    two, _ = count("gated_feed_forward", d_ff=2)
    per_unit, fixed = two - one, 2 * one - two                                           # count = fixed + per_unit F'
    width = (standard - fixed) / per_unit
    llama = multiple_of * math.ceil(width / multiple_of)
    gated, gated_cfg = count("gated_feed_forward", d_ff=llama)
    matmul = lambda cfg: flops.totals(flops.ops(cfg, 1, 128))["matmul"]                  # noqa: E731
    return {"d_model": d_model, "standard_parameters": standard, "gated_parameters_per_width": per_unit,
            "equal_width": width, "ratio": width / d_model, "llama_width": llama,
            "llama_parameters_ratio": gated / standard, "llama_flops_ratio": matmul(gated_cfg) / matmul(standard_cfg)}


def gqa_cache(preset: str = "llama3-8b", tokens: int = 8192, kv_heads=(32, 8, 1)) -> dict:
    """What grouped-query attention saves: the key/value cache of `preset` at `tokens` tokens in bfloat16
    with `kv_heads` key/value heads (32: multi-head, 8: Llama 3's GQA, 1: multi-query), from the declared
    `cache_bytes`, with the parameters the k and v projections keep; and, on a tiny model, the bytes its
    cache really holds after a 16-token prompt, which fall by the same factor G = H / KV."""
    base = presets.get(preset)
    rows = []
    for kv in kv_heads:
        cfg = base.replace(num_kv_heads=kv)
        rows.append({"kv_heads": kv, "groups": cfg.num_heads // kv,
                     "per_token": memory.kv_cache_per_token(cfg, 2),
                     "bytes": memory.kv_cache(cfg, 1, tokens)["bytes"]["bfloat16"],
                     "kv_projection_parameters": 2 * cfg.num_layers * cfg.d_model * kv * cfg.head_dim,
                     "parameters": params.count(cfg)["total"]})
    measured = []
    for kv in (4, 2, 1):
        cfg = presets.get("llama-tiny").replace(num_heads=4, num_kv_heads=kv)
        m = build("numpy", cfg, weights.initialize(cfg, seed=0), dtype="float32")
        cache = []
        m.step(np.arange(16)[None] % cfg.vocab_size, cache)
        measured.append({"kv_heads": kv, "held": sum(layer[k].nbytes for layer in cache for k in ("key", "value")),
                         "declared": 16 * memory.kv_cache_per_token(cfg, 4)})
    return {"preset": preset, "tokens": tokens, "num_heads": base.num_heads, "rows": rows, "measured": measured}


# -------------------------------------------------------------------------------- efficient attention

def efficient_attention(lengths=(256, 512, 1024), heads: int = 2, head_dim: int = 32, block: int = 64,
                        window: int = 64, seed: int = 0) -> dict:
    """How attention is made cheaper, measured on the NumPy mirrors at growing T (self-attention, T = S):

    - tiled (FlashAttention's online softmax, `attention_impl="tiled"`): the same output to float64
      rounding, its peak (tracemalloc, one call) linear in T where the reference's is quadratic, and the
      same matmul FLOPs (plus the rescales);
    - a sliding window of `window` keys (Mistral): the (query, key) pairs it lets through, T W of T^2:
      the work a kernel that skips masked blocks needs (this project's attention masks them, still
      computing all T^2 scores);
    - linear attention (a kernel feature map, no softmax) changes the function: not measured here."""
    if len(lengths) < 2:
        raise ValueError(f"lengths must hold at least 2 sequence lengths to fit an exponent; received {lengths}")
    base = Config(kind="scaled_dot_product_attention", d_model=heads * head_dim, num_heads=heads,
                  attention_block_q=block, attention_block_k=block)
    rng = np.random.default_rng(seed)
    rows = []
    for T in lengths:
        q, k, v = (rng.standard_normal((1, heads, T, head_dim)) for _ in range(3))   # (B, H, T, Dh)
        row = {"T": T}
        outputs = {}
        for impl in ("reference", "tiled"):
            m = build("numpy", base.replace(attention_impl=impl), {}, dtype="float64")
            tracemalloc.start()
            outputs[impl] = m(q=q, k=k, v=v)["output"]
            row[f"{impl}_peak_bytes"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        row["max_abs_difference"] = float(np.abs(outputs["tiled"] - outputs["reference"]).max())
        row["window_pairs"] = int(attention_mask(None, T, T, True, window)[0, 0].sum())
        row["causal_pairs"] = T * (T + 1) // 2
        rows.append(row)
    fit = lambda ys: float(np.polyfit(np.log(lengths), np.log(ys), 1)[0])  # noqa: E731
    matmul = {impl: flops.totals(flops.ops(base.replace(attention_impl=impl), 1, lengths[-1]))["matmul"]
              for impl in ("reference", "tiled")}
    return {"rows": rows, "block": block, "window": window, "heads": heads, "head_dim": head_dim,
            "exponent_reference_peak": fit([r["reference_peak_bytes"] for r in rows]),
            "exponent_tiled_peak": fit([r["tiled_peak_bytes"] for r in rows]),
            "exponent_window_pairs": fit([r["window_pairs"] for r in rows]), "matmul_flops": matmul}


def lora_parameters(preset: str = "bert-base", rank: int = 8, targets=("query", "value")) -> dict:
    """Why LoRA trains so few parameters: a target projection W (in x out) is frozen and its change is
    A B with A (in x r), B (r x out), so it trains r (in + out) numbers instead of in x out, a share
    of r (in + out) / (in out) = r / out + r / in (2 r / D for a square D x D projection). Counted per
    target from the declared shapes (`conformance.core.lora.count`), against the whole model."""
    from conformance.core import lora
    cfg = presets.get(preset)
    lcfg = lora.LoraConfig(rank=rank, targets=tuple(targets))
    shapes = weights.shapes(cfg)
    counted = lora.count(lora.linear_shapes(shapes, lcfg), lcfg)
    kinds = {}
    for path, t in counted["per_target"].items():
        kinds.setdefault(path.rpartition(".")[2], {**t, "count": 0})["count"] += 1
    model = sum(math.prod(s) for s in shapes.values())
    return {"preset": preset, "rank": rank, "targets": list(targets), "per_kind": kinds,
            "lora": counted["lora"], "full_targets": counted["full"], "model": model,
            "share_of_targets": counted["lora"] / counted["full"], "share_of_model": counted["lora"] / model,
            "adamw_bytes": {"full": 8 * model, "lora": 8 * counted["lora"]}}


FINE_TUNING = {  # method -> (TrainConfig changes, dtype): the methods the fine-tuning page compares
    "full fine-tuning": ({}, "float32"),
    "frozen features (head only)": ({"frozen_base": True}, "float32"),
    "layer-wise rates (decay 0.8)": ({"layer_decay": 0.8}, "float32"),
    "gradient accumulation (2 x half batch)": ({"accumulation_steps": 2}, "float32"),
    "mixed precision (bfloat16)": ({}, "mixed_bfloat16"),
    "LoRA r=8 on query, value": ({"lora": "query,value"}, "float32"),
    "LoRA + gradient checkpointing": ({"lora": "query,value", "checkpointing": True}, "float32"),
}


FINE_TUNING_MODEL = dict(num_layers=4, d_model=256, num_heads=4, d_ff=1024, max_positions=128)  # on bert-base


def fine_tuning_methods(cfg: Config | None = None, batch: int = 8, seq_len: int = 64, seed: int = 0,
                        methods=tuple(FINE_TUNING)) -> dict:
    """Each fine-tuning method on one BERT (default: bert-base cut to 4 layers of D = 256, its 30,522-token
    vocabulary kept, so the table and the layers both matter), classification, torch_impl: trainable
    parameters (the trainer's), and one step's peak bytes on top of the weights by torch's allocator
    record, with the gradients and AdamW state it keeps (`Backend.step_memory`). Accumulation runs
    k = 2 micro-batches of batch / 2."""
    from conformance import training
    from conformance.core.lora import LoraConfig
    cfg = cfg or presets.get("bert-base").replace(**FINE_TUNING_MODEL)
    rows = []
    for method in methods:
        changes, dtype = FINE_TUNING[method]
        changes = dict(changes)
        if "lora" in changes:
            changes["lora"] = LoraConfig(rank=8, alpha=16.0, targets=tuple(changes["lora"].split(",")))
        k = changes.get("accumulation_steps", 1)
        tcfg = training.TrainConfig(task="classification", steps=1, micro_batch_size=batch // k, seq_len=seq_len,
                                    **changes)
        tcfg = training.for_framework(tcfg, "torch")
        task_cfg, w, batches = training.setup(cfg, "classification", tcfg, seed=seed)
        step, built = training.trainer("torch", task_cfg, w, tcfg, dtype)
        measured = built.backend.step_memory(step, batches)
        trainable = sum(p.numel() for p in step.trainable.values())
        rows.append({"method": method, "dtype": dtype, "trainable": trainable, "parameters": sum(a.size for a in w.values()),
                     **measured})
    return {"config": cfg, "batch": batch, "seq_len": seq_len, "rows": rows}
