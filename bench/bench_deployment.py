"""The Keras twin's deployment artifacts against the float64 reference, every registry model, one run.

    python bench/bench_deployment.py                       # ~4 min on 2 cores; bench/results/deployment.md
    python bench/bench_deployment.py --models bert,gpt2 --out FILE.md

Each registry model (the suite's tiny configs and weights, `suites.cases.case_data`) is written in every
format of `conformance.backends.keras_export` (keras, savedmodel, litert in float32 and dynamic-range
int8, onnx through `keras.Model.export`), reloaded the way a deployment reloads it, run on the suite's
inputs and compared with the float64 NumPy reference: per output the max abs error, the max-norm
relative error (what the low-precision and int8 rows bound) and the SQNR in dB; per artifact its size
and the time to write it. This is the evidence of the `int8_dynamic` row
(`conformance.compare.tolerance.DEPLOYMENT_TOLERANCES`), which the generated suite and `tmirror
tolerances` never measure (int8 is no framework dtype).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conformance.core import quiet  # noqa: E402

quiet.install()

from conformance.backends import keras_export  # noqa: E402
from conformance.backends.onnx_export import ExportError  # noqa: E402
from conformance.compare.tolerance import compare_outputs, sqnr_db, tolerance  # noqa: E402
from conformance.spec import registry  # noqa: E402
from conformance.suites.cases import case_data  # noqa: E402

ARTIFACTS = [("keras", None), ("savedmodel", None), ("litert", None), ("litert", "int8"), ("onnx", None)]


def measure(name: str, folder: Path) -> list[dict]:
    """One row per (artifact, output) of model `name`."""
    _, cfg, w, inputs, reference = case_data(name, "default")
    rows = []
    for fmt, quantize in ARTIFACTS:
        path = folder / f"{name}-{fmt}{'-' + quantize if quantize else ''}{keras_export.SUFFIX[fmt]}"
        try:
            artifact = keras_export.export(cfg, w, fmt, path, inputs, quantize=quantize)
        except ExportError as e:  # a declared refusal (test_deployment.LITERT_REFUSES): a row that says why
            rows.append({"model": name, "artifact": fmt + (f" {quantize}" if quantize else ""), "refused": str(e)})
            continue
        out = keras_export.load(fmt, path, cfg)(**inputs)
        for c in compare_outputs(f"{fmt} {name}", out, reference, artifact.row):
            key = c.name.rsplit(".", 1)[1]
            rows.append({"model": name, "artifact": fmt + (f" {quantize}" if quantize else ""), "output": key,
                         "max_abs": c.max_abs, "norm_rel": c.max_abs / c.scale, "sqnr": sqnr_db(out[key], reference[key]),
                         "row": artifact.row, "passed": c.passed, "bytes": artifact.size, "seconds": artifact.seconds})
        print(f"{name} {fmt} {quantize or ''}: {artifact.size} bytes, {artifact.seconds:.1f} s", file=sys.stderr)
    return rows


def summary(rows: list[dict]) -> list[str]:
    """One line per model: the worst output of each artifact, the int8 SQNR, sizes and write times."""
    lines = ["| model | litert f32 max abs | int8 max abs | int8 max-norm rel | int8 SQNR (dB) | keras-onnx max abs | "
             "size keras / savedmodel / litert / int8 / onnx (KB) | write keras / savedmodel / litert / int8 / onnx (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        by = {a: [r for r in mine if r["artifact"] == a] for a, _ in dict.fromkeys((r["artifact"], 0) for r in mine)}

        def worst(artifact, key="max_abs", pick=max, fmt="{:.1e}"):
            got = by.get(artifact, [])
            if got and "refused" in got[0]:
                return "refused"
            return fmt.format(pick(r[key] for r in got)) if got else ""

        cells = [worst("litert"), worst("litert int8"), worst("litert int8", "norm_rel"),
                 worst("litert int8", "sqnr", min, "{:.1f}"), worst("onnx")]
        order = ["keras", "savedmodel", "litert", "litert int8", "onnx"]
        sizes = " / ".join("-" if "refused" in by[a][0] else f"{by[a][0]['bytes'] / 1e3:.0f}" for a in order)
        times = " / ".join("-" if "refused" in by[a][0] else f"{by[a][0]['seconds']:.1f}" for a in order)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {sizes} | {times} |")
    return lines


def markdown(rows: list[dict]) -> str:
    lines = ["# Deployment artifacts against the float64 reference", "",
             "`python bench/bench_deployment.py`: every registry model's tiny config (suite weights, std 0.02, the "
             "suite's inputs), each artifact written, reloaded and run (see the bench's docstring). The worst "
             "output per model first, then every output.", "", *summary(rows), "",
             "| model | artifact | output | max abs | max-norm rel | SQNR (dB) | row | pass | size (bytes) | write (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['artifact']} | | refused: {r['refused']} | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['artifact']} | {r['output']} | {r['max_abs']:.2e} | {r['norm_rel']:.2e} | "
                     f"{r['sqnr']:.1f} | {r['row']} | {'yes' if r['passed'] else 'NO'} | {r['bytes']:,} | "
                     f"{r['seconds']:.1f} |")
    int8 = [r for r in rows if r.get("row") == "int8_dynamic"]
    if int8:
        worst = max(int8, key=lambda r: r["norm_rel"])
        bound = tolerance("int8_dynamic").scale_rtol
        lines += ["", f"int8: worst max-norm relative error {worst['norm_rel']:.1e} ({worst['model']} {worst['output']}), "
                      f"SQNR {min(r['sqnr'] for r in int8):.1f} to {max(r['sqnr'] for r in int8):.1f} dB; the "
                      f"int8_dynamic row's bound {bound:g} leaves {bound / worst['norm_rel']:.1f}x."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = [n for n, e in registry.ENTRIES.items() if e.is_model]
    parser.add_argument("--models", default=",".join(models), help=f"comma-separated, of {models}")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "deployment.md"), help="Markdown report")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            rows += measure(name, Path(folder))
    text = markdown(rows)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
