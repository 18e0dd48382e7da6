"""Forward FLOPs, op by op, from the config alone.

Convention: one multiply-add is 2 FLOPs, so x (M, K) @ w (K, N) costs 2 M K N. Shape legend:
B batch, T query positions, S key positions (S = T in self-attention), D, H, Dh = D / H, F, V, L.

    projection  q, k, v, output: 2 B T D^2 each;  feed-forward 2 B T D F twice;
                BERT pooler 2 B D^2 (the [CLS] row only);  logits 2 B T D V
    attention   scores q k^T: 2 B H T S Dh;  context probs v: 2 B H T S Dh

Everything else is counted per element (PER_ELEMENT); exp, erf, tanh and sqrt count as one FLOP
each. A layer norm also spends 4 FLOPs per row (two divides by D, + eps, sqrt). Not counted:
embedding lookups (a gather), dropout (identity at inference), building masks (booleans), the
sinusoidal table (O(T D), no weights).

Per layer the matmuls are linear in T, 2 T (4 D^2 + 2 D F), and quadratic in T, 4 T^2 D:
they are equal at the crossover T* = 2 D + F (= 6 D when F = 4 D; 4608 for BERT-base).
Causal attention: the eager kernels of all three frameworks compute the full T x T square
and mask half of it; a kernel that skips the masked half does about half the score-shaped
work. Both totals are given, labelled `causal_halved` for the second.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from conformance.core.config import Config
from conformance.costs.params import check_model, layer_lists

PER_ELEMENT = {
    "bias": 1, "residual": 1, "embedding_add": 1, "embedding_scale": 1, "tanh": 1,
    "scale": 1,       # scores * 1/sqrt(Dh)
    "mask": 1,        # where(mask, scores, fill)
    "softmax": 5,     # max, subtract, exp, sum, divide (TensorFlow's profiler counts 5 too)
    "layer_norm": 7,  # mean, subtract, square, variance sum, divide by std, * gamma, + beta
    "gelu": 5,        # 0.5 x (1 + erf(x / sqrt 2)): divide, erf, add, two multiplies
    "gelu_tanh": 9,   # 0.5 x (1 + tanh(c (x + 0.044715 x^3))): x^3 (2), 3 mul, 2 add, tanh, 0.5 *
    "relu": 1,
}
LAYER_NORM_PER_ROW = 4
MATMUL = ("projection", "attention")
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
BATCHES = (1, 8, 32, 128)


@dataclass(frozen=True)
class Op:
    name: str          # "encoder.*.attention.scores": `*` marks an op repeated in every layer
    category: str      # projection | attention | softmax | norm | activation | elementwise
    flops: int         # one instance
    count: int = 1     # instances (layers)
    pairs: bool = False   # score-shaped, (B, H, T, S): grows with T S
    causal: bool = False  # inside causal self-attention: a skipping kernel needs half

    @property
    def total(self) -> int:
        return self.flops * self.count


def linear(name, rows, d_in, d_out, bias=True):
    yield Op(name, "projection", 2 * rows * d_in * d_out)
    if bias:
        yield Op(f"{name}.bias", "elementwise", rows * d_out * PER_ELEMENT["bias"])


def layer_norm(name, rows, D):
    return Op(name, "norm", rows * (PER_ELEMENT["layer_norm"] * D + LAYER_NORM_PER_ROW))


def attention(name, cfg, B, T, S, causal):
    D, H, Dh = cfg.d_model, cfg.num_heads, cfg.head_dim
    pairs = B * H * T * S
    yield from linear(f"{name}.query", B * T, D, D, cfg.use_bias)
    yield from linear(f"{name}.key", B * S, D, D, cfg.use_bias)
    yield from linear(f"{name}.value", B * S, D, D, cfg.use_bias)
    yield Op(f"{name}.scores", "attention", 2 * pairs * Dh, pairs=True, causal=causal)
    for step in ("scale", "mask"):
        yield Op(f"{name}.{step}", "elementwise", pairs * PER_ELEMENT[step], pairs=True, causal=causal)
    yield Op(f"{name}.softmax", "softmax", pairs * PER_ELEMENT["softmax"], pairs=True, causal=causal)
    yield Op(f"{name}.context", "attention", 2 * pairs * Dh, pairs=True, causal=causal)
    yield from linear(f"{name}.output", B * T, D, D, cfg.use_bias)


def sublayer(name, ops, rows, D):
    """A residual sub-block: the sub-layer's ops, the residual add and its layer norm."""
    yield from ops
    yield Op(f"{name}.residual", "elementwise", rows * D * PER_ELEMENT["residual"])
    yield layer_norm(f"{name}_norm", rows, D)


def feed_forward(name, cfg, rows):
    yield from linear(f"{name}.inner", rows, cfg.d_model, cfg.d_ff)
    yield Op(f"{name}.activation", "activation", rows * cfg.d_ff * PER_ELEMENT[cfg.activation])
    yield from linear(f"{name}.outer", rows, cfg.d_ff, cfg.d_model)


def encoder_layer(name, cfg, B, T, causal):
    D, rows = cfg.d_model, B * T
    yield from sublayer(f"{name}.attention", attention(f"{name}.attention", cfg, B, T, T, causal), rows, D)
    yield from sublayer(f"{name}.feed_forward", feed_forward(f"{name}.feed_forward", cfg, rows), rows, D)


