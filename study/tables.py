"""Tables the docs compute when they are built (`{{ table NAME ARGS }}`): analytic, so instant, except the
generation tables, measured on a toy model the NumPy reference trains in about a second.

Parameter counts come from the NumPy reference's declared shapes (`registry.param_shapes`) and
`conformance.costs.params`; FLOPs from `conformance.costs.flops`, op by op; generation from
`study.questions.decoding_strategies` and `beam_walkthrough`. Nothing is typed by hand.
"""
from __future__ import annotations

import math

from conformance.spec import families, presets, registry
from conformance.core.config import Config
from conformance.costs import flops, memory, params

B, T = 1, 128  # the shape every per-component count is quoted at
BASE = dict(d_model=768, num_heads=12, d_ff=3072, vocab_size=30522, max_positions=512, type_vocab_size=2,
            image_size=224, patch_size=16)  # and ViT-Base/16's image


def base_config(name: str) -> Config:
    """The registry entry `name` at BERT-base width (a model: its base-size preset)."""
    entry = registry.get(name)
    if entry.is_model:
        return presets.get(families.get(name).base_preset)
    return entry.config().replace(**BASE)


def component_ops(name: str, cfg: Config) -> list:
    """The forward ops of one registry entry at (B, T), as its reference declares them (`Module.flops`)."""
    return flops.ops(cfg, B, T)


