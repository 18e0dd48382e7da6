"""`markdown(section)` and `plots(section)`: views of the dict `costs.costs` returns."""
from __future__ import annotations

import base64
import io

from tabulate import tabulate

MB = 2**20


def _table(rows, headers):
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def _n(x):
    return "n/a" if x is None else f"{x:,}"


def _mb(x):
    return "n/a" if x is None else f"{x / MB:,.2f}"


def _ratio(a, b):
    return "n/a" if a is None or not b else f"{a / b:.3f}"


def markdown(rec: dict) -> str:
    B, T = rec["batch"], rec["seq_len"]
    return "\n".join([f"## Parameters, FLOPs and memory (batch {B}, sequence {T})", "",
                      *_parameters(rec["parameters"]), *_flops(rec["flops"]), *_scaling(rec["scaling"]),
                      *_memory(rec["memory"]), *_speed(rec["speed"])])


def _parameters(p):
    a = p["count"]
    rows = [("the reference's declarations (registry.param_shapes)", _n(a["total"]))]
    rows += [(f"{fw} num_parameters()", _n(v)) for fw, v in p["frameworks"].items()]
    if p["transformers"]:
        hf = p["transformers"]
        rows.append((f"transformers {hf['model']}.num_parameters()" if hf["model"] else "transformers",
                     _n(hf["total"]) if hf["total"] else hf.get("reason", "")))
    out = ["### Parameters", "", _table(rows, ["counted by", "parameters"]), "",
           f"All counts agree: **{'yes' if p['agree'] else 'NO'}**", "",
           _table([(k, _n(v), f"{100 * v / a['total']:.1f}%") for k, v in a["breakdown"].items() if v],
                  ["component", "parameters", "share"]), ""]
    for name, layer in a["per_layer"].items():
        out += [f"Each of the {a['layers'][name]} `{name}` layers: " + ", ".join(
            f"{k} {_n(v)}" for k, v in layer.items()), ""]
    return out


def _flops(f):
    t = f["totals"]
    out = ["### FLOPs (forward)", "", f"Convention: {f['convention']}. Per element: " + ", ".join(
        f"{k} {v}" for k, v in f["per_element"].items()) + f"; layer norm also {f['layer_norm_per_row']} per row.", "",
           _table([("matmul only", _n(t["matmul"]), _n(t["matmul_causal_halved"])),
                   ("all ops", _n(t["all"]), _n(t["all_causal_halved"]))],
                  ["total", "causal attention counted in full", "causal attention halved"]), ""]
    if not f["causal"]:
        out += ["(No causal attention here: both columns are equal.)", ""]
    out += [_table([(k, _n(v), f"{100 * v / t['all']:.2f}%") for k, v in t["by_category"].items()],
                   ["category", "FLOPs", "share"]), "",
            _table([(o["name"], o["category"], _n(o["flops"]), o["count"], _n(o["total"])) for o in f["ops"]],
                   ["op", "category", "FLOPs", "times", "total"]), ""]
    m = f["measured"]
    if m:
        out += ["Measured:", ""]
        rows = []
        for fw, c in m.items():
            if fw == "transformers":
                continue
            if "missed_elements" in c:  # a counter with formulas beyond matmuls: what it has none for
                missed = ", ".join(f"{k} ({_n(v)} elements)" for k, v in c["missed_elements"].items())
                note = (f"all registered ops {_n(c['total'])} (analytic all ops {_n(t['all'])}); "
                        f"no formula for: {missed or 'none'}")
                if c.get("unsized_ops"):  # a mixture of experts: its experts' rows are known only when run
                    note += ("; not counted, of data-dependent shape: "
                             + ", ".join(f"{k} x{v}" for k, v in c["unsized_ops"].items()))
            else:
                note = "matmuls only (" + ", ".join(f"{k} {_n(v)}" for k, v in c["by_op"].items()) + ")"
            rows.append((f"{fw}, {c['counter']}", _n(c["matmul"]), _ratio(c["matmul"], t["matmul"]), note))
        if m.get("transformers"):
            hf = m["transformers"]
            note = f"ratio to the analytic matmuls, {_n(hf['analytic_matmul'])}"
            rows.append((f"transformers {hf['model']} eager, FlopCounterMode", _n(hf["eager"]),
                         _ratio(hf["eager"], hf["analytic_matmul"]), note))
            rows.append((f"transformers {hf['model']} sdpa, FlopCounterMode", _n(hf["sdpa"]),
                         _ratio(hf["sdpa"], hf["analytic_matmul"]),
                         f"misses {_n(hf['missed_by_sdpa'])}: no formula for CPU scaled_dot_product_attention "
                         f"(analytic attention matmuls {_n(hf['analytic_attention_matmul'])})"))
        out += [_table(rows, ["counter", "FLOPs", "/ analytic matmul", "note"]), ""]
    return out


