"""Tolerances are measured, not guessed: the evidence behind `conformance.compare.tolerance.TOLERANCES`.

`measure` runs every registry case (and its traced ops) in each framework and dtype against the
float64 reference, in three weight regimes, and `tolerance_rows` turns the worst error into a
table row with stated headroom. `tmirror tolerances` writes the evidence
(conformance/compare/tolerance_evidence.json) and a Markdown table (reports/tolerances.md).
"""
from __future__ import annotations

import math
import platform
import re
import time
from dataclasses import dataclass

import numpy as np

from conformance import weights
from conformance.backends import build, environment, supports
from conformance.backends.dtypes import LOW, MIXED
from conformance.backends.finite import NonFiniteError, traced
from conformance.compare import routing
from conformance.spec import families, presets, registry
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data

REGIMES = {
    "suite": "the generated suite's own case: weights std 0.5 (components) / 0.02 (models), seed 0",
    "bert": "BERT-like scale: every weight std 0.02, seed 1",
    "stress": "stress scale: every weight std 0.5, seed 2 (reported against the rows, not fitted)",
}
FIT = ("suite", "bert")  # regimes the rows are fitted to, with every preset measured ("preset:NAME")
REL_FLOOR = 1e-3  # relative error is reported over elements with |ref| >= REL_FLOOR * max |ref|
STATS = ("max_abs", "p99_abs", "mean_abs", "max_rel", "p99_rel", "mean_rel", "needed", "norm_rel")
# Rows of these dtypes bound the max-norm relative error max |a - r| / max |r| of each tensor
# (Tolerance.scale_rtol); float64 / float32 rows bound each element (atol = rtol). See `metric`.
NORMWISE = ("tf32",) + LOW + MIXED


def metric(dtype: str) -> str:
    """The error statistic a dtype's tolerance row bounds: "norm_rel" or "needed"."""
    return "norm_rel" if dtype in NORMWISE else "needed"


def bound(tol) -> float:
    """The value of `metric` a `Tolerance` row allows."""
    return tol.scale_rtol if tol.scale_rtol else min(tol.atol, tol.rtol)


