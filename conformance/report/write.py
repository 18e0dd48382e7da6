"""`tmirror report`: PRESET.md, PRESET.json and PRESET.html from one `runner.run`.

The JSON is the record (schema in README.md); the Markdown and the HTML are views of it.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from tabulate import tabulate

from conformance import costs, weights
from conformance.compare.tolerance import TOLERANCES
from conformance.report import onnx, stream, training as train_report
from conformance.spec import registry
from numpy_ref.embeddings import sinusoidal_encoding

SCHEMA = 1


def record(preset, cfg, w, inputs, env, runs, costs: dict | None = None, canonical: int | None = None) -> dict:
    """`canonical`: the parameters the weights hold, where `w` is not a dict of them (a streamed run)."""
    return {
        "costs": costs,
        "schema": SCHEMA,
        "preset": preset,
        "config": cfg.to_dict(),
        "environment": env,
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "parameters": {"canonical": weights.count(w) if canonical is None else canonical,
                       "declared": sum(int(np.prod(s)) for s in registry.param_shapes(cfg).values()),
                       **{r.framework: r.params for r in runs}},
        "runs": [{
            "framework": r.framework, "dtype": r.dtype, "passed": r.passed,
            "outputs": {c.name.split(".", 1)[1]: {"max_abs": c.max_abs, "max_rel": c.max_rel, "passed": c.passed}
                        for c in r.comparisons},
            "first_divergence": None if r.first_divergence is None else r.first_divergence.name,
            "ops": [{"name": c.name, "max_abs": c.max_abs, "max_rel": c.max_rel, "passed": c.passed} for c in r.ops],
            "forward_seconds": r.seconds, "build_seconds": r.build_seconds,
        } for r in runs],
        "tolerances": {k: {"atol": t.atol, "rtol": t.rtol, "scale_rtol": t.scale_rtol, "reason": t.reason}
                       for k, t in TOLERANCES.items()},
    }


def stream_record(p: "stream.Plan", env: dict, costs: dict | None = None) -> dict:
    """The record of a streamed run (`conformance.report.stream`): `record`'s keys, so every view of a whole-model
    report reads it, and the run's name; its `stream` section is the caller's to add."""
    rec = record(p.preset, p.cfg, None, p.inputs, env, stream.runs(p), costs,
                 canonical=sum(int(np.prod(s)) for s in p.source.shapes.values()))
    rec["parameters"] = {k: v for k, v in rec["parameters"].items() if k in ("canonical", "declared")}
    rec["name"] = p.name
    return rec


def markdown(rec: dict) -> str:
    cfg, env = rec["config"], rec["environment"]
    lines = [f"# {rec['preset']}: conformance report", "",
             "Every framework runs the same weights and inputs; each is compared with the float64 NumPy "
             "reference, output by output and op by op.", "", "## Environment", "",
             tabulate([(k, v) for k, v in env.items() if k != "tolerances"], ["setting", "value"], tablefmt="github"), "",
             "## Model", "",
             tabulate([(k, v) for k, v in cfg.items()], ["field", "value"], tablefmt="github"), "",
             f"Inputs: {', '.join(f'{k} {tuple(v)}' for k, v in rec['inputs'].items())}", "",
             "## Parameters", "",
             tabulate([(k, f"{v:,}") for k, v in rec["parameters"].items()], ["counted by", "parameters"],
                      tablefmt="github"), "",
             "## Outputs against the float64 reference", ""]
    rows = [(r["framework"], r["dtype"], key, f"{o['max_abs']:.2e}", f"{o['max_rel']:.2e}",
             "pass" if o["passed"] else "FAIL") for r in rec["runs"] for key, o in r["outputs"].items()]
    lines += [tabulate(rows, ["framework", "dtype", "output", "max abs", "max rel", ""], tablefmt="github"), "",
              "## First op out of tolerance", ""]
    lines += [tabulate([(r["framework"], r["dtype"], len(r["ops"]), r["first_divergence"] or "none")
                        for r in rec["runs"]], ["framework", "dtype", "ops traced", "first op out of tolerance"],
                       tablefmt="github"), "", "## Largest per-op errors", ""]
    for r in rec["runs"]:
        worst = sorted(r["ops"], key=lambda o: -o["max_abs"])[:8]
        lines += [f"**{r['framework']} {r['dtype']}**", "",
                  tabulate([(o["name"], f"{o['max_abs']:.2e}", f"{o['max_rel']:.2e}") for o in worst],
                           ["op", "max abs", "max rel"], tablefmt="github"), ""]
    if rec.get("costs"):
        lines += [costs.markdown(rec["costs"]), ""]
    if rec.get("train"):
        lines += [train_report.markdown(rec["train"]), ""]
    if rec.get("onnx"):
        lines += [onnx.markdown(rec["onnx"]), ""]
    if rec.get("stream"):
        lines += [stream.markdown(rec["stream"]), ""]
    lines += ["## Tolerance table", "",
              tabulate([(k, t["atol"], t["rtol"], t["scale_rtol"], t["reason"]) for k, t in rec["tolerances"].items()],
                       ["dtype", "atol", "rtol", "scale_rtol (x max |ref|)", "why"], tablefmt="github"), ""]
    return "\n".join(lines)


def error_plot(rec: dict) -> str:
    """Max abs error of every traced op along execution order, one line per run, as base64 PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4))
    for r in rec["runs"]:
        errors = [max(o["max_abs"], 1e-18) for o in r["ops"]]
        ax.semilogy(errors, label=f"{r['framework']} {r['dtype']}", linewidth=1)
    for dtype, tol in rec["tolerances"].items():
        ax.axhline(tol["atol"], linestyle=":", linewidth=0.8, color="grey")
        ax.annotate(f"{dtype} atol", (0, tol["atol"]), fontsize=7, color="grey")
    ax.set_xlabel("traced op, in execution order (input -> output)")
    ax.set_ylabel("max |error| vs float64 reference")
    ax.set_title(f"{rec['preset']}: error per op along depth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figures(cfg, reference_trace: dict) -> dict[str, str]:
    """Study figures from the reference run: attention patterns and the positional encoding."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = {}
    probs = [(n, v) for n, v in reference_trace.items() if n.endswith(".probs") and isinstance(v, np.ndarray)]
    if probs:
        name, p = probs[0]                                  # (B, H, T, S); the last row has the most padding
        heads = min(p.shape[1], 4)
        fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3.2), squeeze=False)
        for h in range(heads):
            axes[0, h].imshow(p[-1, h], cmap="viridis", vmin=0, vmax=p[-1, h].max())
            axes[0, h].set_title(f"head {h}", fontsize=9)
            axes[0, h].set_xlabel("key position", fontsize=8)
        axes[0, 0].set_ylabel("query position", fontsize=8)
        fig.suptitle(f"{name}: reference, last batch row (the most padding)", fontsize=10)
        fig.tight_layout()
        out["Attention patterns (each row sums to 1, padded keys get 0; seeded random weights attend "
            "almost uniformly, a trained checkpoint via --weights shows real patterns)"] = _png(fig)
    T = 128 if cfg.position == "learned" else min(cfg.max_positions, 256)
    pe = sinusoidal_encoding(np.arange(T), cfg.d_model)     # (T, D)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
    a.imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    a.set_xlabel("position")
    a.set_ylabel("channel (sin even, cos odd)")
    a.set_title(f"Sinusoidal encoding, D={cfg.d_model}", fontsize=10)
    b.imshow(pe @ pe.T, cmap="viridis")
    b.set_title("PE(i) . PE(j): depends only on i - j", fontsize=10)
    b.set_xlabel("position j")
    b.set_ylabel("position i")
    fig.tight_layout()
    used = "used by this model" if cfg.position == "sinusoidal" else "shown for study; this model learns its table"
    out[f"Positional encoding ({used})"] = _png(fig)
    return out


def html_page(rec: dict, md: str, figures: dict[str, str] | None = None) -> str:
    """A self-contained page: the Markdown rendered, then every figure inline."""
    import markdown as md_lib
    body = [md_lib.markdown(md, extensions=["tables"])]
    figures = {"Error per op along depth": error_plot(rec), **(figures or {})}
    for title, png in figures.items():
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}code{background:#f5f5f5}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(rec['preset'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def write(rec: dict, out_dir, figures: dict[str, str] | None = None, name: str | None = None) -> list[Path]:
    """`name`: the files' stem (default: the preset; a streamed run's is PRESET-stream)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(rec)
    paths = [out_dir / f"{name or rec['preset']}.{ext}" for ext in ("md", "json", "html")]
    paths[0].write_text(md)
    paths[1].write_text(json.dumps(rec, indent=1, sort_keys=True, default=float))
    paths[2].write_text(html_page(rec, md, figures))
    return paths