def decoder_layer(name, cfg, B, T, S):
    D, rows = cfg.d_model, B * T
    yield from sublayer(f"{name}.self_attention", attention(f"{name}.self_attention", cfg, B, T, T, True), rows, D)
    yield from sublayer(f"{name}.cross_attention", attention(f"{name}.cross_attention", cfg, B, T, S, False),
                        rows, D)
    yield from sublayer(f"{name}.feed_forward", feed_forward(f"{name}.feed_forward", cfg, rows), rows, D)


def repeat(ops, count):
    return [Op(o.name, o.category, o.flops, count, o.pairs, o.causal) for o in ops]


def target_length(cfg: Config, seq_len: int) -> int:
    """The encoder-decoder's target length for a source of `seq_len`: as `registry.seq2seq_inputs` makes it."""
    return max(seq_len - 2, 1)


def model_ops(cfg: Config, B: int, T: int) -> list[Op]:
    """Every op of one forward pass of `cfg` on B sequences of T tokens."""
    check_model(cfg)
    D, V, L = cfg.d_model, cfg.vocab_size, layer_lists(cfg)
    add = lambda name, rows, n=1: Op(name, "elementwise", n * rows * D * PER_ELEMENT["embedding_add"])  # noqa: E731
    if cfg.kind == "bert":
        ops = [add("embeddings.sum", B * T, 2), layer_norm("embeddings.norm", B * T, D)]
        ops += repeat(encoder_layer("encoder.*", cfg, B, T, cfg.causal), L["encoder"])
        if cfg.head in ("none", "classification"):
            ops += [*linear("pooler", B, D, D), Op("pooler.tanh", "elementwise", B * D * PER_ELEMENT["tanh"])]
        if cfg.head == "classification":
            ops += linear("classifier", B, D, cfg.num_labels)
        if cfg.head == "qa":
            ops += linear("qa", B * T, D, 2)
        if cfg.head == "mlm":
            ops += [*linear("mlm.transform", B * T, D, D),
                    Op("mlm.activation", "activation", B * T * D * PER_ELEMENT[cfg.activation]),
                    layer_norm("mlm.norm", B * T, D), *linear("mlm.decoder", B * T, D, V)]
        return ops
    if cfg.kind == "gpt2":
        ops = [add("embeddings.sum", B * T)]
        ops += repeat(encoder_layer("layers.*", cfg, B, T, cfg.causal), L["layers"])
        return ops + [layer_norm("final_norm", B * T, D), *linear("logits", B * T, D, V, bias=False)]
    S, T = T, target_length(cfg, T)  # transformer: T tokens in, T - 2 out
    ops = []
    for side, n in (("source", S), ("target", T)):
        if cfg.scale_embeddings:
            ops.append(Op(f"{side}.embedding_scale", "elementwise", B * n * D * PER_ELEMENT["embedding_scale"]))
        ops.append(add(f"{side}.position_add", B * n))
    ops += repeat(encoder_layer("encoder.*", cfg, B, S, cfg.causal), L["encoder"])
    ops += repeat(decoder_layer("decoder.*", cfg, B, T, S), L["decoder"])
    return ops + list(linear("logits", B * T, D, V, bias=False))


def base_model_ops(cfg: Config, B: int, T: int) -> list[Op]:
    """The ops of `transformers`' base model: BertModel (pooler, no head), GPT2Model (no LM head)."""
    if cfg.kind == "bert":
        return model_ops(cfg.replace(head="none"), B, T)
    return [o for o in model_ops(cfg, B, T) if o.name != "logits"]


def totals(ops: list[Op]) -> dict:
    """Matmul-only and all-op totals, each in full and with causal attention halved."""
    halved = lambda o: o.total // 2 if o.causal else o.total  # noqa: E731
    mm = [o for o in ops if o.category in MATMUL]
    return {"matmul": sum(o.total for o in mm), "all": sum(o.total for o in ops),
            "matmul_causal_halved": sum(map(halved, mm)), "all_causal_halved": sum(map(halved, ops)),
            "quadratic": sum(o.total for o in ops if o.pairs), "linear": sum(o.total for o in ops if not o.pairs),
            "by_category": {c: sum(o.total for o in ops if o.category == c)
                            for c in ("projection", "attention", "softmax", "norm", "activation", "elementwise")}}


def crossover(cfg: Config) -> dict:
    """The sequence length at which one layer's T^2 terms equal its T terms.

    A self-attention layer at B = 1 costs a T + b T^2 (every op is one or the other), so the two
    are equal at T* = a / b; a and b are read off the op list at T = 1. Matmuls only:
    a = 8 D^2 + 4 D F, b = 4 D, T* = 2 D + F. Halving the causal square doubles T*.
    """
    ops = list(encoder_layer("layer", cfg, 1, 1, causal=False))
    mm = [o for o in ops if o.category in MATMUL]
    ratio = lambda ops: sum(o.total for o in ops if not o.pairs) / sum(o.total for o in ops if o.pairs)  # noqa: E731
    return {"matmul": ratio(mm), "all": ratio(ops), "matmul_formula": 2 * cfg.d_model + cfg.d_ff,
            "matmul_causal_halved": 2 * ratio(mm), "all_causal_halved": 2 * ratio(ops)}


def section(cfg: Config, batch: int, seq_len: int) -> dict:
    ops = model_ops(cfg, batch, seq_len)
    return {"convention": "one multiply-add = 2 FLOPs; exp, erf, tanh, sqrt = 1 FLOP each",
            "per_element": dict(PER_ELEMENT), "layer_norm_per_row": LAYER_NORM_PER_ROW,
            "causal": any(o.causal for o in ops),
            "ops": [{**asdict(o), "total": o.total} for o in ops], "totals": totals(ops)}
