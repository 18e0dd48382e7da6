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
from conformance.core import files
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


def verdict(rec: dict) -> dict:
    """The report's first screen, from the record: per framework and dtype the verdict, the worst output
    error (and which output), the first op out of tolerance; overall, whether every run (and the
    training section, where there is one) passed, the parameter count and the forward FLOPs."""
    runs = []
    for r in rec["runs"]:
        output, worst = max(r["outputs"].items(), key=lambda kv: kv[1]["max_abs"])
        runs.append({"framework": r["framework"], "dtype": r["dtype"], "passed": r["passed"],
                     "worst": worst["max_abs"], "worst_output": output, "first_divergence": r["first_divergence"],
                     "ops": len(r["ops"]), "forward_ms": 1e3 * r["forward_seconds"]})
    train = train_report.passed(rec["train"]) if rec.get("train") else None
    flops = (rec.get("costs") or {}).get("flops", {}).get("totals", {}).get("all")
    shape = {k: rec["costs"][k] for k in ("batch", "seq_len")} if flops else None
    counts = {v for k, v in rec["parameters"].items() if k != "declared"}
    return {"passed": all(r["passed"] for r in runs) and train is not False, "runs": runs, "train": train,
            "parameters": rec["parameters"]["canonical"], "parameters_agree": len(counts) == 1,
            "flops": flops, "flops_at": shape, "inputs": rec["inputs"]}


def _verdict_lines(v: dict) -> tuple[str, list[str]]:
    """(headline, the Markdown lines under it): the verdict table and one line of facts."""
    failed = [f"{r['framework']} {r['dtype']}" for r in v["runs"] if not r["passed"]]
    firsts = [f"{r['framework']} {r['dtype']} at `{r['first_divergence']}`" for r in v["runs"]
              if r["first_divergence"]]
    headline = (f"PASS: every framework and dtype ({len(v['runs'])} runs) agrees with the float64 reference"
                if v["passed"] else
                "FAIL: " + "; ".join(([f"{', '.join(failed)} out of tolerance"] if failed else [])
                                     + (["training out of tolerance"] if v["train"] is False else [])))
    if firsts:
        headline += "; first op out of tolerance: " + ", ".join(firsts)
    rows = [(r["framework"], r["dtype"], "pass" if r["passed"] else "FAIL",
             f"{r['worst']:.2e} ({r['worst_output']})", r["first_divergence"] or "none", r["ops"],
             f"{r['forward_ms']:.1f} ms") for r in v["runs"]]
    facts = [f"Parameters {v['parameters']:,}" + (" (every framework counts the same)" if v["parameters_agree"]
                                                  else " (the frameworks' counts DIFFER: see Parameters)"),
             "forward " + (f"{_si(v['flops'])}FLOPs (batch {v['flops_at']['batch']}, sequence "
                           f"{v['flops_at']['seq_len']})" if v["flops"] else "FLOPs not counted"),
             "inputs " + ", ".join(f"{k} {tuple(s)}" for k, s in v["inputs"].items())]
    if v["train"] is not None:
        facts.append(f"training {'pass' if v['train'] else 'FAIL'} (gradients and steps)")
    return headline, [tabulate(rows, ["framework", "dtype", "verdict", "worst output error",
                                      "first op out of tolerance", "ops traced", "forward"], tablefmt="github"),
                      "", " · ".join(facts) + ".", ""]