def _scaling(s):
    c = s["crossover"]
    rows = [(r["seq_len"], _n(r["linear"]), _n(r["quadratic"]), f"{100 * r['quadratic'] / r['all']:.1f}%",
             _n(r["all"]), _mb(r["inference_bytes"]), _mb(r["training_bytes"]),
             "" if r["seq_len"] <= s["max_positions"] else "beyond max_positions") for r in s["by_length"]]
    out = ["### Scaling with sequence length and batch", "",
           f"Per layer the T^2 terms (scores, softmax, context) overtake the T d^2 terms at "
           f"T* = 2D + F = **{c['matmul_formula']:,}** for matmuls ({c['matmul']:,.0f} from the op list), "
           f"{c['all']:,.0f} for all ops; with causal attention halved: {c['matmul_causal_halved']:,.0f} and "
           f"{c['all_causal_halved']:,.0f}.", "", f"Batch {s['by_length'][0]['batch']}:", "",
           _table(rows, ["T", "T-linear FLOPs", "T^2 FLOPs", "T^2 share", "all FLOPs", "inference MiB",
                         "training activations MiB", ""]), "",
           f"Sequence {s['by_batch'][0]['seq_len']}:", "",
           _table([(r["batch"], _n(r["all"]), _mb(r["inference_bytes"]), _mb(r["training_bytes"]),
                    _mb(r["training_full_recompute_bytes"])) for r in s["by_batch"]],
                  ["batch", "all FLOPs", "inference MiB", "training activations MiB", "full recomputation MiB"]), ""]
    return out


def _memory(mem):
    a = mem["activations_float32"]
    out = ["### Memory", "", _table([(k, _mb(v)) for k, v in mem["weights"].items()], ["weights", "MiB"]), ""]
    kv = mem.get("kv_cache")
    if kv and kv.get("source_tokens"):  # an encoder-decoder's: self-attention's growing, cross-attention's once
        out += [_table([(d, _n(kv["per_token"][d]), _n(kv["per_source_token"][d]), _mb(kv["bytes"][d]))
                        for d in kv["per_token"]],
                       [f"key/value cache, {kv['tokens']:,} target and {kv['source_tokens']:,} source tokens x batch "
                        f"{kv['batch']}", "bytes / target token", "bytes / source token", "MiB"]), ""]
    elif kv:  # a decoder's generation cache
        out += [_table([(d, _n(kv["per_token"][d]), _mb(kv["bytes"][d]), _mb(kv["bytes_without_grouping"][d]))
                        for d in kv["per_token"]],
                       [f"key/value cache, {kv['tokens']:,} tokens x batch {kv['batch']}, {kv['kv_heads']} kv heads",
                        "bytes / token", "MiB", f"MiB with {kv['num_heads']} kv heads"]), ""]
    out += ["Training: what backward needs, float32, tensor by tensor as the PyTorch mirror saves it, one layer:", ""]
    for name, saved in a["saved_per_layer"].items():
        rows = [(t["tensor"], _n(t["bytes"])) for t in saved] + [("total", _n(a["training_per_layer"][name]))]
        out += [_table(rows, [f"`{name}` layer", "bytes"]), ""]
    out += [_table([(k, _mb(v)) for k, v in a["training"].items()], ["recomputation", "whole model MiB"]), "",
            _table([(k, p["per_parameter"], _mb(p["bytes"])) for k, p in mem["training_state"].items()],
                   ["training state", "bytes / parameter", "MiB"]), ""]
    rows, m = [], mem["measured"]
    labels = {"allocator_peak": "torch.profiler allocator peak", "tracemalloc_peak": "tracemalloc",
              "rss_peak": "peak RSS increase, first forward"}
    for fw, x in m.items():
        if fw.endswith("_training"):
            continue
        rows += [(fw, labels.get(key, key), _mb(x[key]), _mb(x["analytic_inference_peak"]),
                  _ratio(x[key], x["analytic_inference_peak"])) for key in labels if key in x]
    for key, tr in m.items():
        if key.endswith("_training"):
            fw = key.removesuffix("_training")
            rows.append((fw, "training: bytes autograd saves for backward", _mb(tr["saved_for_backward"]),
                         _mb(tr["analytic_saved_for_backward"]),
                         _ratio(tr["saved_for_backward"], tr["analytic_saved_for_backward"])))
            rows.append((fw, "after one AdamW step: bytes / parameter (not MiB)",
                         f"{sum(tr['state_per_parameter'].values()):.2f}", "16", ""))
    if rows:
        out += ["Measured against analytic (inference rows: the analytic peak of one forward):", "",
                _table(rows, ["framework", "measure", "measured MiB", "analytic MiB", "ratio"]), ""]
    return out


