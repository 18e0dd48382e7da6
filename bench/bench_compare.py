"""Tracing overhead of `conformance.compare` on an external model: transformers' BERT-base forward
with a forward hook on every module, in summary mode (each module output reduced to a Summary
under its canonical name) and with full tensors, against the same forward with no hook.
Target: summary <= 1.3x untraced.

    python bench/bench_compare.py [--preset bert-base] [--seq-len 128] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance import weights  # noqa: E402
from conformance.backends import backend, build  # noqa: E402
from conformance.compare import crosscheck  # noqa: E402
from conformance.compare.external import Canonical, External  # noqa: E402
from conformance.spec import families, presets  # noqa: E402

RESULT = Path(__file__).parent / "results" / "compare.md"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="bert-base")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    cfg = presets.get(args.preset)
    w = weights.initialize(cfg, seed=0)
    inputs = families.get(cfg.kind).inputs(cfg, 1, args.seq_len, 0)
    reference = build("numpy", cfg, w, dtype="float64")
    _, records = reference.trace(capture="*", **inputs)
    canon = Canonical.of(reference, records, cfg)
    model, modules, fw, call, label, base = crosscheck._transformers(cfg, w, "float32")
    ext = External(model, modules, cfg, canon, backend(fw), call, label, base=base)
    untraced = timed(lambda: call(model, inputs), args.repeats)
    summary = timed(lambda: ext.trace(inputs, summary=True), args.repeats)
    full = timed(lambda: ext.trace(inputs, summary=False), args.repeats)
    n = len(ext.trace(inputs, summary=True).records)
    text = "\n".join([
        "# Tracing overhead of conformance.compare on an external model", "",
        f"{label}, preset `{args.preset}`, batch 1, sequence {args.seq_len}, median of {args.repeats} forwards "
        f"after one warm-up; {n} module outputs recorded under canonical names. Target: summary <= 1.3x.", "",
        "| forward | seconds | vs untraced |", "|---|---|---|",
        f"| untraced | {untraced:.3f} | 1.00x |",
        f"| hooks, summary mode | {summary:.3f} | {summary / untraced:.2f}x |",
        f"| hooks, full tensors | {full:.3f} | {full / untraced:.2f}x |", ""])
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