def _si(n: float) -> str:
    """22418929664 -> '22.42 G': a count with its SI prefix."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {prefix}"
    return f"{n:,.0f} "


INTRO = ("Every framework runs the same weights and inputs; each is compared with the float64 NumPy reference, "
         "output by output and op by op.")


def stream_record(p: "stream.Plan", env: dict, costs: dict | None = None) -> dict:
    """The record of a streamed run (`conformance.report.stream`): `record`'s keys, so every view of a whole-model
    report reads it, and the run's name; its `stream` section is the caller's to add."""
    rec = record(p.preset, p.cfg, None, p.inputs, env, stream.runs(p), costs,
                 canonical=sum(int(np.prod(s)) for s in p.source.shapes.values()))
    rec["parameters"] = {k: v for k, v in rec["parameters"].items() if k in ("canonical", "declared")}
    rec["name"] = p.name
    return rec


def markdown(rec: dict) -> str:
    headline, lines = _verdict_lines(verdict(rec))
    return "\n".join([f"# {rec['preset']}: conformance report", "", f"**{headline}.**", "", *lines,
                      INTRO, "", body(rec)])


def body(rec: dict) -> str:
    """Everything after the verdict, as Markdown `## ` sections: environment, model, the comparisons in
    detail, costs, training, ONNX, the tolerance table."""
    cfg, env = rec["config"], rec["environment"]
    lines = ["## Environment", "",
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
              "## Largest per-op errors", ""]
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
    """Max abs error of every traced op along execution order, one line per run, with the atol of each
    dtype run and a tick at each layer's first op, as base64 PNG: where along depth the error grows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3.2))
    exact = [o["max_abs"] for r in rec["runs"] for o in r["ops"] if o["max_abs"] > 0]
    floor = min(exact, default=1e-18) / 10  # an exact op (error 0) drawn a decade below the smallest error
    for r in rec["runs"]:
        errors = [max(o["max_abs"], floor) for o in r["ops"]]
        ax.semilogy(errors, label=f"{r['framework']} {r['dtype']}", linewidth=1)
    for dtype in dict.fromkeys(r["dtype"] for r in rec["runs"]):
        atol = rec["tolerances"][dtype]["atol"]
        ax.axhline(atol, linestyle=":", linewidth=0.8, color="grey")
        ax.annotate(f"{dtype} atol", (0, atol), fontsize=7, color="grey", va="bottom")
    if rec["runs"]:
        ticks = _layer_starts([o["name"] for o in rec["runs"][0]["ops"]])
        ax.set_xticks(list(ticks), list(ticks.values()), fontsize=7)
    ax.set_xlabel("traced op, in execution order (ticks: each layer's first op)", fontsize=9)
    ax.set_ylabel("max |error| vs float64", fontsize=9)
    ax.set_title(f"{rec['preset']}: error per op along depth", fontsize=10, pad=22)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(1, len(rec["runs"])), frameon=False)
    fig.tight_layout()
    return _png(fig)


