"""Forward FLOPs, op by op: the sum over the module tree of what each component declares.

Each numpy_ref module yields its own ops for its input shapes (`Module.flops`, the convention in
`conformance.core.costs`), its children's under their names; a stack's identical layers are
collapsed into one op counted L times (`encoder.*.attention.scores`). Shape legend: B batch,
T query positions, S key positions (S = T in self-attention), D, H, Dh = D / H, F, V, L.

    projection  q, k, v, output: 2 B T D^2 each;  feed-forward 2 B T D F twice;
                BERT pooler 2 B D^2 (the [CLS] row only);  logits 2 B T D V
    attention   scores q k^T: 2 B H T S Dh;  context probs v: 2 B H T S Dh

Per layer the matmuls are linear in T, 2 T (4 D^2 + 2 D F), and quadratic in T, 4 T^2 D:
they are equal at the crossover T* = 2 D + F (= 6 D when F = 4 D; 4608 for BERT-base).
Causal attention: the eager kernels of all three frameworks compute the full T x T square
and mask half of it; a kernel that skips the masked half does about half the score-shaped
work. Both totals are given, labelled `causal_halved` for the second.
"""
from __future__ import annotations

import re
from dataclasses import asdict, replace

from conformance.core.config import Config
from conformance.core.costs import CATEGORIES, LAYER_NORM_PER_ROW, MATMUL, PER_ELEMENT, Op
from conformance.spec import families, registry

SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
BATCHES = (1, 8, 32, 128)


def input_shapes(cfg: Config, batch: int, length: int) -> dict[str, tuple]:
    """The shapes of a run's inputs: a model family's run inputs, a component's default inputs."""
    if cfg.kind in families.FAMILIES:
        inputs = families.get(cfg.kind).inputs(cfg, batch, length)
    else:
        inputs = registry.get(cfg.kind).inputs(cfg, batch=batch, length=length)
    return {k: tuple(v.shape) for k, v in inputs.items()}


def collapse(ops) -> list[Op]:
    """Ops that differ only by a layer index (`encoder.0.x`, `encoder.1.x`, ...) as one op with a count."""
    out: dict[tuple, Op] = {}
    for o in ops:
        o = replace(o, name=re.sub(r"(^|\.)\d+(?=\.)", r"\1*", o.name))
        key = (o.name, o.category, o.flops, o.pairs, o.causal)
        out[key] = replace(out[key], count=out[key].count + o.count) if key in out else o
    return list(out.values())


def ops(cfg: Config, batch: int, length: int) -> list[Op]:
    """Every op of one forward of `cfg` (a model or a component) at (batch, length), layers collapsed."""
    return collapse(registry.get(cfg.kind).reference(cfg).flops(**input_shapes(cfg, batch, length)))


def totals(ops: list[Op]) -> dict:
    """Matmul-only and all-op totals, each in full and with causal attention halved."""
    halved = lambda o: o.total // 2 if o.causal else o.total  # noqa: E731
    mm = [o for o in ops if o.category in MATMUL]
    return {"matmul": sum(o.total for o in mm), "all": sum(o.total for o in ops),
            "matmul_causal_halved": sum(map(halved, mm)), "all_causal_halved": sum(map(halved, ops)),
            "quadratic": sum(o.total for o in ops if o.pairs), "linear": sum(o.total for o in ops if not o.pairs),
            "by_category": {c: sum(o.total for o in ops if o.category == c) for c in CATEGORIES}}


def recomputed(cfg: Config, batch: int, length: int) -> dict:
    """What full recomputation (gradient checkpointing every layer) adds to a training step: one more
    forward of every repeated layer (`encoder.*`, `decoder.*`, `layers.*`): its `totals`."""
    return totals([o for o in ops(cfg, batch, length) if re.match(r"(encoder|decoder|layers)\.", o.name)])


def crossover(cfg: Config) -> dict:
    """The sequence length at which one layer's T^2 terms equal its T terms.

    A self-attention layer at B = 1 costs a T + b T^2 (every op is one or the other), so the two
    are equal at T* = a / b; a and b are read off the op list at T = 1. Matmuls only:
    a = 8 D^2 + 4 D F, b = 4 D, T* = 2 D + F. Halving the causal square doubles T*.
    """
    model = registry.get(cfg.kind).reference(cfg)
    layer = next(m for path, m in model.named_modules() if re.fullmatch(r"\w+\.0", path))  # the first stack's
    one = list(layer.flops((1, 1, cfg.d_model)))
    mm = [o for o in one if o.category in MATMUL]
    ratio = lambda ops: sum(o.total for o in ops if not o.pairs) / sum(o.total for o in ops if o.pairs)  # noqa: E731
    return {"matmul": ratio(mm), "all": ratio(one), "matmul_formula": 2 * cfg.d_model + cfg.d_ff,
            "matmul_causal_halved": 2 * ratio(mm), "all_causal_halved": 2 * ratio(one)}


def section(cfg: Config, batch: int, seq_len: int) -> dict:
    every = ops(cfg, batch, seq_len)
    return {"convention": "one multiply-add = 2 FLOPs; exp, erf, tanh, sqrt = 1 FLOP each",
            "per_element": dict(PER_ELEMENT), "layer_norm_per_row": LAYER_NORM_PER_ROW,
            "causal": any(o.causal for o in every),
            "ops": [{**asdict(o), "total": o.total} for o in every], "totals": totals(every)}
