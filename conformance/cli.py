"""`tmirror` (also `python -m conformance`): list presets, compare frameworks, trace ops,
write reports. Bad input exits with status 2 and one line on stderr, never a traceback."""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _csv(allowed):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {list(allowed)}; received {text!r}")
        return values
    return parse


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; received {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds; received {text}")
    return value


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text}")
    return value


def parser() -> argparse.ArgumentParser:
    from conformance.backends.build import DTYPES
    p = argparse.ArgumentParser(prog="tmirror", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list presets with their parameter counts")

    def common(cmd, frameworks="numpy,torch,tf", dtypes="float32"):
        cmd.add_argument("preset", help="a preset name (see `tmirror models`)")
        cmd.add_argument("--weights", help="a safetensors file or a Hugging Face directory (default: seeded init)")
        cmd.add_argument("--batch", type=_positive, default=1)
        cmd.add_argument("--seq-len", type=_positive, default=128)
        cmd.add_argument("--frameworks", type=_csv(("numpy", "torch", "tf")), default=frameworks.split(","))
        cmd.add_argument("--dtype", type=_csv(DTYPES), default=dtypes.split(","))
        cmd.add_argument("--device", choices=["cpu"], default="cpu", help="cuda: see issue 7")
        cmd.add_argument("--seed", type=int, default=0)

    rep = sub.add_parser("report", help="write PRESET.md/.json/.html: conformance, parameters, timing")
    common(rep)
    rep.add_argument("--out", default="reports", help="output directory (default: reports/)")
    rep.add_argument("--onnx", action="store_true",
                     help="also export with torch.export and tf2onnx and run both in onnxruntime (minutes, GiBs for base sizes)")
    rep.add_argument("--train", action="store_true",
                     help="also compare every gradient with the NumPy backward and run a few AdamW steps in each "
                          "framework (section 'Gradients' and 'Training steps')")
    rep.add_argument("--stream", action="store_true",
                     help="one layer at a time, for models larger than memory (also chosen by itself when the "
                          "whole model's estimated peak passes --memory-budget); writes PRESET-stream.*")
    rep.add_argument("--memory-budget", default=None,
                     help="bytes this run may use, e.g. 12GiB (default: 80%% of this machine's memory, or of what is "
                          "free if less)")
    rep.add_argument("--workers", type=_positive, default=None,
                     help="streamed: run the per-layer replay jobs on N local worker processes (Dask)")
    rep.add_argument("--cluster", default=None,
                     help="streamed: run the replay jobs on the Dask cluster whose scheduler is at ADDRESS "
                          "(tcp://host:8786)")
    rep.add_argument("--layers", type=_positive, default=None,
                     help="streamed: only the model's first N layers, at full width (writes PRESET-Nlayers-stream.*)")
    cmp_ = sub.add_parser("compare", help="per-op error table and the first op out of tolerance")
    common(cmp_)
    cmp_.add_argument("--top", type=_positive, default=15, help="how many of the worst ops to list")
    tr = sub.add_parser("trace", help="traced outputs of ops matching PATTERN, frameworks side by side")
    common(tr)
    tr.add_argument("--op", required=True, help="glob over trace names, e.g. 'encoder.0.attention.*'")
    ex = sub.add_parser("explain", help="a step-by-step numeric walkthrough of one component")
    ex.add_argument("component", nargs="?", help="a registry entry, e.g. multi_head_attention, layer_norm, bert "
                                                 "(none, or --list: list them)")
    ex.add_argument("--variant", default="default", help="a registry variant, e.g. causal, cross")
    ex.add_argument("--format", choices=["text", "md"], default="text", help="text (100 columns) or Markdown")
    ex.add_argument("--out", help="write to this file instead of stdout")
    ex.add_argument("--list", action="store_true", help="list the components and models with a walkthrough")
    mat = sub.add_parser("matrix", help="the summary matrix of every component and model (reports/README.md)")
    mat.add_argument("--frameworks", type=_csv(("numpy", "torch", "tf")), default=["numpy", "torch", "tf"])
    mat.add_argument("--dtype", type=_csv(DTYPES), default=["float64", "float32"])
    mat.add_argument("--out", default="reports/README.md")
    exp = sub.add_parser("export", help="write an ONNX file (dynamic batch and sequence axes), checked and "
                                        "proven against the reference in onnxruntime")
    exp.add_argument("preset", help="a preset name (see `tmirror models`)")
    exp.add_argument("--framework", required=True, choices=["torch", "tf"], help="the mirror to export from")
    exp.add_argument("--weights", help="a safetensors file or a Hugging Face directory (default: seeded init)")
    exp.add_argument("--out", help="the ONNX file to write (default: PRESET-FRAMEWORK.onnx)")
    exp.add_argument("--opset", type=_positive, default=18, help="ONNX opset (default 18)")
    exp.add_argument("--exporter", choices=["dynamo", "torchscript", "tf2onnx"],
                     help="torch: dynamo (default; falls back to torchscript) or torchscript; tf: tf2onnx")
    exp.add_argument("--seed", type=int, default=0)
    from conformance.spec import presets
    from conformance.suites.measure import REGIMES
    tol = sub.add_parser("tolerances", help="measure error distributions per dtype, framework and op; write "
                                            "the evidence JSON and the Markdown tolerance table")
    tol.add_argument("--dtypes", type=_csv(DTYPES), default=list(DTYPES))
    tol.add_argument("--frameworks", type=_csv(("numpy", "torch", "tf")), default=None,
                     help="default: numpy,torch,tf on cpu; torch on cuda (the tf mirror runs on the CPU only)")
    tol.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="cuda: torch on the GPU against the float64 CPU reference, and against torch on cpu")
    tol.add_argument("--regimes", type=_csv(tuple(REGIMES)), default=list(REGIMES))
    tol.add_argument("--presets", type=_csv(tuple(presets.names())), default=[],
                     help="full-size presets to measure too (batch 1, 128 tokens), e.g. bert-base,gpt2")
    tol.add_argument("--cases", default="*", help="glob over registry case ids, e.g. 'multi_head_attention*'")
    tol.add_argument("--out", help="Markdown table (default: reports/tolerances.md; -cuda.md on cuda)")
    tol.add_argument("--evidence", help="evidence JSON (default: conformance/compare/tolerance_evidence.json; "
                                        "_cuda.json on cuda)")
    gpu = sub.add_parser("gpu-check", help="the GPU conformance run within a time budget (issue 21): torch on "
                                           "cuda in every GPU dtype, TF32 on and off, presets, Keras on jax and "
                                           "torch, timing, tolerances; writes gpu-DEVICE.md/.json and prints a verdict")
    gpu.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                     help="cuda (default): torch on the GPU; cpu: the dry run, every part on small inputs")
    gpu.add_argument("--out", default="reports", help="output directory (default: reports/)")
    gpu.add_argument("--budget-seconds", type=_positive_seconds, default=None,
                     help="the run ends within this many seconds, cutting the lowest-priority work first "
                          "(default: 480 on cuda, 60 on cpu)")
    gpu.add_argument("--frameworks", type=_csv(("torch", "tf")), default=["torch"],
                     help="in-process mirrors on the device (default torch; tf: cpu only, needs TensorFlow)")
    gpu.add_argument("--dtypes", type=_csv(DTYPES), default=None,
                     help="default: float32,tf32,bfloat16,float16,mixed_bfloat16,mixed_float16 on cuda; "
                          "float32,bfloat16 on cpu")
    gpu.add_argument("--keras-backends", type=_csv(("jax", "torch", "tensorflow")),
                     default=["jax", "torch", "tensorflow"], help="Keras backends to run tf_impl on (subprocesses)")
    gpu.add_argument("--cases", default=None,
                     help="glob over registry case ids (default: every case on cuda, a sample of each kind on cpu)")
    gpu.add_argument("--wheels", default=None,
                     help="a directory of carried wheels (default: .whl/ in the checkout; scripts/gpu-wheels)")
    gpu.error = lambda message: gpu.exit(2, f"tmirror gpu-check: error: {message}\n")  # one line, no usage
    fig = sub.add_parser("figures", help="the docs' numbers and figures: docs/generated/*.md, docs/figures/*.png")
    fig.add_argument("--out", default="docs", help="the docs directory (default: docs/)")
    fig.add_argument("--quick", action="store_true", help="smaller measurements, in seconds (not for committing)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])  # the command's own arguments, for records
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tmirror {args.command}: error: {str(e).splitlines()[0] if len(str(e).splitlines()) == 1 else e}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_models(args) -> int:
    import numpy as np
    from tabulate import tabulate

    from conformance.spec import presets, registry
    from conformance.costs import flops
    rows = []
    for name in presets.names():
        cfg = presets.get(name)
        params = sum(int(np.prod(s)) for s in registry.param_shapes(cfg).values())
        gflops = flops.totals(flops.ops(cfg, 1, 128))["all"] / 1e9  # analytic: instant at any size
        rows.append((name, cfg.kind, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.vocab_size,
                     f"{params:,}", f"{gflops:,.2f}"))
    print(tabulate(rows, ["preset", "kind", "layers", "d_model", "heads", "d_ff", "vocab", "parameters",
                          "forward GFLOPs (B=1, T=128)"],
                   tablefmt="github", colalign=("left", "left") + ("right",) * 7, disable_numparse=True))
    return 0


def _run(args):
    from tqdm import tqdm

    from conformance.report import runner
    cfg, w, source = runner.resolve(args.preset, args.weights, args.seed)
    inputs = runner.model_inputs(cfg, args.batch, args.seq_len, args.seed)
    steps = len(args.frameworks) * len(args.dtype)
    with tqdm(total=steps + 1, desc="reference float64", file=sys.stderr, leave=False, disable=None) as bar:
        def progress(label):
            bar.update(1)
            bar.set_description(label)
        reference, reference_trace, runs = runner.run(cfg, w, inputs, args.frameworks, args.dtype,
                                                      progress=progress)
        bar.update(1)
    return cfg, w, source, inputs, reference_trace, runs


def cmd_report(args) -> int:
    from conformance.report import runner, stream, write as report
    from conformance.weights.stream import open_source
    from conformance.spec import families
    from conformance import weights
    from conformance import costs
    budget = stream.parse_bytes(args.memory_budget) if args.memory_budget else stream.default_budget()
    cfg, source = open_source(args.preset, args.weights, args.seed, args.layers)
    runs = [(f, d) for f in args.frameworks for d in args.dtype if (f, d) != stream.REFERENCE]
    streamed = args.stream
    if not streamed and getattr(families.FAMILIES.get(cfg.kind), "stack", None) is not None:
        need = stream.rss() + stream.estimate(cfg, runs, args.batch, args.seq_len)["whole"]
        if need > budget:
            print(f"tmirror report: the whole model needs about {need / stream.GiB:.1f} GiB, over --memory-budget "
                  f"{budget / stream.GiB:.1f} GiB: streaming it one layer at a time", file=sys.stderr)
            streamed = True
    if streamed:
        return _report_streamed(args, cfg, source, runs, budget)
    for option in ("workers", "cluster", "layers"):
        if getattr(args, option) is not None:
            raise ValueError(f"--{option} goes with a streamed run (--stream); received --{option} {getattr(args, option)}")
    cfg, w, source, inputs, reference_trace, runs = _run(args)
    env = runner.environment(args.seed, weights.fingerprint(w), source)
    section = costs.costs(cfg, args.batch, args.seq_len, args.frameworks, weights=w)
    titles = {"flops": "FLOPs against sequence length and batch", "memory": "Memory against sequence length and batch"}
    figures = {**report.figures(cfg, reference_trace),
               **{titles.get(k, k): png for k, png in costs.plots(section).items()}}
    rec = report.record(args.preset, cfg, w, inputs, env, runs, section)
    if args.onnx:
        from conformance.report import onnx
        rec["onnx"] = onnx.onnx_section(cfg, w, inputs, preset=args.preset)
    if args.train:
        from tqdm import tqdm

        from conformance.report import training as train_report
        with tqdm(total=5, desc="train", file=sys.stderr, leave=False, disable=None) as bar:
            rec["train"] = train_report.section(args.preset, cfg, w, inputs, args.frameworks, args.dtype,
                                                progress=lambda label: (bar.update(1), bar.set_description(label)))
    paths = report.write(rec, args.out, figures)
    for r in runs:
        first = r.first_divergence
        print(f"{r.framework:>6} {r.dtype}: {'pass' if r.passed else 'FAIL'}  "
              f"worst output error {max(c.max_abs for c in r.comparisons):.2e}  "
              f"first op out of tolerance: {first.name if first else 'none'}  "
              f"forward {1e3 * r.seconds:.1f} ms")
    train_ok = True
    if args.train:
        from conformance.report import training as train_report
        train_ok = train_report.passed(rec["train"])
        print(f" train: {'pass' if train_ok else 'FAIL'}  (every gradient, and the weights after the training steps)")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if all(r.passed for r in runs) and train_ok else 1


def _report_streamed(args, cfg, source, runs, budget) -> int:
    from tqdm import tqdm

    from conformance import costs
    from conformance.report import runner, stream, write as report
    from conformance.spec import presets
    if args.onnx or args.train:
        raise ValueError("--stream does not combine with --onnx or --train: each needs the whole model at once")
    inputs = runner.model_inputs(cfg, args.batch, args.seq_len, args.seed)
    name = f"{args.preset}-{args.layers}layers-stream" if args.layers else f"{args.preset}-stream"
    p = stream.plan(args.preset, cfg, source, inputs, runs, args.out, budget, name=name)
    print(f"streaming {args.preset} ({cfg.num_layers} layers, policy {'keep' if p.keep else 'drop'}, head in "
          f"{-(-cfg.vocab_size // p.chunk)} chunk(s)); state in {p.state}", file=sys.stderr)
    load_at_start = round(os.getloadavg()[0], 2)  # the machine is shared: timings under load are not comparable
    rates = stream.matmul_rates(runs)
    with tqdm(total=2 * cfg.num_layers + 2, desc="embeddings", file=sys.stderr, leave=False, disable=None) as bar:
        def progress(label):
            bar.update(1)
            bar.set_description(label)
        sec = stream.run(p, args.workers, args.cluster, progress)
    depth = presets.get(args.preset).num_layers if args.preset in presets.names() else cfg.num_layers
    sec["cost_model"] = stream.cost_model(sec, cfg, args.batch, args.seq_len, rates, depth)
    env = runner.environment(args.seed, stream.fingerprint(source), source.description, args.frameworks)
    env.update(load_average_at_start=load_at_start, load_average_at_end=round(os.getloadavg()[0], 2))
    section = costs.costs(cfg, args.batch, args.seq_len, args.frameworks, measure=False)
    rec = report.stream_record(p, env, section)
    rec["stream"] = sec
    titles = {"flops": "FLOPs against sequence length and batch", "memory": "Memory against sequence length and batch"}
    paths = report.write(rec, args.out, {titles.get(k, k): png for k, png in costs.plots(section).items()}, name=name)
    first = sec["first_layer_out_of_tolerance"]
    for label in p.labels:
        run = next(r for r in rec["runs"] if f"{r['framework']} {r['dtype']}" == label)
        print(f"{label:>14}: {'pass' if run['passed'] and first['replayed'][label] is None else 'FAIL'}  "
              f"first op out of tolerance: {run['first_divergence'] or 'none'}; first layer out of tolerance: "
              f"chained {first['chained'][label]}, replayed {first['replayed'][label]}")
    print(f"peak resident set {sec['peak_rss'] / stream.GiB:.2f} GiB, {sec['wall']['total'] / 60:.1f} min")
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0 if stream.passed(sec) and all(r["passed"] for r in rec["runs"]) else 1


def cmd_compare(args) -> int:
    from tabulate import tabulate
    _, _, source, _, _, runs = _run(args)
    print(f"weights: {source}")
    for r in runs:
        worst = sorted(r.ops, key=lambda c: -c.max_abs)[:args.top]
        print(f"\n{r.framework} {r.dtype}: {len(r.ops)} ops traced; outputs "
              + ", ".join(f"{c.name.split('.', 1)[1]} {c.max_abs:.2e}" for c in r.comparisons))
        print(tabulate([(c.name, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}", "ok" if c.passed else "OUT")
                        for c in worst], ["op (worst first)", "max abs", "max rel", ""], tablefmt="simple"))
        first = r.first_divergence
        print(f"first op out of tolerance: {first if first else 'none'}")
    return 0 if all(r.passed for r in runs) else 1


def cmd_trace(args) -> int:
    import numpy as np
    from tabulate import tabulate

    from conformance.report import runner
    from conformance.backends.build import build
    cfg, w, _ = runner.resolve(args.preset, args.weights, args.seed)
    inputs = runner.model_inputs(cfg, args.batch, args.seq_len, args.seed)
    traces = {f"{fw} {dt}": build(fw, cfg, w, dtype=dt).trace(**inputs)[1]
              for fw in args.frameworks for dt in args.dtype}
    names = [n for n in next(iter(traces.values())) if fnmatch.fnmatch(n, args.op)]
    if not names:
        raise ValueError(f"no traced op matches --op {args.op!r}; e.g. {list(next(iter(traces.values())))[:3]}")
    for name in names:
        rows = [(label, str(t[name].shape), f"{t[name].mean():+.6e}", f"{t[name].std():.6e}",
                 np.array2string(t[name].ravel()[:4], precision=6)) for label, t in traces.items()]
        print(f"\n{name}")
        print(tabulate(rows, ["framework", "shape", "mean", "std", "first values"], tablefmt="simple"))
    return 0


def cmd_matrix(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from conformance.report import matrix, runner
    from conformance.spec.registry import CASES
    total = len(CASES) * sum((f, d) != ("numpy", "float64") for f in args.frameworks for d in args.dtype)
    with tqdm(total=total, file=sys.stderr, leave=False, disable=None) as bar:
        def progress(label):
            bar.update(1)
            bar.set_description(label)
        m = matrix.measure(args.frameworks, args.dtype, progress=progress)
    env = runner.environment(0, "registry weights", "weights.initialize per case")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(matrix.markdown(m, env))
    failed = [k for k, (_, ok) in m["cells"].items() if not ok]
    print(f"{len(m['cells']) - len(failed)} of {len(m['cells'])} cells pass; wrote {args.out}")
    return 0 if not failed else 1


def cmd_explain(args) -> int:
    from pathlib import Path

    from conformance.report import explain
    if args.list or args.component is None:
        import textwrap
        for name, w in explain.walkthroughs().items():
            print(textwrap.fill(w.summary, 100, initial_indent=f"{name:<30} ", subsequent_indent=" " * 31))
        return 0
    text = explain.walkthrough(args.component, variant=args.variant, fmt=args.format)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from conformance.backends import onnx_export
    from conformance.report import runner
    from conformance.backends.build import build
    from conformance.compare.tolerance import compare_outputs
    cfg, w, source = runner.resolve(args.preset, args.weights, args.seed)
    chain = [args.exporter] if args.exporter else list(onnx_export.EXPORTERS[args.framework])
    print(f"exporting {args.preset} from {args.framework} ({' then '.join(chain)}) at opset {args.opset}...",
          file=sys.stderr)
    exported = onnx_export.export(cfg, w, args.framework, opset=args.opset, exporter=args.exporter,
                                  preset=args.preset)
    out = args.out or f"{args.preset}-{args.framework}.onnx"
    exported.save(out)
    inputs = onnx_export.example_inputs(cfg, batch=3, length=min(17, cfg.max_positions))
    print("running it in onnxruntime against the float64 reference...", file=sys.stderr)
    got = onnx_export.build_from(exported)(**inputs)
    results = compare_outputs("onnx", got, build("numpy", cfg, w, dtype="float64")(**inputs), "float32")
    print(f"wrote {out}: {exported.size / 2**20:.1f} MiB, {len(exported.proto.graph.node)} ops, opset {exported.opset}, "
          f"exported in {exported.seconds:.1f} s by {exported.metadata['exporter']}")
    if exported.fallback:
        print(f"fallback: the first exporter failed: {exported.fallback}")
    print("metadata: " + ", ".join(f"{k}={v}" for k, v in exported.metadata.items() if k != "config"))
    print(f"weights: {source}")
    shapes = ", ".join(f"{k} {v.shape}" for k, v in inputs.items())
    print(f"onnxruntime on {shapes} (exported at batch {onnx_export.EXAMPLE_BATCH}, sequence "
          f"{onnx_export.EXAMPLE_LENGTH}) against the float64 reference: "
          + ", ".join(f"{c.name.split('.', 1)[1]} max abs {c.max_abs:.2e} {'pass' if c.passed else 'FAIL'}"
                      for c in results))
    return 0 if all(c.passed for c in results) and np.isfinite([c.max_abs for c in results]).all() else 1


def cmd_figures(args) -> int:
    from study import figures
    figures.write_all(args.out, quick=args.quick, progress=lambda line: print(line, file=sys.stderr))
    return 0


def tolerance_frameworks(device: str, given: list | None) -> list:
    """`tmirror tolerances`' frameworks: as given, else every mirror on the CPU and torch alone on cuda (the
    tf mirror runs on the CPU only, and a GPU machine need not have TensorFlow at all)."""
    if given is not None:
        return given
    return ["torch"] if device == "cuda" else ["numpy", "torch", "tf"]


def cmd_tolerances(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from conformance.compare.tolerance import TOLERANCES
    from conformance.spec.registry import CASES, case_id
    from conformance.suites import measure
    args.frameworks = tolerance_frameworks(args.device, args.frameworks)
    cases = [c for c in CASES if fnmatch.fnmatch(case_id(c), args.cases)]
    if not cases and not args.presets:
        raise ValueError(f"no registry case matches --cases {args.cases!r}; e.g. {[case_id(c) for c in CASES[:3]]}")
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    out = Path(args.out or f"reports/tolerances{suffix.replace('_', '-')}.md")
    evidence_path = Path(args.evidence or f"conformance/compare/tolerance_evidence{suffix}.json")
    with tqdm(total=len(args.regimes) * len(cases) + len(args.presets), file=sys.stderr, leave=False,
              disable=None) as bar:
        def progress(label):
            bar.update(1)
            bar.set_description(label)
        results = measure.measure(args.dtypes, args.frameworks, args.device, args.regimes, cases,
                                  args.presets, progress=progress)
    ev = measure.evidence(results, "tmirror tolerances " + " ".join(args.argv), TOLERANCES)
    evidence_path.parent.mkdir(parents=True, exist_ok=True)
    evidence_path.write_text(measure.dumps(ev))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(measure.markdown(ev, str(evidence_path)))
    uncovered = []
    for dtype, row in ev["rows"].items():
        state = ("no row in TOLERANCES" if "covered" not in row else
                 f"row {row['current_bound']:.0e} covers it ({row['headroom']:.1f}x)" if row["covered"]
                 else f"row {row['current_bound']:.0e} DOES NOT cover it")
        print(f"{dtype:>15} {row['metric']:>8}: worst {row['worst']:.2e} at {row['worst_at']}; {state}; "
              f"proposed {row['proposed']:.0e}; stress {row['stress_worst']:.2e}; "
              f"{len(row['overflows'])} overflow(s)")
        if not row.get("covered"):
            uncovered.append(dtype)
    print(f"wrote {evidence_path}, {out}")
    return 1 if uncovered else 0


def cmd_gpu_check(args) -> int:
    import time
    started = time.perf_counter()  # the budget counts the imports below too
    from conformance.report import gpu
    s = gpu.settings(args.device, args.out, args.budget_seconds, args.frameworks, args.dtypes,
                     keras=args.keras_backends, cases=args.cases, wheels=args.wheels,
                     command="tmirror gpu-check " + " ".join(args.argv))
    rep = gpu.run(s, progress=lambda line: print(line, file=sys.stderr, flush=True), started=started)
    print(rep.line, flush=True)  # the verdict the report holds
    return rep.code


COMMANDS = {"export": cmd_export, "explain": cmd_explain, "figures": cmd_figures, "matrix": cmd_matrix, "models": cmd_models, "report": cmd_report, "compare": cmd_compare, "trace": cmd_trace,
            "tolerances": cmd_tolerances, "gpu-check": cmd_gpu_check}

if __name__ == "__main__":
    sys.exit(main())