def error_stats(actual, reference) -> dict:
    """Distribution of |actual - reference| and of the relative error; `needed`, the smallest t with
    atol = rtol = t that passes (max |a - r| / (1 + |r|)); `norm_rel`, max |a - r| / max |r|."""
    a = np.asarray(actual).astype(np.float64)
    r = np.asarray(reference).astype(np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape {a.shape} against reference shape {r.shape}")
    both = np.isfinite(a) & np.isfinite(r)
    nonfinite = int(np.count_nonzero(np.isfinite(r) & ~np.isfinite(a)))
    err = np.abs(a[both] - r[both])
    ref = np.abs(r[both])
    stats = {"size": int(a.size), "nonfinite": nonfinite}
    if err.size == 0:
        return {**stats, **dict.fromkeys(STATS, 0.0 if not nonfinite else math.inf)}
    scale = float(ref.max())
    sig = ref >= REL_FLOOR * scale if scale > 0 else np.zeros_like(ref, bool)
    rel = err[sig] / ref[sig] if sig.any() else np.zeros(1)
    norm_rel = float(err.max()) / scale if scale > 0 else (0.0 if err.max() == 0 else math.inf)
    stats.update(max_abs=float(err.max()), p99_abs=float(np.percentile(err, 99)), mean_abs=float(err.mean()),
                 max_rel=float(rel.max()), p99_rel=float(np.percentile(rel, 99)), mean_rel=float(rel.mean()),
                 needed=math.inf if nonfinite else float((err / (1.0 + ref)).max()),
                 norm_rel=math.inf if nonfinite else norm_rel)
    return stats


def op_kind(name: str, kinds: dict) -> str:
    """"encoder.1.attention.scores#1" -> "MultiHeadAttention.scores": the tapping module's class."""
    name = re.sub(r"#\d+$", "", name)
    path, _, tap = name.rpartition(".")
    return f"{kinds.get(path, '?')}.{tap}"


def regime_data(name: str, variant: str, regime: str):
    """(entry, cfg, weights, inputs) of one registry case in one weight regime."""
    if regime == "suite":
        entry, cfg, w, inputs, _ = case_data(name, variant)
        return entry, cfg, w, inputs
    seed, std = {"bert": (1, 0.02), "stress": (2, 0.5)}[regime]
    entry = registry.get(name)
    cfg = entry.config(variant)
    return entry, cfg, weights.initialize(cfg, seed=seed, std=std), entry.inputs(cfg, variant, seed=seed)


@dataclass
class Measured:
    regime: str
    case: str
    framework: str
    dtype: str
    device: str
    outputs: dict   # output key -> error_stats against the float64 reference
    ops: dict       # op kind -> list of error_stats (one per traced tensor of that kind)
    agreement: dict = None  # device != cpu: output key -> error_stats(this device, cpu), same framework
    error: str | None = None
    seconds: float = 0.0


def routed_outputs(cfg, inputs, ref_trace, trace, out, reference, dtype) -> tuple[dict, bool]:
    """A mixture of experts' outputs as far as its routing allows them to be compared (`compare.routing`):
    at tokens a near-tie reaches, the reference's own values (a per-token-free output, left out), and
    whether its ops may be measured too (the same experts chosen at every token). Other models: unchanged."""
    if not routing.moe_layers(ref_trace):
        return out, True
    agreement = routing.agreement(ref_trace, trace, cfg.experts_per_token, dtype, routing.token_shape(inputs),
                                  registry.get(cfg.kind).is_model)  # as check_case: the entry says it
    clean = not any(d.any() for d in agreement.differ.values()) and not agreement.ambiguous.any()
    return routing.unambiguous(out, reference, agreement), clean


def _measure(label, regime, cfg, w, inputs, frameworks, dtypes, device, case=None) -> list[Measured]:
    """The float64 reference trace once, then each supported framework x dtype traced against it
    (outputs and every traced op); on another device also the cpu run of the same framework."""
    ref_model = build("numpy", cfg, w, dtype="float64")
    reference, ref_trace = traced(ref_model, inputs)
    kinds = {path: type(m).__name__ for path, m in ref_model.backend.named_modules(ref_model.module)}
    results = []
    for framework in frameworks:
        for dtype in dtypes:
            if (framework, dtype) == ("numpy", "float64") or supports(framework, case, dtype, device):
                continue
            m = Measured(regime, label, framework, dtype, device, {}, {})
            t0 = time.perf_counter()
            try:
                out, tr = traced(build(framework, cfg, w, device=device, dtype=dtype), inputs)
                out, ops = routed_outputs(cfg, inputs, ref_trace, tr, out, reference, dtype)
                m.outputs = {k: error_stats(out[k], reference[k]) for k in reference if k in out}
                for op in ref_trace if ops else ():
                    if op in tr:  # fused attention records no scores / probs
                        m.ops.setdefault(op_kind(op, kinds), []).append(error_stats(tr[op], ref_trace[op]))
                if device != "cpu":
                    cpu = build(framework, cfg, w, device="cpu", dtype=dtype)(**inputs)
                    m.agreement = {k: error_stats(out[k], cpu[k]) for k in cpu}
            except NonFiniteError as e:
                m.error = str(e)
            m.seconds = time.perf_counter() - t0
            results.append(m)
    return results


def measure_case(name, variant, regime, frameworks, dtypes, device="cpu") -> list[Measured]:
    _, cfg, w, inputs = regime_data(name, variant, regime)
    return _measure(case_id((name, variant)), regime, cfg, w, inputs, frameworks, dtypes, device,
                    (name, variant))


def measure_preset(preset, frameworks, dtypes, device="cpu", batch=1, seq_len=128,
                   attention_impl: str | None = None) -> list[Measured]:
    """A full-size preset with its seeded weights (std 0.02), as `tmirror report` runs it;
    `attention_impl` another `Config.attention_impl` (labelled "PRESET[fused]")."""
    cfg = presets.get(preset)
    label = preset
    if attention_impl is not None and attention_impl != cfg.attention_impl:
        cfg, label = cfg.replace(attention_impl=attention_impl), f"{preset}[{attention_impl}]"
    w = weights.initialize(cfg, seed=0)
    inputs = families.get(cfg.kind).inputs(cfg, batch, seq_len)
    return _measure(label, f"preset:{label}", cfg, w, inputs, frameworks, dtypes, device)


def measure(dtypes, frameworks=("torch", "tf"), device="cpu", regimes=tuple(REGIMES), cases=None,
            presets=(), progress=None) -> list[Measured]:
    """Every registry case (or `cases`) in every regime, then every preset in `presets`."""
    results = []
    for regime in regimes:
        for name, variant in cases or CASES:
            if progress:
                progress(f"{regime} {name}[{variant}]")
            results += measure_case(name, variant, regime, frameworks, dtypes, device)
    for preset in presets:
        if progress:
            progress(f"preset {preset}")
        results += measure_preset(preset, frameworks, dtypes, device)
    return results


def device_agreement(name, variant, framework, dtype, devices=("cpu", "cuda"), regime="suite") -> dict:
    """The same framework and dtype on two devices, compared the same way as against the
    reference: output key -> error_stats(second device, first device)."""
    _, cfg, w, inputs = regime_data(name, variant, regime)
    first, second = (build(framework, cfg, w, device=d, dtype=dtype)(**inputs) for d in devices)
    return {k: error_stats(second[k], first[k]) for k in first}


def _merge(stats: list[dict]) -> dict:
    """Worst case over many error_stats: max of maxima and p99s, size-weighted mean of means."""
    size = sum(s["size"] for s in stats) or 1
    out = {"size": size, "nonfinite": sum(s["nonfinite"] for s in stats)}
    for key in ("max_abs", "p99_abs", "max_rel", "p99_rel", "needed", "norm_rel"):
        out[key] = max(s[key] for s in stats)
    for key in ("mean_abs", "mean_rel"):
        out[key] = sum(s[key] * s["size"] for s in stats) / size
    return out


def _worst(results, key):
    """(worst value of `key` over every output and traced op, where); (0.0, None) if none."""
    best, where = 0.0, None
    for m in results:
        if m.error:
            continue
        for out, s in m.outputs.items():
            if s[key] > best:
                best, where = s[key], f"{m.framework} {m.case}.{out} ({m.regime})"
        for kind, many in m.ops.items():
            for s in many:
                if s[key] > best:
                    best, where = s[key], f"{m.framework} {m.case} op {kind} ({m.regime})"
    return best, where


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 5 x 10^k that is >= x."""
    if x <= 0:
        return 0.0
    k = math.floor(math.log10(x))
    for step in (1, 2, 5, 10):
        if step * 10.0 ** k >= x * (1 - 1e-12):
            return float(f"{step * 10.0 ** k:.0e}")
    return 10.0 ** (k + 1)


HEADROOM = 4.0  # a proposed row is the worst fitted value x HEADROOM, rounded up to 1/2/5


def tolerance_rows(results: list[Measured], table: dict | None = None) -> dict:
    """dtype -> the proposed row and its evidence: the worst value of the dtype's `metric` over
    every output and traced op of every case, framework and fitted regime (`FIT` and presets),
    where it occurred, the stress regime's worst, and how the current `table` row compares."""
    rows = {}
    for dtype in dict.fromkeys(m.dtype for m in results):
        key = metric(dtype)
        mine = [m for m in results if m.dtype == dtype]
        fit = [m for m in mine if m.regime != "stress"]
        worst, where = _worst(fit, key)
        worst_out, _ = _worst([Measured(m.regime, m.case, m.framework, m.dtype, m.device, m.outputs, {})
                               for m in fit], key)
        stress, stress_at = _worst([m for m in mine if m.regime == "stress"], key)
        proposed = _nice_ceil(worst * HEADROOM)
        row = {"metric": key, "worst": worst, "worst_at": where, "worst_output": worst_out,
               "proposed": proposed, "stress_worst": stress, "stress_at": stress_at,
               "overflows": sorted({f"{m.framework} {m.case} ({m.regime}): {m.error.split(';')[0]}"
                                    for m in mine if m.error})}
        current = (table or {}).get(dtype)
        if current is not None:
            b = bound(current)
            row.update(current={"atol": current.atol, "rtol": current.rtol, "scale_rtol": current.scale_rtol},
                       current_bound=b, covered=worst <= b, headroom=b / worst if worst else math.inf,
                       stress_covered=stress <= b)
        rows[dtype] = row
    return rows


def summarize(results: list[Measured]) -> dict:
    """{dtype: {framework: {"outputs": stats, "ops": {op kind: stats}}}} over all cases and regimes,
    and "cpu_vs_<device>" for runs on another device."""
    out: dict = {}
    for m in results:
        if m.error:
            continue
        slot = out.setdefault(m.dtype, {}).setdefault(m.framework, {"outputs": [], "ops": {}, "agreement": []})
        slot["outputs"] += list(m.outputs.values())
        slot["agreement"] += list((m.agreement or {}).values())
        for kind, many in m.ops.items():
            slot["ops"].setdefault(kind, []).extend(many)
    summary = {}
    for d, fws in out.items():
        for f, s in fws.items():
            entry = {"outputs": _merge(s["outputs"]), "ops": {k: _merge(v) for k, v in sorted(s["ops"].items())}}
            if s["agreement"]:
                entry["device_agreement"] = _merge(s["agreement"])
            summary.setdefault(d, {})[f] = entry
    return summary


def _round(x):
    if isinstance(x, float):
        return x if not math.isfinite(x) or x == 0 else float(f"{x:.3g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


CASE_COLUMNS = ["regime", "case", "framework", "dtype", "device", "worst output needed",
                "worst output norm_rel", "error"]


def evidence(results: list[Measured], command: str, table: dict) -> dict:
    """The JSON evidence: environment, proposed rows against the current table, summaries, cases."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
           **environment(sorted({m.framework for m in results}))}
    cases = [[m.regime, m.case, m.framework, m.dtype, m.device,
              max((s["needed"] for s in m.outputs.values()), default=None),
              max((s["norm_rel"] for s in m.outputs.values()), default=None), m.error] for m in results]
    return _round({"schema": 1, "command": command, "environment": env, "regimes": REGIMES,
                   "fitted_regimes": list(FIT) + sorted({m.regime for m in results if m.regime.startswith("preset:")}),
                   "metric": "needed = max |a - r| / (1 + |r|), the smallest t with atol = rtol = t that "
                             "passes (float64, float32 rows); norm_rel = max |a - r| / max |r| per tensor, "
                             "the max-norm relative error (tf32, bfloat16, float16, mixed rows: scale_rtol); "
                             f"rel = |a - r| / |r| over |r| >= {REL_FLOOR:g} max |r|; p99 = the largest "
                             "per-tensor 99th percentile",
                   "headroom": HEADROOM, "rows": tolerance_rows(results, table),
                   "summary": summarize(results), "case_columns": CASE_COLUMNS, "cases": cases})


def merge(old: dict, new: dict, table: dict) -> dict:
    """`new` evidence (cases the `old` one lacks) merged into `old`: the cases side by side, each row's
    worst the worse of the two (its proposal and verdict recomputed), the summaries merged as one run
    would have merged them. A case measured in both is refused: its old numbers cannot be taken out."""
    both = sorted({c[1] for c in old["cases"]} & {c[1] for c in new["cases"]})
    if both:
        raise ValueError(f"--merge adds cases the evidence lacks; received {both}, already measured: "
                         f"run the whole measurement instead")
    rows = {}
    for dtype in dict.fromkeys([*old["rows"], *new["rows"]]):
        a, b = old["rows"].get(dtype), new["rows"].get(dtype)
        if a is None or b is None:
            rows[dtype] = a or b
            continue
        row = {**a, "overflows": sorted(set(a["overflows"]) | set(b["overflows"]))}
        if b["worst"] > a["worst"]:
            row.update(worst=b["worst"], worst_at=b["worst_at"])
        if b["stress_worst"] > a["stress_worst"]:
            row.update(stress_worst=b["stress_worst"], stress_at=b["stress_at"])
        row["worst_output"] = max(a["worst_output"], b["worst_output"])
        row["proposed"] = _nice_ceil(row["worst"] * HEADROOM)
        if dtype in table:
            bnd = bound(table[dtype])
            row.update(covered=row["worst"] <= bnd, headroom=bnd / row["worst"] if row["worst"] else math.inf,
                       stress_covered=row["stress_worst"] <= bnd)
        rows[dtype] = row
    summary = {}
    for dtype in dict.fromkeys([*old["summary"], *new["summary"]]):
        fws = {}
        for fw in dict.fromkeys([*old["summary"].get(dtype, {}), *new["summary"].get(dtype, {})]):
            parts = [x for x in (old["summary"].get(dtype, {}).get(fw), new["summary"].get(dtype, {}).get(fw)) if x]
            entry = {"outputs": _merge([p["outputs"] for p in parts]),
                     "ops": {k: _merge([p["ops"][k] for p in parts if k in p["ops"]])
                             for k in sorted({k for p in parts for k in p["ops"]})}}
            agree = [p["device_agreement"] for p in parts if "device_agreement" in p]
            if agree:
                entry["device_agreement"] = _merge(agree)
            fws[fw] = entry
        summary[dtype] = fws
    return _round({**old, "command": f"{old['command']} && {new['command']}",
                   "fitted_regimes": list(dict.fromkeys([*old["fitted_regimes"], *new["fitted_regimes"]])),
                   "rows": rows, "summary": summary, "cases": old["cases"] + new["cases"]})


def dumps(ev: dict) -> str:
    """The evidence as JSON text, indented, with each leaf record (a dict of numbers, a measured
    case) on one line, so that it stays short and diffable."""
    import json

    def leaf(x):  # a container of scalars
        values = x.values() if isinstance(x, dict) else x
        return all(not isinstance(v, (dict, list)) for v in values)

    def fmt(x, indent):
        if not isinstance(x, (dict, list)) or leaf(x):
            return json.dumps(x, separators=(", ", ": "))
        pad = " " * (indent + 1)
        if isinstance(x, list):
            return "[\n" + ",\n".join(pad + fmt(v, indent + 1) for v in x) + "\n" + " " * indent + "]"
        return "{\n" + ",\n".join(f"{pad}{json.dumps(k)}: {fmt(v, indent + 1)}" for k, v in x.items()) \
            + "\n" + " " * indent + "}"

    return fmt(ev, 0) + "\n"


def _f(x) -> str:
    return "-" if x is None else ("inf" if x == math.inf else f"{x:.2e}")


def rows_table(ev: dict) -> list[str]:
    """The evidence's tolerance rows as Markdown lines: each dtype's table bound against the worst measured."""
    f = _f
    lines = ["| dtype | metric | table bound | worst fitted (outputs and ops) | worst fitted output | where | "
             "headroom | proposed | stress worst | stress within row | overflows (NonFiniteError) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dtype, row in ev["rows"].items():
        headroom = f"{row['headroom']:.1f}x" if "headroom" in row else "-"
        within = "-" if "stress_covered" not in row else ("yes" if row["stress_covered"] else "NO")
        lines.append(
            f"| {dtype} | {row['metric']} | {f(row.get('current_bound'))} | {f(row['worst'])} | "
            f"{f(row['worst_output'])} | {row['worst_at']} | {headroom} | {f(row['proposed'])} | "
            f"{f(row['stress_worst'])} ({row['stress_at']}) | {within} | {len(row['overflows'])} |")
    overflows = [(d, o) for d, row in ev["rows"].items() for o in row["overflows"]]
    if overflows:
        lines += ["", "Overflows, each raised as a named `NonFiniteError` (never passed on as inf/NaN):", ""]
        lines += [f"- {d}: {o}" for d, o in overflows]
    return lines


def outputs_table(ev: dict) -> list[str]:
    """Output error statistics per dtype and framework, over every case and regime, as Markdown lines."""
    lines = ["| dtype | framework | max abs | p99 abs | mean abs | max rel | p99 rel | mean rel | needed | norm_rel |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dtype, fws in ev["summary"].items():
        for fw, s in fws.items():
            o = s["outputs"]
            lines.append(f"| {dtype} | {fw} | " + " | ".join(_f(o[k]) for k in (
                "max_abs", "p99_abs", "mean_abs", "max_rel", "p99_rel", "mean_rel", "needed", "norm_rel")) + " |")
    return lines


def agreement_table(ev: dict) -> list[str]:
    """The same framework and dtype on this device against cpu, as Markdown lines; [] where none was measured."""
    agreement = [(d, fw, s["device_agreement"]) for d, fws in ev["summary"].items() for fw, s in fws.items()
                 if "device_agreement" in s]
    if not agreement:
        return []
    return (["| dtype | framework | max abs | p99 abs | max rel | needed | norm_rel |", "|---|---|---|---|---|---|---|"]
            + [f"| {d} | {fw} | " + " | ".join(_f(a[k]) for k in ("max_abs", "p99_abs", "max_rel", "needed",
                                                                     "norm_rel")) + " |" for d, fw, a in agreement])


def ops_tables(ev: dict) -> list[str]:
    """Per dtype, the error accumulated up to each traced op kind, as Markdown lines."""
    lines = []
    for dtype, fws in ev["summary"].items():
        lines += [f"### {dtype}", "",
                  "| op | framework | max abs | p99 abs | mean abs | max rel | p99 rel | needed | norm_rel |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for fw, s in fws.items():
            for kind, o in s["ops"].items():
                lines.append(f"| {kind} | {fw} | " + " | ".join(_f(o[k]) for k in (
                    "max_abs", "p99_abs", "mean_abs", "max_rel", "p99_rel", "needed", "norm_rel")) + " |")
        lines.append("")
    return lines


def markdown(ev: dict, evidence_path: str = "conformance/compare/tolerance_evidence.json") -> str:
    env = ev["environment"]
    lines = ["# Measured tolerances", "",
             f"Generated by `{ev['command']}` on {env['platform']} (torch {env.get('torch', '-')}, "
             f"tensorflow {env.get('tensorflow', '-')}, keras {env.get('keras', '-')}, "
             f"{env.get('torch_threads', '-')} torch threads). Evidence: `{evidence_path}`. "
             "The table the suite uses is `conformance/tolerance.TOLERANCES`; each row's reason cites "
             "the numbers below.", "",
             f"Metric: {ev['metric']}.", "",
             "Every registry case (every variant) in each regime below, inputs standard normal and token "
             "ids uniform; rows are fitted to " + ", ".join(f"`{r}`" for r in ev["fitted_regimes"])
             + f" with headroom x{ev['headroom']:g} rounded up to 1, 2 or 5; `stress` is reported against "
             "the rows, not absorbed into them.", ""]
    lines += [f"- `{k}`: {v}" for k, v in ev["regimes"].items()]
    lines += ["", "## Tolerance rows against the evidence", ""] + rows_table(ev)
    lines += ["", "## Outputs, per dtype and framework (every case and regime)", ""] + outputs_table(ev)
    agreement = agreement_table(ev)
    if agreement:
        lines += ["", "## The same framework and dtype: this device against cpu", ""] + agreement
    lines += ["", "## Traced ops, per kind (error accumulated up to that op)", ""] + ops_tables(ev)
    return "\n".join(lines) + "\n"
