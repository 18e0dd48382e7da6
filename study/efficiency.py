"""How far attention through a feature map is from softmax attention, measured (issue 19).

`LinearAttention` (elu + 1) and `PerformerAttention` (FAVOR+, M positive random features) are exact
against their own float64 reference (the conformance suite); here they are compared with the reference
`ScaledDotProductAttention` on the same random q, k, v (entries N(0, 1), so the scores q . k / sqrt(Dh)
have unit variance), at several sequence lengths T and feature counts M:

    error = max |out - softmax attention| / max |softmax attention|      (max-norm relative, per run)

Performer's is a Monte Carlo estimate: each softmax weight exp(q . k / sqrt(Dh)) is the mean of M
positive terms, so its spread falls like 1 / sqrt(M), and the error with it; each point is the median
over `draws` independent W. Linear attention has nothing to average: elu(q) + 1 . elu(k) + 1 is another
similarity, so its distance from softmax stays where it is whatever the T (and it has no M to grow).
The spread of one Performer term is exp(|x + y|^2) - 1 relative (x = q Dh^-1/4, y = k Dh^-1/4): the
1/sqrt(M) fall is there when q and k are small (entries N(0, 0.25^2) at Dh = 32: |x|^2 = 0.35), and
gone at M <= 256 when they are not (`by_std`: at std 0.7 more features barely help). Both cost O(T M Dh) against
softmax's O(T^2 Dh): the FLOPs of each are the ones the components declare (`Module.flops`), which
`conformance/suites/test_costs.py` holds equal to torch's FlopCounterMode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conformance.core.config import Config
from conformance.costs import flops
from numpy_ref.attention import ScaledDotProductAttention
from numpy_ref.linear_attention import LinearAttention, PerformerAttention

HEADS, HEAD_DIM = 2, 32
LENGTHS = (16, 64, 256, 1024)
FEATURES = (8, 16, 32, 64, 128, 256)
STD = 0.25  # q, k entries: |q|^2 / sqrt(Dh) = 0.35, the regime where M random features average out
STDS = (0.25, 0.35, 0.5, 0.7)


@dataclass(frozen=True)
class Point:
    method: str       # "performer" or "linear"
    length: int       # T = S
    features: int     # M (linear attention: Dh, its feature map's width)
    error: float      # median over the draws of W (one value for linear attention)
    spread: tuple     # (lowest, highest) over the draws
    flops: int        # the forward's FLOPs as the component declares them, B = 1
    softmax_flops: int


def _config(kind: str, causal: bool, features: int = 64) -> Config:
    return Config(kind=kind, d_model=HEADS * HEAD_DIM, num_heads=HEADS, causal=causal, performer_features=features)


def _total(module, shape) -> int:
    return flops.totals(list(module.flops(q=shape, k=shape)))["all"]


def _error(out, ref) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def linear_attention_error(lengths=LENGTHS, features=FEATURES, draws: int = 5, causal: bool = False,
                           std: float = STD, seed: int = 0) -> list[Point]:
    """Performer's and linear attention's max-norm relative error against softmax attention, per (T, M);
    q and k entries ~ N(0, std^2), v ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    points = []
    for T in lengths:
        q, k = (std * rng.standard_normal((1, HEADS, T, HEAD_DIM)) for _ in range(2))
        v = rng.standard_normal((1, HEADS, T, HEAD_DIM))
        shape = q.shape
        softmax = ScaledDotProductAttention(_config("scaled_dot_product_attention", causal))
        ref = softmax(q, k, v)
        base = _total(softmax, shape)
        linear = LinearAttention(_config("linear_attention", causal))
        e = _error(linear(q, k, v), ref)
        points.append(Point("linear", T, HEAD_DIM, e, (e, e), _total(linear, shape), base))
        for M in features:
            performer = PerformerAttention(_config("performer_attention", causal, M))
            errors = []
            for _ in range(draws):
                performer.random_features = rng.standard_normal((HEAD_DIM, M))
                errors.append(_error(performer(q, k, v), ref))
            points.append(Point("performer", T, M, float(np.median(errors)), (min(errors), max(errors)),
                                _total(performer, shape), base))
    return points


def by_std(stds=STDS, length: int = 256, features=FEATURES, draws: int = 5, seed: int = 0) -> dict:
    """Performer's error against M at one T for several q, k scales: {std: [Point]} (its variance grows
    like exp(|x + y|^2), x = q Dh^-1/4: at larger q and k, M features stop being enough)."""
    return {std: [p for p in linear_attention_error((length,), features, draws, std=std, seed=seed)]
            for std in stds}


def slope(points: list[Point], length: int) -> float:
    """d log(error) / d log(M) of Performer at one T, least squares: -1/2 for a Monte Carlo estimate."""
    rows = [(p.features, p.error) for p in points if p.method == "performer" and p.length == length]
    x, y = np.log([m for m, _ in rows]), np.log([e for _, e in rows])
    return float(np.polyfit(x, y, 1)[0])


