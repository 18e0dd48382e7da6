"""`tmirror figures` (also `python -m study`): every number and figure the docs quote, written by one command.

    docs/generated/*.md   the answers of `study.questions` as Markdown tables (pages include them)
    docs/figures/*.png    positional encoding, attention patterns, error along depth, cost against T,
                          softmax saturation, pre- vs post-norm gradients, linear attention's error

`quick=True` measures smaller versions (shorter sequences, bert-tiny for the error along depth) in
seconds; the committed docs come from the full run.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from conformance.core import files
from study import questions as q

PNG_DPI = 110


def _md(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    files.write(path, lambda tmp: fig.savefig(tmp, dpi=PNG_DPI, format="png"), "figure")
    _plt().close(fig)
    return path


# -------------------------------------------------------------------------------- tables

def parameters_md() -> str:
    p = q.bert_base_parameters()
    rows = [(f"embeddings: {k}", f"{v:,}", f"{v / p['total']:.1%}") for k, v in p["embeddings"].items()]
    rows += [(f"{p['layers']} layers: {k}", f"{p['layers'] * v:,}", f"{p['layers'] * v / p['total']:.1%}")
             for k, v in p["per_layer"].items()]
    rows += [("pooler (D x D + D)", f"{p['pooler']:,}", f"{p['pooler'] / p['total']:.1%}"),
             ("**total**", f"**{p['total']:,}**", "100%")]
    return (_md(["where", "parameters", "share"], rows)
            + f"\nOne layer: {p['per_layer_total']:,} (attention {p['per_layer']['attention']:,} = 4 (D^2 + D); "
              f"feed-forward {p['per_layer']['feed_forward']:,} = 2 D F + F + D; two layer norms "
              f"{p['per_layer']['norms']:,}).\n")


def scale_md(rows) -> str:
    return _md(["Dh", "var(q.k)", "var(q.k / sqrt Dh)", "entropy unscaled (nats)", "entropy scaled",
                "max weight unscaled", "max weight scaled", "softmax Jacobian unscaled", "Jacobian scaled"],
               [(r.head_dim, f"{r.score_var_unscaled:.1f}", f"{r.score_var_scaled:.3f}", f"{r.entropy_unscaled:.2f}",
                 f"{r.entropy_scaled:.2f}", f"{r.max_prob_unscaled:.3f}", f"{r.max_prob_scaled:.3f}",
                 f"{r.jacobian_unscaled:.3f}", f"{r.jacobian_scaled:.3f}") for r in rows])


def cost_md(c) -> str:
    rows = [(r.length, f"{r.score_bytes:,}", f"{r.peak_bytes:,}", f"{r.flops:,}", f"{r.seconds * 1e3:.1f}")
            for r in c["rows"]]
    return (_md(["T", "scores tensor (bytes)", "peak traced memory (bytes)", "FLOPs (q k^T, p v)", "time (ms)"], rows)
            + f"\nFitted exponents b in y ~ T^b: scores tensor {c['exponent_score_bytes']:.3f}, FLOPs "
              f"{c['exponent_flops']:.3f}, peak memory {c['exponent_peak_bytes']:.2f} (the O(T) q, k, v and "
              f"output still count at short T), time {c['exponent_seconds']:.2f} (one run on "
              f"{platform.machine()}, {c['threads']}; recorded, not asserted).\n")


def positions_md(r) -> str:
    return _md(["model", "pooled('dog bites man') vs pooled('man bites dog'): max abs difference",
                "outputs, permuted, vs outputs of the permuted input: max abs difference"],
               [(k, f"{v['pooled_difference']:.3g}", f"{v['permuted_difference']:.3g}") for k, v in r.items()])


def norms_md(r) -> str:
    post, pre = r["post-norm"], r["pre-norm"]
    return _md(["depth", "post-norm: norm of dL/dx", "pre-norm: dL/dx", "post-norm: dL/dW_q of layer 0",
                "pre-norm: dL/dW_q of layer 0"],
               [(a["depth"], f"{a['input_grad']:.3f}", f"{b['input_grad']:.3f}", f"{a['first_layer_grad']:.3f}",
                 f"{b['first_layer_grad']:.3f}") for a, b in zip(post, pre)])


def masks_md(r) -> str:
    def matrix(m):
        head = ["query \\ key", *r["tokens"]]
        return _md(head, [(t, *("1" if v else "." for v in row)) for t, row in zip(r["tokens"], m)])
    e = r["effect"]
    return ("BERT (bidirectional, padding hidden):\n\n" + matrix(r["bert_mask"])
            + "\nGPT-2 (causal, padding hidden):\n\n" + matrix(r["gpt2_mask"])
            + f"\nChanging the token at position {r['changed_position']} ('{r['tokens'][r['changed_position']]}' "
              f"-> 'cat'), largest change of the last hidden state:\n\n"
            + _md(["model", f"positions < {r['changed_position']}", f"positions >= {r['changed_position']}"],
                  [(k, f"{v['before']:.3g}", f"{v['at_and_after']:.3g}") for k, v in e.items()]))


def batch_norm_md(r) -> str:
    return _md(["normalization", "example 0 moves when the other examples change",
                "example 0 moves when the batch is padded"],
               [(k, f"{v['other_examples']:.3g}", f"{v['padding']:.3g}") for k, v in r.items()])


def families_md(rows, seq_len) -> str:
    base = rows[0]
    return _md(["model", "parameters", "embeddings", "layers", "layer parameters", f"GFLOPs (B=1, T={seq_len})",
                "vs BERT-base", "what differs"],
               [(r["model"], f"{r['parameters']:,}", f"{r['embeddings']:,}", r["layers"], f"{r['layer_parameters']:,}",
                 f"{r['flops'] / 1e9:.2f}", f"{r['parameters'] / base['parameters']:.2f}x params, "
                 f"{r['flops'] / base['flops']:.2f}x FLOPs", r["differs"]) for r in rows])


def lora_parameters_md(r) -> str:
    rows = [(k, t["count"], f"{t['in']} x {t['out']}", f"{t['full']:,}", f"{t['lora']:,}", f"{t['lora'] / t['full']:.2%}")
            for k, t in r["per_kind"].items()]
    rows.append(("all targets", sum(t["count"] for t in r["per_kind"].values()), "", f"{r['full_targets']:,}",
                 f"{r['lora']:,}", f"{r['share_of_targets']:.2%}"))
    return (f"`{r['preset']}`, r = {r['rank']}, targets {', '.join(r['targets'])}:\n\n"
            + _md(["target", "count", "in x out", "trained in full (in x out)", "LoRA (r (in + out))", "share"], rows)
            + f"\n\nOf the whole model's {r['model']:,} parameters LoRA trains {r['share_of_model']:.3%}; AdamW's "
              f"moments shrink from {r['adamw_bytes']['full'] / 2**20:,.0f} MiB to {r['adamw_bytes']['lora'] / 2**20:,.1f} MiB.\n")


def fine_tuning_md(f) -> str:
    c, full = f["config"], f["rows"][0]
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    rows = [(r["method"], r["dtype"], f"{r['trainable']:,}", f"{r['trainable'] / r['parameters']:.2%}",
             mib(r["gradients_bytes"]), mib(r["adamw_state_bytes"]), mib(r["peak_step_bytes"]),
             f"{r['peak_step_bytes'] / full['peak_step_bytes']:.2f}") for r in f["rows"]]
    return (f"BERT, {c.num_layers} layers, D = {c.d_model}, F = {c.d_ff}, vocabulary {c.vocab_size:,}; classification, "
            f"micro-batch {f['batch']} x {f['seq_len']} tokens, torch_impl on the CPU, one AdamW step. Peak: the "
            "allocator's high-water mark during the step on top of the weights already held "
            f"({mib(full['weights_bytes'])} MiB).\n\n"
            + _md(["method", "dtype", "trainable", "share", "gradients MiB", "AdamW state MiB", "peak step MiB",
                   "vs full"], rows) + "\n")


# -------------------------------------------------------------------------------- figures

def streaming_md(reports: str | Path = "reports") -> str:
    """The streamed reports committed under reports/ (`tmirror report --stream`), and what a 70B and a 405B
    check would cost from their measured per-layer figures (`conformance.report.stream.worker_hours`)."""
    import json

    from conformance.report import stream
    from conformance.spec import presets
    gib = 2.0 ** 30
    recs = [json.loads(p.read_text()) for p in sorted(Path(reports).glob("*-stream.json"))]
    rows = []
    for rec in recs:
        s, env = rec["stream"], rec["environment"]
        labels = list(s["layers"][0]["chained"])
        worst = lambda mode: ", ".join(f"{lb} {max(r[mode][lb]['max_abs'] for r in s['layers']):.1e}"  # noqa: E731
                                       for lb in labels)
        first = s["first_layer_out_of_tolerance"]
        rows.append((f"`reports/{rec['name']}.md`",
                     f"{s['estimate']['layer_parameters']:,}", s["policy"],
                     f"{s['peak_rss'] / gib:.2f} ({s['peak_over_baseline'] / gib:.2f})", f"{s['memory_bound'] / gib:.2f}",
                     f"{s['estimate']['whole'] / gib:.0f}", f"{s['wall']['total'] / 60:.1f}",
                     f"{s['cost_model']['layer_chain_seconds']:.1f} + {s['cost_model']['layer_replay_seconds']:.1f}",
                     worst("chained"), worst("replayed"),
                     "; ".join(f"{mode}: " + (", ".join(f"{lb} layer {v}" for lb, v in first[mode].items()
                                                         if v is not None) or "none") for mode in ("chained", "replayed")),
                     f"{env.get('load_average_at_start')}, {env.get('load_average_at_end')}"))
    out = _md(["report", "layer parameters", "policy", "peak RSS GiB (over baseline)", "bound GiB",
               "whole model GiB", "wall min", "layer s (chained + replayed)", "worst chained error",
               "worst replayed error", "first layer out of tolerance", "load at start, end"], rows)
    targets = {"llama3-70b (80 layers)": presets.get("llama3-70b"),
               "Llama 3.1 405B (126 layers)": presets.get("llama3-70b").replace(d_model=16384, num_heads=128,
                                                                                 d_ff=53248, num_layers=126)}
    wh = []
    for rec in recs:
        cm = rec["stream"]["cost_model"]
        for name, cfg in targets.items():
            h = stream.worker_hours(cm, cfg)
            wh.append((f"{rec['preset']}, {rec['config']['num_layers']} layers", name, f"{h['scale']:.1f}",
                       f"{h['chain_hours']:.2f}", f"{h['replay_worker_hours']:.2f}", f"{h['worker_hours']:.2f}"))
    whole = Path(reports).parent / "bench" / "results" / "stream-whole.json"  # bench/bench_stream.py --whole
    if whole.is_file():
        both = json.loads(whole.read_text())
        out += "\nThe same report whole and streamed, each in a fresh process (peak resident set from the kernel, " \
               "interpreter and libraries included; `bench/results/stream-whole.md`):\n\n"
        out += _md(["preset", "parameters", "whole: peak RSS GiB", "streamed: peak RSS GiB", "streamed / whole",
                    "whole s", "streamed s"],
                   [(r["preset"], f"{r['parameters']:,}", f"{r['whole']['peak_rss'] / gib:.2f}",
                     f"{r['streamed']['peak_rss'] / gib:.2f}", f"{r['streamed']['peak_rss'] / r['whole']['peak_rss']:.2f}",
                     f"{r['whole']['seconds']:.0f}", f"{r['streamed']['seconds']:.0f}") for r in both])
    out += "\nWhat a check would cost, from each run's measured per-layer seconds scaled by layer parameters " \
           "(batch 1, the same sequence length, this machine's 2 cores per worker):\n\n"
    out += _md(["measured on", "check", "layer size x", "chained h (one worker)", "replayed worker-h",
                "worker-hours"], wh)
    return out


def positional_encoding_png(path: Path) -> Path:
    from numpy_ref.embeddings import sinusoidal_encoding
    plt = _plt()
    pe = sinusoidal_encoding(np.arange(128), 128)                            # (P, D)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    im = a.imshow(pe, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    a.set(xlabel="channel (even: sin, odd: cos; frequency falls left to right)", ylabel="position",
          title="Sinusoidal encoding PE(pos, i), D = 128")
    fig.colorbar(im, ax=a, fraction=0.04)
    sim = pe @ pe.T / 64                                                     # (P, P)
    im = b.imshow(sim, cmap="viridis", interpolation="nearest")
    b.set(xlabel="position", ylabel="position", title="PE(i) . PE(j) / (D/2): depends on |i - j| only")
    fig.colorbar(im, ax=b, fraction=0.046)
    return _save(fig, path)


def attention_patterns_png(path: Path, sentence="the dog bites the man", length=9, seed=0) -> Path:
    from conformance import weights
    from conformance.backends.build import build
    plt = _plt()
    tokens, ids, mask = q.tokenize(sentence, length)
    heads = {}
    for kind, op in (("bert", "encoder.0.attention.probs"), ("gpt2", "layers.0.attention.probs")):
        cfg = q.small(kind)
        m = build("numpy", cfg, weights.initialize(cfg, seed=seed, std=0.2), dtype="float64")
        heads[kind] = m.trace(input_ids=ids, attention_mask=mask)[1][op][0]  # (H, T, T)
    H = heads["bert"].shape[0]
    fig, axes = plt.subplots(2, H, figsize=(3.1 * H, 6.6))
    for row, (kind, probs) in enumerate(heads.items()):
        for h in range(H):
            ax = axes[row, h]
            ax.imshow(probs[h], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks(range(length), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(length), tokens, fontsize=7)
            ax.set_title(f"{'BERT' if kind == 'bert' else 'GPT-2'} layer 0, head {h}", fontsize=9)
    fig.suptitle(f"Attention weights on '{sentence}' padded to {length} (rows: queries, columns: keys). "
                 "Random weights: the masks' structure, not learned meaning", fontsize=10)
    return _save(fig, path)


def error_by_depth(preset="bert-base", seq_len=128, frameworks=("numpy", "torch", "tf"), seed=0) -> dict:
    """Per-layer float32 error against the float64 reference, from traces (`conformance.compare.divergence`)."""
    from conformance.spec import presets
    from conformance.report import runner
    from conformance import weights
    from conformance.backends.build import build
    from conformance.compare.divergence import compare_traces
    cfg = presets.get(preset)
    w = weights.initialize(cfg, seed=seed)
    inputs = runner.model_inputs(cfg, 1, seq_len, seed)
    keep = ["embeddings.output", "encoder.*.output"]

    def layers(records):
        return {k: v for k, v in records.items() if k == "embeddings.output" or
                (k.startswith("encoder.") and k.count(".") == 2 and k.endswith(".output"))}
    reference = layers(build("numpy", cfg, w, dtype="float64").trace(summary=True, full=keep, **inputs)[1])
    out = {"preset": preset, "seq_len": seq_len, "ops": list(reference), "max_abs": {}, "max_rel": {}}
    for fw in frameworks:
        records = layers(build(fw, cfg, w, dtype="float32").trace(summary=True, full=keep, **inputs)[1])
        comparisons = compare_traces(reference, records, "float32")
        out["max_abs"][fw] = [c.max_abs for c in comparisons]
        out["max_rel"][fw] = [c.max_abs / float(np.abs(reference[c.name]).max()) for c in comparisons]
    return out


def error_depth_md(e) -> str:
    fws = list(e["max_abs"])
    rows = [(f"`{op}`", *(f"{e['max_abs'][fw][i]:.2e}" for fw in fws)) for i, op in enumerate(e["ops"])]
    return (f"`{e['preset']}`, B = 1, T = {e['seq_len']}, seeded random weights; max |float32 - float64 reference| "
            "of each layer's output:\n\n" + _md(["op", *fws], rows))


def error_depth_png(e, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for fw, values in e["max_abs"].items():
        ax.semilogy(range(len(values)), values, marker="o", label=f"{fw} float32")
    ax.set_xticks(range(len(e["ops"])), ["emb"] + [str(i) for i in range(len(e["ops"]) - 1)])
    ax.set(xlabel="layer output (emb = embeddings, then encoder layer i)",
           ylabel="max |float32 - float64 reference|",
           title=f"Error along depth: {e['preset']}, T = {e['seq_len']}, random weights")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def cost_png(c, path: Path, preset="bert-base") -> Path:
    from conformance.spec import presets
    from conformance.costs import flops, memory
    plt = _plt()
    cfg = presets.get(preset)
    Ts = np.array([128, 256, 512, 1024, 2048, 4096, 8192])
    t = [flops.totals(flops.ops(cfg, 1, int(T))) for T in Ts]
    act = [memory.activations(cfg, 1, int(T))["training"]["none"] for T in Ts]
    fig, (a, b, m) = plt.subplots(1, 3, figsize=(14, 4.2))
    a.loglog(Ts, [x["linear"] / 1e9 for x in t], "o-", label="T terms (projections, feed-forward, ...)")
    a.loglog(Ts, [x["quadratic"] / 1e9 for x in t], "s-", label="T^2 terms (scores, softmax, p v)")
    a.axvline(flops.crossover(cfg)["all"], color="gray", ls=":", label="crossover T*")
    a.set(xlabel="sequence length T", ylabel="forward GFLOPs", title=f"{preset}, B = 1 (analytic)")
    a.legend(fontsize=8)
    b.loglog(Ts, np.array(act) / 2**30, "o-", label="training activations (saved for backward)")
    b.loglog(Ts, [cfg.num_layers * 2 * cfg.num_heads * T * T * 4 / 2**30 for T in Ts], "s--",
             label="of which the score-shaped tensors")
    b.set(xlabel="sequence length T", ylabel="GiB (float32)", title=f"{preset} memory, B = 1 (analytic)")
    b.legend(fontsize=8)
    L = [r.length for r in c["rows"]]
    m.loglog(L, [r.score_bytes / 2**20 for r in c["rows"]], "o-",
             label=f"scores tensor (slope {c['exponent_score_bytes']:.2f})")
    m.loglog(L, [r.peak_bytes / 2**20 for r in c["rows"]], "s-",
             label=f"peak memory (slope {c['exponent_peak_bytes']:.2f})")
    m.set(xlabel="sequence length T", ylabel="MiB", title="Measured: one reference attention, H = 4, Dh = 64")
    m2 = m.twinx()
    m2.loglog(L, [r.seconds * 1e3 for r in c["rows"]], "^:", color="C3",
              label=f"time (slope {c['exponent_seconds']:.2f})")
    m2.set_ylabel("ms", color="C3")
    m.set_xticks(L, [str(x) for x in L])  # after twinx, whose log scale would reset the shared axis
    m.set_xticks([], minor=True)
    lines = m.get_legend_handles_labels()[0] + m2.get_legend_handles_labels()[0]
    m.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="upper left")
    return _save(fig, path)


def scale_png(rows, path: Path) -> Path:
    plt = _plt()
    d = [r.head_dim for r in rows]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    a.loglog(d, [r.score_var_unscaled for r in rows], "o-", label="q . k")
    a.loglog(d, [r.score_var_scaled for r in rows], "s-", label="q . k / sqrt(Dh)")
    a.set(ylabel="score variance", title="Scores of unit-variance q, k")
    b.semilogx(d, [r.entropy_unscaled for r in rows], "o-", label="unscaled")
    b.semilogx(d, [r.entropy_scaled for r in rows], "s-", label="scaled")
    b.axhline(np.log(64), color="gray", ls=":", label="uniform: log 64")
    b.set(ylabel="nats", title="Softmax entropy over 64 keys")
    c.semilogx(d, [r.jacobian_unscaled for r in rows], "o-", label="unscaled")
    c.semilogx(d, [r.jacobian_scaled for r in rows], "s-", label="scaled")
    c.set(ylabel="mean Frobenius norm", title="Softmax Jacobian diag(p) - p p^T")
    for ax in (a, b, c):
        ax.set_xticks(d, [str(x) for x in d])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("head width Dh")
        ax.legend(fontsize=8)
    return _save(fig, path)


def norms_png(r, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, rows in r.items():
        ax.loglog([x["depth"] for x in rows], [x["input_grad"] for x in rows], "o-", label=f"{label}: |dL/dx|")
        ax.loglog([x["depth"] for x in rows], [x["first_layer_grad"] for x in rows], "s--",
                  label=f"{label}: |dL/dW_q|, layer 0")
    ax.set(xlabel="number of layers", ylabel="gradient norm",
           title="Gradient at the bottom of an encoder stack (random, std 1/sqrt D)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


# -------------------------------------------------------------------------------- the command

def write_all(docs: str | Path = "docs", quick: bool = False, progress=print) -> list[Path]:
    """Compute every answer and figure; write docs/generated/*.md and docs/figures/*.png."""
    import torch
    docs = Path(docs)
    gen, fig = docs / "generated", docs / "figures"
    gen.mkdir(parents=True, exist_ok=True)
    fig.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name, text):
        files.write(gen / name, text, "generated docs page")
        written.append(gen / name)
        progress(f"wrote {gen / name}")

    write("parameters.md", parameters_md())
    scale = q.why_scale()
    write("scale.md", scale_md(scale))
    written.append(scale_png(scale, fig / "softmax_scale.png"))
    cost = q.attention_cost((64, 128, 256, 512) if quick else (128, 256, 512, 1024, 2048), repeats=5)
    cost["threads"] = f"{torch.get_num_threads()} threads"
    write("attention_cost.md", cost_md(cost))
    written.append(cost_png(cost, fig / "cost_vs_length.png"))
    write("positions.md", positions_md(q.without_positions()))
    norms = q.pre_vs_post_norm((1, 4, 16) if quick else (1, 2, 4, 8, 16, 32))
    write("norms.md", norms_md(norms))
    written.append(norms_png(norms, fig / "pre_post_norm.png"))
    write("masks.md", masks_md(q.bert_vs_gpt_masks()))
    write("batch_norm.md", batch_norm_md(q.layer_vs_batch_norm()))
    write("families.md", families_md(q.model_families(), 128))
    write("lora_parameters.md", lora_parameters_md(q.lora_parameters()))
    progress("one training step per fine-tuning method...")
    write("fine_tuning.md", fine_tuning_md(q.fine_tuning_methods()))
    write("streaming.md", streaming_md(docs.parent / "reports"))
    written.append(positional_encoding_png(fig / "positional_encoding.png"))
    written.append(attention_patterns_png(fig / "attention_patterns.png"))
    from study import efficiency
    linear = efficiency.linear_attention_error(draws=3 if quick else 5)
    stds = efficiency.by_std(draws=3 if quick else 5)
    write("linear_attention.md", efficiency.error_md(linear, 3 if quick else 5, stds))
    written.append(efficiency.error_png(linear, stds, fig / "linear_attention_error.png", _save, _plt()))
    progress("tracing float32 against float64 along depth...")
    e = error_by_depth("bert-tiny" if quick else "bert-base", 32 if quick else 128)
    write("error_depth.md", error_depth_md(e))
    written.append(error_depth_png(e, fig / "error_by_depth.png"))
    progress(f"wrote {len(written)} files under {docs}/")
    return written
