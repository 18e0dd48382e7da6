"""Parameters, FLOPs, memory and time of a model: analytic, measured, and each checked against another.

    from conformance import costs
    from conformance.spec import presets
    section = costs.costs(presets.get("bert-base"), batch=1, seq_len=128, frameworks=["torch", "tf"])
    print(costs.markdown(section)); pngs = costs.plots(section)   # {name: base64 PNG}

`costs(..., measure=False)` is analytic only and instant at any size (nothing is allocated).
The math lives in the modules' docstrings: `params` (counts by component), `flops` (per op, the
crossover length), `memory` (weights, activations, training state), `measure` (the counters and
what each one misses). The returned dict is JSON-serialisable and its keys are the same whether
or not anything was measured (measured parts are then empty).
"""
from __future__ import annotations

import gc

from conformance import weights as weights_lib
from conformance.backends import build
from conformance.backends.base import best_seconds
from conformance.core.config import Config
from conformance.spec import families
from conformance.costs import flops, memory, params
from conformance.costs import measure as meter  # `measure` is also costs()'s flag
from conformance.costs.render import markdown, plots

SCHEMA = 1
__all__ = ["costs", "markdown", "plots", "flops", "memory", "params", "measure"]


def costs(cfg: Config, batch: int = 1, seq_len: int = 128, frameworks=("numpy", "torch", "tf"),
          measure: bool = True, weights: dict | None = None, repeats: int = 3, peak_size: int = 2048) -> dict:
    """The whole section for `cfg` at (batch, seq_len); see the module docstring. With `measure`,
    each of `frameworks` is built (on `weights`, default seeded init), counted, timed and its
    memory measured; `peak_size` is N of the N x N matmul that measures the machine's peak."""
    params.check_model(cfg)
    count = params.count(cfg)
    rec = {"schema": SCHEMA, "kind": cfg.kind, "batch": batch, "seq_len": seq_len,
           "parameters": {"count": count, "frameworks": {}, "transformers": None},
           "flops": {**flops.section(cfg, batch, seq_len), "measured": {}},
           "memory": {**memory.section(cfg, batch, seq_len, count["total"]), "measured": {}},
           "scaling": scaling(cfg, batch, seq_len),
           "speed": {}}
    if measure:
        _measure(cfg, batch, seq_len, list(frameworks), rec, weights, repeats, peak_size)
    p, hf = rec["parameters"], rec["parameters"]["transformers"]
    counts = [*p["frameworks"].values(), *([hf["total"]] if hf and hf["total"] else [])]
    p["agree"] = all(c == count["total"] for c in counts)
    return rec


def scaling(cfg: Config, batch: int, seq_len: int) -> dict:
    """FLOPs and activation memory (float32) against sequence length at `batch`, and against batch."""
    def row(B, T):
        t, a = flops.totals(flops.ops(cfg, B, T)), memory.activations(cfg, B, T)
        return {"batch": B, "seq_len": T,
                **{k: t[k] for k in ("linear", "quadratic", "matmul", "all", "all_causal_halved")},
                "inference_bytes": a["inference_peak"]["torch"], "training_bytes": a["training"]["none"],
                "training_selective_bytes": a["training"]["selective"],
                "training_full_recompute_bytes": a["training"]["full"]}
    return {"by_length": [row(batch, T) for T in flops.SEQ_LENS],
            "by_batch": [row(B, seq_len) for B in flops.BATCHES],
            "crossover": flops.crossover(cfg), "max_positions": cfg.max_positions}


def _measure(cfg, batch, seq_len, frameworks, rec, w, repeats, peak_size):
    inputs = families.get(cfg.kind).inputs(cfg, batch, seq_len)
    P, S, n = rec["parameters"], rec["speed"], rec["parameters"]["count"]["total"]
    P["transformers"] = params.transformers_count(cfg)
    S["matmul_peak_gflops"], S["matmul_peak_size"] = meter.matmul_peak(frameworks, peak_size), peak_size
    S["forward"] = {}
    w = weights_lib.initialize(cfg) if w is None else w
    for fw in frameworks:
        if 8 * n > meter.available_bytes():
            S["forward"][fw] = {"skipped": f"a float32 {fw} copy of {n:,} parameters does not fit in free memory"}
        else:
            _measure_framework(fw, cfg, w, inputs, rec, repeats)
            gc.collect()  # the model is gone: free its weights before building the next
    transformers = meter.transformers_sdpa(cfg, inputs) if "torch" in frameworks else None
    if transformers:
        t = rec["flops"]["totals"]
        rec["flops"]["measured"]["transformers"] = {**transformers, "analytic_matmul": t["matmul"],
                                                    "analytic_attention_matmul": t["by_category"]["attention"]}


def _measure_framework(fw, cfg, w, inputs, rec, repeats):
    F, M, S = rec["flops"]["measured"], rec["memory"]["measured"], rec["speed"]
    total, activations = rec["flops"]["totals"]["all"], rec["memory"]["activations_float32"]
    m = build(fw, cfg, w, dtype="float32")
    rec["parameters"]["frameworks"][fw] = m.num_parameters()
    def call():
        return m(**inputs)

    rss = meter.rss_peak(call)  # the first, cold forward (the warm-up): later ones reuse freed memory
    seconds = best_seconds(call, repeats, warm_up=False)
    gflops = total / seconds / 1e9
    S["forward"][fw] = {"seconds": seconds, "gflops": gflops,
                        "fraction_of_peak": gflops / max(S["matmul_peak_gflops"].values()),
                        "fraction_of_own_matmul_peak": gflops / S["matmul_peak_gflops"][fw]}
    M[fw] = {"analytic_inference_peak": activations["inference_peak"][fw], "rss_peak": rss,
             **m.backend.allocator_peaks(m, inputs)}
    counted = m.backend.count_flops(m, inputs)
    if counted:
        F[fw] = counted
    if 20 * rec["parameters"]["count"]["total"] < meter.available_bytes():  # weights, grads, moments
        trained = m.backend.training_memory(m, inputs)
        if trained:
            M[f"{fw}_training"] = {**trained, "analytic_saved_for_backward": activations["training"]["none"]}