def error_md(points: list[Point], draws: int, stds: dict | None = None) -> str:
    """The table docs/generated/linear_attention.md: error per (T, M), the fitted slope, the FLOPs."""
    lengths = sorted({p.length for p in points})
    features = sorted({p.features for p in points if p.method == "performer"})
    get = {(p.method, p.length, p.features): p for p in points}
    header = ["T"] + [f"Performer M = {m}" for m in features] + ["slope in M", "linear (elu + 1)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for T in lengths:
        linear = next(p for p in points if p.method == "linear" and p.length == T)
        cells = [f"{get['performer', T, m].error:.3f}" for m in features]
        lines.append(f"| {T} | " + " | ".join(cells) + f" | {slope(points, T):.2f} | {linear.error:.3f} |")
    cost = ["", "| T | softmax FLOPs | linear FLOPs | Performer FLOPs, M = "
            f"{features[-1]} |", "|---:|---:|---:|---:|"]
    for T in lengths:
        linear, performer = get["linear", T, HEAD_DIM], get["performer", T, features[-1]]
        cost.append(f"| {T} | {linear.softmax_flops:,} | {linear.flops:,} | {performer.flops:,} |")
    scales = []
    if stds:
        T = next(iter(stds.values()))[0].length
        scales = ["", f"The same at T = {T} for larger q and k (entries N(0, std^2)):", "",
                  "| std | " + " | ".join(f"M = {m}" for m in features) + " | slope in M | linear (elu + 1) |",
                  "|" + "|".join(["---:"] * (len(features) + 3)) + "|"]
        for std, rows in stds.items():
            cells = [f"{p.error:.3f}" for p in rows if p.method == "performer"]
            scales.append(f"| {std} | " + " | ".join(cells) + f" | {slope(rows, T):.2f} | {rows[0].error:.3f} |")
    return ("Max-norm relative error against softmax attention (`ScaledDotProductAttention`), non-causal, "
            f"B = 1, H = {HEADS}, Dh = {HEAD_DIM}, q and k entries ~ N(0, {STD}^2), v ~ N(0, 1); Performer: the "
            f"median over {draws} draws of W. Slope: the least-squares d log(error) / d log(M) (a Monte Carlo "
            "estimate: -0.5).\n\n" + "\n".join(lines) + "\n" + "\n".join(scales) + "\n" + "\n".join(cost) + "\n")


def error_png(points: list[Point], stds: dict, path, save, plt):
    """Error against M (one line per T), against T (one line per M), linear attention dashed; and
    against M for larger q and k."""
    lengths = sorted({p.length for p in points})
    features = sorted({p.features for p in points if p.method == "performer"})
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    for i, T in enumerate(lengths):
        rows = [p for p in points if p.method == "performer" and p.length == T]
        a.loglog([p.features for p in rows], [p.error for p in rows], "o-", color=f"C{i}", label=f"Performer, T = {T}")
        linear = next(p for p in points if p.method == "linear" and p.length == T)
        a.axhline(linear.error, color=f"C{i}", ls="--", lw=1)
    first = [p for p in points if p.method == "performer" and p.length == lengths[0]]
    a.loglog(features, [first[0].error * (first[0].features / m) ** 0.5 for m in features], "k:", label="1 / sqrt(M)")
    a.set(xlabel="random features M", ylabel="max-norm relative error", title="Against softmax attention "
          "(dashed: linear attention, elu + 1)")
    a.set_xticks(features, [str(m) for m in features])
    a.set_xticks([], minor=True)
    a.legend(fontsize=7)
    for i, M in enumerate(features):
        rows = [p for p in points if p.method == "performer" and p.features == M]
        b.semilogx([p.length for p in rows], [p.error for p in rows], "o-", color=f"C{i}", label=f"Performer, M = {M}")
    rows = [p for p in points if p.method == "linear"]
    b.semilogx([p.length for p in rows], [p.error for p in rows], "s--", color="k", label="linear (elu + 1)")
    b.set(xlabel="sequence length T", ylabel="max-norm relative error", title="Against T", yscale="log")
    b.set_xticks(lengths, [str(t) for t in lengths])
    b.set_xticks([], minor=True)
    b.legend(fontsize=7)
    for i, (std, rows) in enumerate(stds.items()):
        performer = [p for p in rows if p.method == "performer"]
        c.loglog([p.features for p in performer], [p.error for p in performer], "o-", color=f"C{i}",
                 label=f"q, k ~ N(0, {std}^2)")
        c.axhline(rows[0].error, color=f"C{i}", ls="--", lw=1)
    c.set(xlabel="random features M", ylabel="max-norm relative error",
          title=f"Performer at T = {rows[0].length}: larger q, k (dashed: linear)")
    c.set_xticks(features, [str(m) for m in features])
    c.set_xticks([], minor=True)
    c.legend(fontsize=7)
    return save(fig, path)