def _md(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def component(name: str) -> str:
    """Parameters (name, shape, count) and forward FLOPs of one registry entry at BERT-base width."""
    cfg = base_config(name)
    shapes = registry.param_shapes(cfg)
    dims = f"D = {cfg.d_model}, H = {cfg.num_heads}, F = {cfg.d_ff}"
    out = []
    if registry.get(name).is_model:
        out.append(params_table(families.get(name).base_preset))
    elif shapes:
        rows = [(f"`{k}`", str(s), f"{math.prod(s):,}") for k, s in shapes.items()]
        rows.append(("**total**", "", f"**{sum(math.prod(s) for s in shapes.values()):,}**"))
        out.append(f"Parameters at BERT-base width ({dims}, V = {cfg.vocab_size}, P = {cfg.max_positions}):\n\n"
                   + _md(["canonical name", "shape", "parameters"], rows))
    else:
        out.append("No parameters.")
    ops = component_ops(name, cfg)
    if ops:
        total = sum(o.total for o in ops)
        quad = sum(o.total for o in ops if o.pairs)
        grouped = len(ops) > 16  # a layer or a whole model: by category
        if grouped:
            by = flops.totals(ops)["by_category"]
            rows = [(c, f"{v:,}", f"{v / total:.1%}") for c, v in by.items() if v]
        else:
            rows = [(f"`{o.name}`", o.category, f"{o.total:,}", f"{o.total / total:.1%}") for o in ops]
        header = ["category", "FLOPs", "share"] if grouped else ["op", "category", "FLOPs", "share"]
        where = f", {quad / total:.1%} of them in the T x T terms" if quad else ", all linear in T"
        at = f"B = {B}, T = {T}"
        pixels = flops.input_shapes(cfg, B, T).get("pixel_values")
        if pixels:  # an image sets its own tokens
            at = f"B = {B}, one {pixels[2]} x {pixels[3]} image in {cfg.patch_size} x {cfg.patch_size} patches"
        out.append(f"Forward FLOPs at {at} ({dims}; one multiply-add = 2 FLOPs), "
                   f"{total:,} in all{where}:\n\n" + _md(header, rows))
    else:
        out.append("Forward FLOPs: none counted (a table lookup, a fixed table or the identity at inference).")
    return "\n\n".join(out)


def params_table(preset: str) -> str:
    """A preset's parameters by component, from the config alone (`costs.params.count`)."""
    cfg = presets.get(preset)
    a = params.count(cfg)
    rows = [(k, f"{v:,}", f"{v / a['total']:.1%}") for k, v in a["breakdown"].items() if v]
    rows.append(("**total**", f"**{a['total']:,}**", "100%"))
    layers = ", ".join(f"{n} x {k} layers of {a['per_layer'][k]['total']:,}" for k, n in a["layers"].items())
    return f"`{preset}` parameters ({layers}):\n\n" + _md(["component", "parameters", "share"], rows)


def models() -> str:
    """Every preset: size, parameters and forward GFLOPs at B = 1, T = 128."""
    rows = []
    for name in presets.names():
        cfg = presets.get(name)
        total = params.count(cfg)["total"]
        gf = flops.totals(flops.ops(cfg, B, T))["all"] / 1e9
        rows.append((f"`{name}`", cfg.kind, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_ff, f"{total:,}",
                     f"{gf:,.2f}"))
    return _md(["preset", "kind", "L", "D", "H", "F", "parameters", f"GFLOPs (B={B}, T={T})"], rows)


def crossover(preset: str) -> str:
    """Where one layer's T^2 FLOPs overtake its T FLOPs (`costs.flops.crossover`)."""
    c = flops.crossover(presets.get(preset))
    return (f"For `{preset}` the matmul FLOPs of one layer are linear and quadratic in T in equal parts at "
            f"T* = 2D + F = {c['matmul_formula']:,} (all ops: {c['all']:,.0f}; with the causal half "
            f"skipped: {c['matmul_causal_halved']:,.0f}).")


def _p(x: float) -> str:
    return f"{x:.3f}"


def corpus() -> str:
    """The toy corpus's continuations of "[CLS] the dog": their share and the trained model's log p."""
    from study import questions
    r = questions.decoding_strategies()
    rows = [(f"{text} [SEP]", len(text.split()) + 1, f"{share:.2f}", _p(math.log(share)), _p(logp))
            for text, (share, logp) in r["corpus"].items()]
    return _md(["continuation", "length", "share of the corpus", "log share", "model's log p"], rows)


def decoding() -> str:
    """Greedy, beam search and sampling on the toy model: what each returns."""
    from study import questions
    r = questions.decoding_strategies()
    rows = [(d.strategy, d.text, d.length, _p(d.log_prob), _p(d.log_prob / d.length)) for d in r["strategies"]]
    return _md(["strategy", "continuation", "length", "log p", "log p per token"], rows)


def length_penalty() -> str:
    """Beam search's choice as length_penalty varies: score = log p / length ** length_penalty."""
    from study import questions
    r = questions.decoding_strategies()
    rows = [(d.strategy.split()[-1], d.text, d.length, _p(d.log_prob), _p(d.score)) for d in r["length_penalty"]]
    return _md(["length_penalty", f"chosen ({r['num_beams']} beams)", "length", "log p", "score"], rows)


def beam_steps() -> str:
    """Beam search on the toy model, step by step: each candidate, its sum of log p and its fate."""
    from study import questions
    r = questions.beam_walkthrough()
    rows = [(row["step"], row["candidate"], _p(row["log_prob"]), "yes" if row["ends"] else "",
             "" if row["final"] is None else _p(row["final"]), row["fate"]) for row in r["rows"]]
    return _md(["step", "candidate", "sum log p", "ends", "log p / length", "fate"], rows)


def rope_relative() -> str:
    """`questions.rotary_is_relative`: how far the scores move when both positions shift."""
    from study import questions
    r = questions.rotary_is_relative()
    rows = [(f"rotary, rope_scaling {kind}", f"{v:.1e}") for kind, v in r["by_type"].items()]
    rows += [("rotary, float32 angles (as transformers)", f"{r['float32_angles']:.1e}"),
             ("additive sinusoidal, (q + PE(m)) . (k + PE(n))", f"{r['additive_sinusoidal']:.1e}")]
    return _md([f"scores, both positions + 37 (largest score magnitude {r['score_scale']:.2f})",
                "largest change"], rows)


def rms_vs_layer_norm() -> str:
    """`questions.rms_vs_layer_norm`: equal on zero-mean rows; parameters and FLOPs at D = 768."""
    from study import questions
    r = questions.rms_vs_layer_norm()
    rows = [(name, f"{r[name]['parameters']:,}", f"{r[name]['flops']:,}") for name in ("layer_norm", "rms_norm")]
    rows.append(("saved", f"{r['parameters_saved']:,}", f"{r['flops_saved']:.0%}"))
    return (_md(["norm (D = 768, B = 1, T = 128)", "parameters", "forward FLOPs"], rows)
            + f"\n\nOn zero-mean rows they differ by {r['zero_mean_difference']:.1e}; on rows with a mean, by "
              f"{r['with_mean_difference']:.2f}.")


def swiglu_width() -> str:
    """`questions.swiglu_width`: the gated MLP's width at a 4 D MLP's parameters, for Llama's D = 4096."""
    from study import questions
    r = questions.swiglu_width()
    rows = [("4 D MLP (GELU, biases) parameters", f"{r['standard_parameters']:,}"),
            ("gated MLP parameters per unit of width (3 D)", f"{r['gated_parameters_per_width']:,}"),
            ("equal-parameter width F'", f"{r['equal_width']:,.1f} = {r['ratio']:.4f} D"),
            ("Llama's width (a multiple of 256)", f"{r['llama_width']:,}"),
            ("its parameters, its matmul FLOPs, against the 4 D MLP",
             f"{r['llama_parameters_ratio']:.4f}, {r['llama_flops_ratio']:.4f}")]
    return _md([f"D = {r['d_model']:,}", "value"], rows)


def family(kind: str) -> str:
    """A family's presets: dimensions, parameters, and the key/value cache a token adds in bfloat16."""
    rows = []
    for name in presets.names():
        cfg = presets.get(name)
        if cfg.kind != kind:
            continue
        cache = memory.kv_cache_per_token(cfg, 2)
        rows.append((f"`{name}`", cfg.checkpoint or "", cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.kv_heads,
                     cfg.head_dim, cfg.d_ff, f"{cfg.vocab_size:,}", f"{cfg.max_positions:,}",
                     f"{params.count(cfg)['total']:,}", f"{cache / 1024:,.1f}" if cache else ""))
    return _md(["preset", "layout", "L", "D", "H", "KV", "Dh", "F", "V", "context", "parameters",
                "KV cache KiB / token (bf16)"], rows)


def gqa_cache() -> str:
    """`questions.gqa_cache`: llama3-8b's cache at 8,192 tokens with 32, 8 and 1 key/value heads."""
    from study import questions
    r = questions.gqa_cache()
    rows = [(f"{x['kv_heads']}" + {1: " (multi-query)", r["num_heads"]: " (multi-head)"}.get(x["kv_heads"], " (GQA)"),
             x["groups"], f"{x['per_token'] / 1024:,.0f}", f"{x['bytes'] / 2 ** 30:,.3g}",
             f"{x['kv_projection_parameters']:,}", f"{x['parameters']:,}") for x in r["rows"]]
    return _md([f"kv heads ({r['preset']}, H = {r['num_heads']})", "G = H / KV", "KiB / token (bf16)",
                f"GiB at {r['tokens']:,} tokens", "k, v projection parameters", "model parameters"], rows)


def relative_buckets(buckets: str = "32", distance: str = "128") -> str:
    """T5's relative position buckets: the offsets (key - query) each bucket holds, in the encoder
    (bidirectional) and the decoder (causal), from `numpy_ref.relative_position.relative_position_bucket`."""
    import numpy as np

    from numpy_ref.relative_position import relative_position_bucket
    n, d = int(buckets), int(distance)
    offsets = np.arange(-4 * d, 4 * d + 1)

    def spans(bidirectional):
        got = relative_position_bucket(offsets, bidirectional, n, d)
        out = {}
        for b in range(n):
            held = offsets[got == b]
            if not held.size:
                continue
            lo, hi = int(held.min()), int(held.max())
            out[b] = (f"{hi} and below" if lo == offsets[0] else f"{lo} and above" if hi == offsets[-1]
                      else f"{lo}" if lo == hi else f"{lo} .. {hi}")
        return out
    encoder, decoder = spans(True), spans(False)
    rows = [(b, encoder.get(b, "-"), decoder.get(b, "-")) for b in range(n)]
    return _md([f"bucket ({n} buckets, max distance {d})", "encoder offsets", "decoder offsets"], rows)


def efficient_attention() -> str:
    """`questions.efficient_attention`: the NumPy reference and tiled attention at growing T (peaks by
    tracemalloc, a second or two), and a sliding window's share of the causal pairs."""
    from study import questions
    r = questions.efficient_attention()
    rows = [(f"{x['T']:,}", f"{x['reference_peak_bytes'] / 2 ** 20:,.1f}", f"{x['tiled_peak_bytes'] / 2 ** 20:,.2f}",
             f"{x['tiled_peak_bytes'] / x['reference_peak_bytes']:.3f}", f"{x['max_abs_difference']:.1e}",
             f"{x['window_pairs'] / x['causal_pairs']:.3f}") for x in r["rows"]]
    fits = (f"peak ~ T^{r['exponent_reference_peak']:.2f} (reference), T^{r['exponent_tiled_peak']:.2f} (tiled); "
            f"matmul FLOPs at T = {r['rows'][-1]['T']:,}: {r['matmul_flops']['reference']:,} both")
    return _md(["T", "reference peak MiB", f"tiled peak MiB (blocks {r['block']})", "tiled / reference",
                "max abs difference", f"window {r['window']} / causal pairs"], rows) + f"\n\n{fits}."


TABLES = {"component": component, "family": family, "gqa_cache": gqa_cache, "params": params_table, "models": models, "crossover": crossover,
          "corpus": corpus, "decoding": decoding, "length_penalty": length_penalty, "beam_steps": beam_steps,
          "rope_relative": rope_relative, "relative_buckets": relative_buckets, "rms_vs_layer_norm": rms_vs_layer_norm, "swiglu_width": swiglu_width,
          "efficient_attention": efficient_attention}


def table(name: str, *args: str) -> str:
    if name not in TABLES:
        raise ValueError(f"table must be one of {list(TABLES)}; received table={name!r}")
    return TABLES[name](*args)
