"""int8 weights against the float64 reference, every model's tiny preset, ours beside onnxruntime's.

    python bench/bench_int8.py                           # ~3 min on 2 cores; bench/results/int8.md
    python bench/bench_int8.py --presets bert-tiny --out FILE.md

Each model family's tiny preset (DeBERTa has none: its registry tiny config), weights
`weights.initialize(cfg, std=0.02)` (BERT-scale), the family's inputs at batch 2, length 16. Ours:
`weights.quantize_int8` built in numpy (float64), torch and tf (float32); each is compared with the
float model in float64 NumPy (SQNR in dB, max abs, max-norm relative error: what the `int8_weights` row
bounds) and with numpy's own int8 model under the float32 row (the three compute the same thing).
onnxruntime's: the float ONNX export from torch through `quantize_dynamic(per_channel=True,
weight_type=QInt8)` on its MatMul / Gemm nodes (W8A8) and through `MatMulNBitsQuantizer(bits=8,
is_symmetric=True)` (weight-only), `conformance.compare.int8.METHODS`, their weights matched to ours by value. Weight bytes as stored: the whole set, and the Linear kernels alone (int8 + float32 scales
against float32). This is the evidence of `DEPLOYMENT_TOLERANCES["int8_weights"]`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from conformance.core import quiet  # noqa: E402

quiet.install()

from conformance import weights  # noqa: E402
from conformance.compare import int8  # noqa: E402
from conformance.compare.tolerance import tolerance  # noqa: E402
from conformance.spec import families, presets, registry  # noqa: E402

BATCH, LENGTH = 2, 16


def models() -> dict:
    """{label: Config}: each model's tiny preset, else its registry tiny config."""
    tiny = {presets.get(p).kind: p for p in presets.names() if "tiny" in p}
    return {tiny.get(n, f"{n} (registry tiny)"): presets.get(tiny[n]) if n in tiny else e.tiny
            for n, e in registry.ENTRIES.items() if e.is_model}


def measure(label: str, cfg) -> dict:
    w = weights.initialize(cfg, seed=0, std=0.02)
    m = int8.measure(cfg, w, families.get(cfg.kind).inputs(cfg, BATCH, LENGTH))
    print(f"{label}: done", file=sys.stderr)
    _, w8 = weights.quantize_int8(cfg, w)
    kernels = weights.quantize.int8_kernels(w8)
    scales = {k: w8[k + weights.quantize.SCALE].astype(np.float64) for k in kernels}
    half_steps = max(float((np.abs(w[k] - w8[k] * scales[k]) / (scales[k] / 2)).max())
                     for k in kernels)  # |W - s q| against its bound s / 2, in float64
    return {"model": label, "ours": m.ours, "agree": all(m.agree.values()), "theirs": m.theirs,
            "agreement": m.agreement, "bytes": m.bytes, "linear_bytes": m.linear_bytes, "half_steps": half_steps}


def worst(errors: dict, field: str, pick=max) -> float:
    return pick(getattr(e, field) for e in errors.values())


def cells(errors: dict | None) -> list[str]:
    """SQNR (the worst), max abs, max-norm rel of one implementation's outputs; blanks where it has none."""
    if errors is None:
        return ["", "", ""]
    return [f"{worst(errors, 'sqnr_db', min):.1f}", f"{worst(errors, 'max_abs'):.2e}", f"{worst(errors, 'max_norm_rel'):.2e}"]


def markdown(rows: list[dict]) -> str:
    bound = tolerance(int8.ROW).scale_rtol
    methods = list(int8.METHODS)
    ort_heads = " | ".join(f"{m} SQNR | {m} max abs | {m} max-norm rel" for m in methods)
    lines = ["# int8 weights against the float64 reference", "",
             "`python bench/bench_int8.py` (see its docstring): every model's tiny preset, std-0.02 weights, batch "
             f"{BATCH}, length {LENGTH}. Ours is weight-only int8 (per-channel symmetric, float activations), the "
             "worst of numpy (float64), torch and tf (float32). onnxruntime's, on the float ONNX export from torch: "
             + "; ".join(f"`{m}`: {d}" for m, d in int8.METHODS.items()) + ". Each: the worst output's SQNR (dB), "
             "max abs and max-norm relative error against the float model.", "",
             f"| model | ours SQNR | ours max abs | ours max-norm rel | frameworks agree (float32 row) | {ort_heads} |",
             "|---" * (5 + 3 * len(methods)) + "|"]
    for r in rows:
        ours = {f"{f}.{k}": e for f, errs in r["ours"].items() for k, e in errs.items()}
        row = cells(ours) + ["yes" if r["agree"] else "NO"]
        for m in methods:
            row += cells(r["theirs"].get(m))
        lines.append(f"| {r['model']} | " + " | ".join(row) + " |")
    lines += ["", "onnxruntime's weights against ours (matched by value; `scale ours / theirs` over every channel):", "",
              "| model | method | our kernels it quantizes | scale ours / theirs | q != ours | zero points | "
              "its int8 MatMuls ours keeps float |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for m, a in r["agreement"].items():
            if "refused" in a:
                lines.append(f"| {r['model']} | {m} | refused: {a['refused']} | | | | |")
                continue
            low, high = a["scale_ratio"]
            lines.append(f"| {r['model']} | {m} | {a['matched']}/{a['kernels']} | {low:.6g} to {high:.6g} | "
                         f"{a['q_mismatch']:.1%} | {a['zero_points']} | {', '.join(a['extra_quantized']) or 'none'} |")
    lines += ["", "Per output (ours: the worst framework):", "",
              f"| model | output | ours SQNR | ours max abs | ours max-norm rel | {ort_heads} |",
              "|---" * (5 + 3 * len(methods)) + "|"]
    for r in rows:
        for key in r["ours"]["numpy"]:
            row = cells({f: errs[key] for f, errs in r["ours"].items()})
            for m in methods:
                row += cells({key: r["theirs"][m][key]} if m in r["theirs"] else None)
            lines.append(f"| {r['model']} | {key} | " + " | ".join(row) + " |")
    lines += ["", "Weight bytes as stored (float32 against int8 + float32 scales), and the largest |W - s q| against "
                  "its bound s / 2 (float64):", "",
              "| model | all weights float32 | all weights int8 set | ratio | Linear kernels float32 | "
              "int8 + scales | ratio | max \\|W - s q\\| / (s / 2) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        (f, q), (lf, lq) = r["bytes"], r["linear_bytes"]
        lines.append(f"| {r['model']} | {f:,} | {q:,} | {f / q:.2f}x | {lf:,} | {lq:,} | {lf / lq:.2f}x | "
                     f"{r['half_steps']:.7f} |")
    every = [(r["model"], k, e) for r in rows for errs in r["ours"].values() for k, e in errs.items()]
    model, key, e = max(every, key=lambda t: t[2].max_norm_rel)
    lines += ["", f"Ours: worst max-norm relative error {e.max_norm_rel:.1e} ({model} {key}), SQNR "
                  f"{min(t[2].sqnr_db for t in every):.1f} to {max(t[2].sqnr_db for t in every):.1f} dB; the "
                  f"`{int8.ROW}` row's bound {bound:g} leaves {bound / e.max_norm_rel:.1f}x."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    known = models()
    parser.add_argument("--presets", default=",".join(known), help=f"comma-separated, of {list(known)}")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8.md"), help="Markdown report")
    args = parser.parse_args(argv)
    rows = [measure(label, known[label]) for label in args.presets.split(",")]
    text = markdown(rows)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