def _layer_starts(names: list[str]) -> dict[int, str]:
    """{index of the first op of each layer: "encoder.0" ...} from dotted trace names whose second part
    is a layer number; every other layer labelled where there are many."""
    starts, seen = {}, set()
    for i, name in enumerate(names):
        parts = name.split(".")
        if len(parts) > 1 and parts[1].isdigit() and (parts[0], parts[1]) not in seen:
            seen.add((parts[0], parts[1]))
            starts[i] = f"{parts[0][:3]}.{parts[1]}"
    step = max(1, len(starts) // 12)
    return {i: (label if k % step == 0 else "") for k, (i, label) in enumerate(starts.items())}


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


LONG_TABLE = 12  # rows; a longer table in the HTML page is collapsed under <details>

STYLE = """
:root{--pass:#1a7f37;--pass-bg:#dafbe1;--fail:#b42318;--fail-bg:#ffe4e1;--line:#d0d7de;--muted:#57606a}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
.page{display:grid;grid-template-columns:210px minmax(0,1fr);gap:24px;max-width:1260px;margin:0 auto;padding:14px 16px}
nav{position:sticky;top:12px;align-self:start;font-size:13px;background:#fff;border:1px solid var(--line);
 border-radius:6px;padding:10px 12px}
nav b{display:block;margin-bottom:4px}nav ol{margin:0;padding-left:18px}nav li{margin:2px 0}
nav a{color:#0969da;text-decoration:none}nav a:hover{text-decoration:underline}
main{min-width:0}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:0 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:14px 0 6px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:12px 16px;margin:0 0 14px}
.banner{font-size:15px;font-weight:600;padding:8px 12px;border-radius:6px;margin:0 0 10px}
.banner.pass{background:var(--pass-bg);color:var(--pass);border:1px solid #aceebb}
.banner.fail{background:var(--fail-bg);color:var(--fail);border:1px solid #ffc1ba}
.facts{color:var(--muted);margin:6px 0 0}
table{border-collapse:collapse;margin:4px 0 10px;font-size:12.5px}
td,th{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}tbody tr:nth-child(even){background:#fafbfc}
td.pass{color:var(--pass);background:var(--pass-bg);font-weight:600}
td.fail{color:var(--fail);background:var(--fail-bg);font-weight:600}
details{margin:4px 0 10px}summary{cursor:pointer;color:#0969da}
img{max-width:100%;height:auto;display:block}
code{background:#eff1f3;padding:0 3px;border-radius:3px;font-size:12px}
p{margin:4px 0 8px}
"""


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-").replace("--", "-")


def _sections(md: str) -> list[tuple[str, str]]:
    """[(title, Markdown body)] of the `## ` sections of `md` (text before the first is dropped)."""
    out = []
    for chunk in ("\n" + md).split("\n## ")[1:]:
        title, _, text = chunk.partition("\n")
        out.append((title.strip(), text))
    return out


def _html(md: str) -> str:
    """Markdown to HTML, with pass/FAIL cells classed for colour and long tables collapsed."""
    import re

    import markdown as md_lib
    text = md_lib.markdown(md, extensions=["tables"])
    text = re.sub(r"<td([^>]*)>(pass|ok)</td>", r'<td\1 class="pass">\2</td>', text)
    text = re.sub(r"<td([^>]*)>(FAIL|OUT)</td>", r'<td\1 class="fail">\2</td>', text)

    def collapse(m):
        rows = m.group(0).count("<tr>") - 1  # less the header
        if rows <= LONG_TABLE:
            return m.group(0)
        return f"<details><summary>show the table ({rows} rows)</summary>{m.group(0)}</details>"
    return re.sub(r"<table>.*?</table>", collapse, text, flags=re.S)


def html_page(rec: dict, figures: dict[str, str] | None = None) -> str:
    """A self-contained page a person reads: the verdict first (coloured), a table of contents, the error
    along depth right under the verdict, then every section of the Markdown with its long tables
    collapsed, and the figures inline (base64 PNG): no external resource, so it opens offline."""
    v = verdict(rec)
    headline, lines = _verdict_lines(v)
    state = "pass" if v["passed"] else "fail"
    table, _, facts, _ = lines
    sections = [("Verdict", f"<p class='banner {state}'>{html.escape(headline)}</p>{_html(table)}"
                            f"<p class='facts'>{html.escape(facts)}</p>"),
                ("Error along depth", f"<img alt='error per op along depth' src='data:image/png;base64,"
                                      f"{error_plot(rec)}'><p class='facts'>{html.escape(INTRO)}</p>")]
    sections += [(title, _html(text)) for title, text in _sections(body(rec))]
    sections += [("Figures", "".join(f"<h3>{html.escape(t)}</h3><img alt='{html.escape(t)}' "
                                     f"src='data:image/png;base64,{png}'>" for t, png in (figures or {}).items()))]
    toc = "".join(f"<li><a href='#{_slug(t)}'>{html.escape(t)}</a></li>" for t, _ in sections)
    main = "".join(f"<section id='{_slug(t)}'>" + ("" if t == "Verdict" else f"<h2>{html.escape(t)}</h2>")
                   + content + "</section>" for t, content in sections)
    title = f"{rec['preset']}: conformance report"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
            f"<body><div class='page'><nav><b>{html.escape(rec['preset'])}</b><ol>{toc}</ol></nav>"
            f"<main><h1>{html.escape(title)}</h1>{main}</main></div></body></html>")


def write(rec: dict, out_dir, figures: dict[str, str] | None = None, name: str | None = None) -> list[Path]:
    """NAME.md, .json and .html in `out_dir` (`name`: the preset, or a streamed run's PRESET-stream), all
    three or none: each is rendered in memory first, then they are written together (`core.files.write_all`)."""
    out_dir = files.directory(out_dir, "report directory")
    md = markdown(rec)
    texts = [md, json.dumps(rec, indent=1, sort_keys=True, default=float), html_page(rec, figures=figures)]
    return files.write_all({out_dir / f"{name or rec['preset']}.{ext}": text
                            for ext, text in zip(("md", "json", "html"), texts)}, "report file")