def _speed(s):
    if not s:
        return []
    peak = s["matmul_peak_gflops"]
    rows = [(fw, f"{1e3 * r['seconds']:.1f}", f"{r['gflops']:.1f}", f"{100 * r['fraction_of_peak']:.1f}%",
             f"{peak[fw]:.1f}") if "seconds" in r else (fw, r["skipped"], "", "", "")
            for fw, r in s["forward"].items()]
    return ["### Speed (CPU, float32, best of repeats)", "",
            _table(rows, ["framework", "forward ms", "GFLOP/s (all ops)", "of machine matmul peak",
                          "framework's matmul GFLOP/s"]), "",
            f"Machine matmul peak ({s['matmul_peak_size']} x {s['matmul_peak_size']} float32, best framework): "
            f"{max(peak.values()):.1f} GFLOP/s.", ""]


def plots(rec: dict) -> dict[str, str]:
    """{"flops": base64 PNG, "memory": base64 PNG}: against sequence length and against batch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = rec["scaling"]
    L, Bt = s["by_length"], s["by_batch"]
    out = {}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("linear", "T-linear terms (projections, FFN)"), ("quadratic", "T^2 terms (attention)"),
                       ("all", "all ops")):
        ax.loglog([r["seq_len"] for r in L], [r[key] for r in L], marker="o", label=label)
    ax.axvline(s["crossover"]["all"], color="grey", linestyle=":",
               label=f"one layer's crossover T* = {s['crossover']['all']:,.0f}")
    ax.set(xlabel="sequence length T", ylabel="forward FLOPs", title=f"batch {L[0]['batch']}")
    bx.loglog([r["batch"] for r in Bt], [r["all"] for r in Bt], marker="o")
    bx.set(xlabel="batch", ylabel="forward FLOPs", title=f"sequence {Bt[0]['seq_len']}")
    ax.legend(fontsize=8)
    out["flops"] = _png(fig, plt)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for axis, rows, x in ((ax, L, "seq_len"), (bx, Bt, "batch")):
        for key, label in (("training_bytes", "training activations"),
                           ("training_selective_bytes", "selective recomputation"),
                           ("training_full_recompute_bytes", "full recomputation"),
                           ("inference_bytes", "inference peak (torch)")):
            axis.loglog([r[x] for r in rows], [r[key] / MB for r in rows], marker="o", label=label)
        axis.axhline(rec["memory"]["weights"]["float32"] / MB, color="grey", linestyle="--", label="float32 weights")
        axis.set(xlabel="sequence length T" if x == "seq_len" else "batch", ylabel="MiB")
    ax.legend(fontsize=8)
    out["memory"] = _png(fig, plt)
    return out


def _png(fig, plt) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
