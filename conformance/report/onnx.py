"""The ONNX section of a report: each exporter's file, ops, speed and agreement with the reference.

    section = onnx_section(cfg, w); print(markdown(section))
    first_divergence(reference_trace, records)   # the first op the graph keeps that leaves tolerance
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np

from conformance.backends import build
from conformance.backends.onnx_export import (DEFAULT_OPSET, EXPORTERS, SOURCES, ExportError, Exported, build_from,
                                              example_inputs, export, module_paths, node_scopes)
from conformance.compare.tolerance import TOLERANCES, compare, compare_outputs
from conformance.core.config import Config


def compare_trace(reference: dict, records: dict, dtype: str = "float32") -> list:
    """Per trace name the graph keeps, in the reference's order: the comparison with the reference."""
    return [compare(name, records[name], reference[name], TOLERANCES[dtype]) for name in reference
            if name in records]


def first_divergence(reference: dict, records: dict, dtype: str = "float32"):
    """The first kept op, in the reference's order, out of tolerance; None if all agree."""
    return next((c for c in compare_trace(reference, records, dtype) if not c.passed), None)


PATTERNS = ("attention", "layer_norm", "activation")


def pattern_paths(cfg: Config) -> dict:
    """The first module of each pattern: an attention (its own ops: the q/k/v/output projections
    are left out), a layer norm, the feed-forward activation (GELU in BERT and GPT-2)."""
    first = {}
    for p in module_paths(cfg):
        leaf = p.rsplit(".", 1)[-1]
        if leaf.endswith("attention"):
            first.setdefault("attention", p)
        elif leaf.endswith("norm"):
            first.setdefault("layer_norm", p)
        elif leaf == "activation":
            first.setdefault("activation", p)
    return first


def pattern_ops(exported: Exported) -> dict:
    """{pattern: {op type: count}}: what the exporter emitted for one attention, layer norm, activation."""
    proto = exported.proto
    scopes = node_scopes(proto, exported.exporter, set(module_paths(exported.cfg)))
    out = {}
    for pattern, path in pattern_paths(exported.cfg).items():
        counts = Counter()
        for node, scope in zip(proto.graph.node, scopes):
            inside = [s for s, _ in scope]
            if path in inside and (pattern != "attention" or inside[-1] == path):
                counts[node.op_type] += 1
        out[pattern] = dict(counts.most_common())
    return out


def op_histogram(exported: Exported) -> dict:
    return dict(Counter(n.op_type for n in exported.proto.graph.node).most_common())


def _median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def onnx_section(cfg: Config, w: dict, inputs: dict | None = None, preset: str | None = None,
                 opset: int = DEFAULT_OPSET, repeats: int = 5, sources=SOURCES) -> dict:
    """One row per exporter: file size, op types, export time, onnxruntime latency against the
    source framework, max error against the float64 reference, the first kept op out of
    tolerance, and the ops each exporter emits for attention, layer norm and GELU. A failed
    export is a row with status "failed" and its one-line reason."""
    inputs = inputs if inputs is not None else example_inputs(cfg, batch=1, length=min(128, cfg.max_positions))
    reference_model = build("numpy", cfg, w, dtype="float64")
    reference, reference_trace = reference_model.trace(**inputs)
    rows = []
    for source in sources:
        row = {"source": source}
        try:
            exported = export(cfg, w, source, opset=opset, preset=preset)
        except ExportError as e:
            rows.append({**row, "status": "failed", "exporter": "/".join(EXPORTERS[source]), "reason": str(e)})
            continue
        m = build_from(exported)
        out, records = m.trace(**inputs)
        comparisons = compare_outputs(f"onnx[{source}]", out, reference, "float32")
        kept = compare_trace(reference_trace, records)
        first = next((c for c in kept if not c.passed), None)
        twin = build(source, cfg, w, dtype="float32")
        onnx_s, source_s = _median_seconds(lambda: m(**inputs), repeats), _median_seconds(lambda: twin(**inputs), repeats)
        histogram = op_histogram(exported)
        rows.append({
            **row, "status": "ok", "exporter": exported.exporter, "exporter_label": exported.metadata["exporter"],
            "fallback": exported.fallback, "opset": exported.opset, "file_bytes": exported.size,
            "ops": sum(histogram.values()), "op_types": histogram,
            "export_seconds": exported.seconds, "onnxruntime_ms": 1e3 * onnx_s, "source_ms": 1e3 * source_s,
            "latency_ratio": onnx_s / source_s,
            "max_abs_error": {c.name.split(".", 1)[1]: c.max_abs for c in comparisons},
            "passed": all(c.passed for c in comparisons),
            "ops_kept": len(kept), "ops_traced": len(reference_trace),
            "first_divergence": None if first is None else first.name,
            "patterns": pattern_ops(exported),
        })
    return {"opset": opset, "inputs": {k: list(v.shape) for k, v in inputs.items()},
            "pattern_modules": pattern_paths(cfg), "activation": cfg.activation, "exporters": rows}


def markdown(section: dict) -> str:
    from tabulate import tabulate
    rows = section["exporters"]
    ok = [r for r in rows if r["status"] == "ok"]
    label = {r["source"]: f"{r['source']} ({r['exporter']})" for r in rows}
    lines = ["## ONNX", "",
             f"Exported at opset {section['opset']} with dynamic batch and sequence axes, run in onnxruntime "
             f"(CPU) on inputs {', '.join(f'{k} {tuple(v)}' for k, v in section['inputs'].items())}, compared with "
             "the float64 NumPy reference at the float32 tolerance.", ""]
    table = []
    for r in rows:
        if r["status"] != "ok":
            table.append((label[r["source"]], "FAILED", "", "", "", "", "", "", r["reason"]))
            continue
        worst = max(r["max_abs_error"].values())
        table.append((label[r["source"]], "pass" if r["passed"] else "FAIL", f"{r['file_bytes'] / 2**20:.1f} MiB",
                      r["ops"], f"{r['export_seconds']:.1f}", f"{r['onnxruntime_ms']:.1f}", f"{r['source_ms']:.1f}",
                      f"{r['latency_ratio']:.2f}x", f"{worst:.2e}"
                      + (f"; fallback: {r['fallback']}" if r["fallback"] else "")))
    lines += [tabulate(table, ["exporter", "", "file", "ops", "export s", "onnxruntime ms", "source ms",
                               "ratio", "max abs error"], tablefmt="github", disable_numparse=True), ""]
    if ok:
        lines += ["First kept op out of tolerance (module outputs the graph keeps, by trace name): "
                  + "; ".join(f"{label[r['source']]}: {r['first_divergence'] or 'none'} "
                              f"({r['ops_kept']} of {r['ops_traced']} traced ops kept)" for r in ok), "",
                  "### What each exporter emits", ""]
        modules = section["pattern_modules"]
        names = {"attention": "attention (projections left out)", "layer_norm": "layer norm",
                 "activation": f"activation ({section['activation']})"}
        lines += [tabulate([(f"{names[p]}: {modules.get(p, '-')}",
                             *(", ".join(f"{op} x{n}" for op, n in r["patterns"].get(p, {}).items()) or "-"
                               for r in ok)) for p in PATTERNS],
                           ["pattern", *(label[r["source"]] for r in ok)], tablefmt="github", disable_numparse=True), "",
                  "### Op types", ""]
        ops = sorted({op for r in ok for op in r["op_types"]}, key=lambda op: -sum(r["op_types"].get(op, 0) for r in ok))
        lines += [tabulate([(op, *(r["op_types"].get(op, 0) for r in ok)) for op in ops],
                           ["op type", *(label[r["source"]] for r in ok)], tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines)
