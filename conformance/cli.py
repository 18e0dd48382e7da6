"""`tmirror` (also `python -m conformance`): list presets, compare frameworks, trace ops,
write reports. Bad input exits with status 2 and one line on stderr, never a traceback.

There is one error path: a bad argument (argparse's, or one of the type checks below, which also
check every --out path before any work starts) and every expected failure of a command (a
`ValueError` from the project's own checks, an `OSError` from the file system) are printed as
`tmirror COMMAND: error: ...` on one line, with status 2. Anything else is a bug, and shows its
traceback."""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from conformance.core import files  # noqa: E402  (standard library only: the CLI starts fast)
from conformance.core.progress import MODES as PROGRESS_MODES, Progress  # noqa: E402


class Parser(argparse.ArgumentParser):
    """argparse, whose errors are one line: `tmirror report: error: ... (see tmirror report --help)`
    instead of the usage block and the error (the subcommands' parsers are this class too)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text}")
    return value


def _integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; received {text!r}") from None


def _out(target):
    """An --out path checked as the command line is read, before any work: a folder ("directory") that
    exists or can be made, or a file ("file") that is no folder and whose folder can be made."""
    def parse(text):
        try:
            return files.directory(text, "path") if target == "directory" else files.file(text, "path")
        except files.WriteError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def parser() -> argparse.ArgumentParser:
    from conformance.backends.build import DTYPES
    p = Parser(prog="tmirror", description=__doc__.split("\n")[0])
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
        cmd.add_argument("--seed", type=_integer, default=0)

    rep = sub.add_parser("report", help="write PRESET.md/.json/.html: conformance, parameters, timing")
    common(rep)
    rep.add_argument("--out", type=_out("directory"), default="reports", help="output directory (default: reports/)")
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
    cmp_.add_argument("--a", help="compare two implementations op by op: numpy, torch, tf, reference, "
                                  "keras-torch, keras-jax (the tf mirror on that Keras backend), onnx, onnx-tf, transformers, keras-hub or module:PATH.py:FACTORY, each NAME@DTYPE to pick its "
                                  "dtype (default --dtype); PRESET may then be a registry case, e.g. 'llama[gemma]'")
    cmp_.add_argument("--b", default="reference", help="the other side of --a (default: the float64 reference)")
    cmp_.add_argument("--std", type=float, default=0.02, help="with --a: the seeded weights' std (default 0.02)")
    cmp_.add_argument("--out", help="with --a: also write the report as Markdown to this file")
    tr = sub.add_parser("trace", help="traced outputs of ops matching PATTERN, frameworks side by side")
    common(tr)
    tr.add_argument("--op", required=True, help="glob over trace names, e.g. 'encoder.0.attention.*'")
    ex = sub.add_parser("explain", help="a step-by-step numeric walkthrough of one component")
    ex.add_argument("component", nargs="?", help="a registry entry, e.g. multi_head_attention, layer_norm, bert "
                                                 "(none, or --list: list them)")
    ex.add_argument("--variant", default="default", help="a registry variant, e.g. causal, cross")
    ex.add_argument("--format", choices=["text", "md"], default="text", help="text (100 columns) or Markdown")
    ex.add_argument("--out", type=_out("file"), help="write to this file instead of stdout")
    ex.add_argument("--list", action="store_true", help="list the components and models with a walkthrough")
    mat = sub.add_parser("matrix", help="the summary matrix of every component and model (reports/README.md)")
    mat.add_argument("--frameworks", type=_csv(("numpy", "torch", "tf", "keras-torch", "keras-jax")),
                     default=["numpy", "torch", "tf", "keras-torch", "keras-jax"],
                     help="keras-torch, keras-jax: tf_impl on that Keras backend, in a subprocess")
    mat.add_argument("--dtype", type=_csv(DTYPES), default=["float64", "float32"])
    mat.add_argument("--out", type=_out("file"), default="reports/README.md")
    mat.add_argument("--cases", default="*", help="globs over registry case ids, comma-separated (default: all)")
    from conformance.backends.keras_export import FORMATS, QUANTIZE
    exp = sub.add_parser("export", help="write a deployment artifact (ONNX by default; .keras, SavedModel, LiteRT), "
                                        "reload it and prove it against the float64 reference")
    exp.add_argument("preset", help="a preset name (see `tmirror models`)")
    exp.add_argument("--format", choices=list(FORMATS), default="onnx",
                     help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    exp.add_argument("--framework", choices=["torch", "tf"],
                     help="--format onnx (required): the mirror to export from; the other formats are tf_impl's")
    exp.add_argument("--quantize", choices=list(QUANTIZE),
                     help="; ".join(f"{k}: dynamic-range {k} weights, --format {f} only, held to the {row} row"
                                    for k, (f, row) in QUANTIZE.items()))
    exp.add_argument("--load", help="instead of writing one, reload this artifact of --format and prove it against "
                                    "PRESET (a .keras file of another preset is refused by name)")
    exp.add_argument("--weights", help="a safetensors file or a Hugging Face directory (default: seeded init)")
    exp.add_argument("--out", type=_out("file"), help="the file (a SavedModel: folder) to write (default: "
                                                      "PRESET-FRAMEWORK.onnx, PRESET.keras, PRESET-savedmodel, "
                                                      "PRESET[-int8].tflite)")
    exp.add_argument("--opset", type=_positive, default=18, help="ONNX opset (default 18)")
    exp.add_argument("--exporter", choices=["dynamo", "torchscript", "tf2onnx", "keras"],
                     help="--format onnx: torch: dynamo (default; falls back to torchscript) or torchscript; "
                          "tf: tf2onnx (default) or keras (keras.Model.export(format='onnx'))")
    exp.add_argument("--seed", type=_integer, default=0)
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
    tol.add_argument("--cases", default="*", help="globs over registry case ids, comma-separated, e.g. "
                                                  "'multi_head_attention*,t5*'")
    tol.add_argument("--merge", action="store_true", help="add the cases measured to the evidence JSON's (cases "
                                                          "it lacks), rather than replace it")
    tol.add_argument("--out", type=_out("file"), help="Markdown table (default: reports/tolerances.md; -cuda.md on cuda)")
    tol.add_argument("--evidence", type=_out("file"), help="evidence JSON (default: conformance/compare/tolerance_evidence.json; "
                                        "_cuda.json on cuda)")
    gpu = sub.add_parser("gpu-check", help="the GPU conformance run within a time budget (issue 21): torch on "
                                           "cuda in every GPU dtype, TF32 on and off, presets, Keras on jax and "
                                           "torch, timing, tolerances; writes gpu-DEVICE.md/.json and prints a verdict")
    gpu.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                     help="cuda (default): torch on the GPU; cpu: the dry run, every part on small inputs")
    gpu.add_argument("--out", type=_out("directory"), default="reports", help="output directory (default: reports/)")
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
    fig = sub.add_parser("figures", help="the docs' numbers and figures: docs/generated/*.md, docs/figures/*.png")
    fig.add_argument("--out", type=_out("directory"), default="docs", help="the docs directory (default: docs/)")
    fig.add_argument("--quick", action="store_true", help="smaller measurements, in seconds (not for committing)")
    comp = sub.add_parser("compiled", help="compiled forwards (torch.compile, tf.function, XLA) against the "
                                           "reference and eager, and the first module a compiler changes")
    comp.add_argument("preset", help="a preset name (see `tmirror models`)")
    comp.add_argument("--weights", help="a safetensors file or a Hugging Face directory (default: seeded init)")
    comp.add_argument("--batch", type=_positive, default=1)
    comp.add_argument("--seq-len", type=_positive, default=32)
    comp.add_argument("--frameworks", type=_csv(("torch", "tf")), default=["torch", "tf"])
    comp.add_argument("--modes", type=_csv(("inductor", "function", "xla")), default=None,
                      help="compile modes (default: every mode of each framework; torch: inductor; tf: function,xla)")
    comp.add_argument("--modules", default="*", help="glob over module paths compiled alone and compared with "
                                                     "eager (default '*'; 'none': outputs only, one compile each)")
    comp.add_argument("--seed", type=_integer, default=0)
    q8 = sub.add_parser("quantize", help="int8 weights (per-channel symmetric Linear kernels) in every framework "
                                         "against the float64 reference, under the int8_weights row")
    q8.add_argument("preset", help="a preset name (see `tmirror models`)")
    q8.add_argument("--weights", help="a safetensors file or a Hugging Face directory (default: seeded init)")
    q8.add_argument("--batch", type=_positive, default=2)
    q8.add_argument("--seq-len", type=_positive, default=16)
    q8.add_argument("--frameworks", type=_csv(("numpy", "torch", "tf")), default=["numpy", "torch", "tf"])
    q8.add_argument("--onnxruntime", action="store_true", help="also onnxruntime's quantize_dynamic of the torch export")
    q8.add_argument("--out", type=_out("file"), help="also write the int8 weights (safetensors, config inside) here")
    q8.add_argument("--seed", type=_integer, default=0)
    for cmd in sub.choices.values():
        cmd.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                         help="progress bar on stderr: auto (default: when stderr is a terminal), on, off")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])  # the command's own arguments, for records
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as e:  # the project's checks, and the file system's refusals
        print(f"tmirror {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def one_line(e: BaseException) -> str:
    """An error's message on one line: a list of problems (a `WeightsError`'s) joined by '; '."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if isinstance(e, OSError) and not isinstance(e, ValueError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return "; ".join(lines) or type(e).__name__


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


def _run(args, bar: Progress):
    """The runs of `compare` and `report`, `_run_steps(args)` steps of `bar`: the float64 reference, then
    one per framework and dtype, each counted as the next one starts (and the last as it ends)."""
    from conformance.report import runner
    cfg, w, source = runner.resolve(args.preset, args.weights, args.seed)
    inputs = runner.model_inputs(cfg, args.batch, args.seq_len, args.seed)
    bar.step("reference float64", 0)
    reference, reference_trace, runs = runner.run(cfg, w, inputs, args.frameworks, args.dtype,
                                                  progress=bar.step)
    bar.step()
    return cfg, w, source, inputs, reference_trace, runs


def _run_steps(args) -> int:
    return 1 + len(args.frameworks) * len(args.dtype) - (("numpy" in args.frameworks) and ("float64" in args.dtype))


def _cost_figures(section: dict) -> dict[str, str]:
    """The costs section's plots under the titles a report shows them with."""
    from conformance import costs
    titles = {"flops": "FLOPs against sequence length and batch", "memory": "Memory against sequence length and batch"}
    return {titles.get(k, k): png for k, png in costs.plots(section).items()}


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
    train_steps = len(args.dtype) + 3 if args.train else 0  # a step per gradient dtype, training, mixed, memory
    with Progress(_run_steps(args) + 3 + args.onnx + train_steps, "report", args.progress) as bar:
        cfg, w, source, inputs, reference_trace, runs = _run(args, bar)
        env = runner.environment(args.seed, weights.fingerprint(w), source)
        bar.step("costs", 0)
        section = costs.costs(cfg, args.batch, args.seq_len, args.frameworks, weights=w)
        bar.step("figures")
        figures = {**report.figures(cfg, reference_trace),
                   **_cost_figures(section)}
        rec = report.record(args.preset, cfg, w, inputs, env, runs, section)
        if args.onnx:
            from conformance.report import onnx
            bar.step("onnx")
            rec["onnx"] = onnx.onnx_section(cfg, w, inputs, preset=args.preset)
        if args.train:
            from conformance.report import training as train_report
            rec["train"] = train_report.section(args.preset, cfg, w, inputs, args.frameworks, args.dtype,
                                                progress=bar.step)
        bar.step("write")
        paths = report.write(rec, args.out, figures)
        bar.step()
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
    rates = stream.matmul_rates(runs, stream.layer_matmul(cfg, args.batch, args.seq_len))
    with Progress(2 * cfg.num_layers + 2, "embeddings", args.progress) as bar:
        sec = stream.run(p, args.workers, args.cluster, bar.step)
    depth = presets.get(args.preset).num_layers if args.preset in presets.names() else cfg.num_layers
    sec["cost_model"] = stream.cost_model(sec, cfg, args.batch, args.seq_len, rates, depth)
    env = runner.environment(args.seed, stream.fingerprint(source), source.description, args.frameworks)
    env.update(load_average_at_start=load_at_start, load_average_at_end=round(os.getloadavg()[0], 2))
    section = costs.costs(cfg, args.batch, args.seq_len, args.frameworks, measure=False)
    rec = report.stream_record(p, env, section)
    rec["stream"] = sec
    paths = report.write(rec, args.out, _cost_figures(section), name=name)
    first = sec["first_layer_out_of_tolerance"]
    for label in p.labels:
        run = next(r for r in rec["runs"] if f"{r['framework']} {r['dtype']}" == label)
        print(f"{label:>14}: {'pass' if run['passed'] and first['replayed'][label] is None else 'FAIL'}  "
              f"first layer out of tolerance replayed (its own error): {first['replayed'][label]}; chained (the "
              f"error accumulated by that depth): layer {first['chained'][label]}, first op "
              f"{run['first_divergence'] or 'none'}")
    print(f"peak resident set {sec['peak_rss'] / stream.GiB:.2f} GiB, {sec['wall']['total'] / 60:.1f} min")
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0 if stream.passed(sec) and all(r["passed"] for r in rec["runs"]) else 1


def cmd_compare(args) -> int:
    if args.a is not None:
        return _cross_compare(args)
    from tabulate import tabulate
    with Progress(_run_steps(args), "compare", args.progress) as bar:
        _, _, source, _, _, runs = _run(args, bar)
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


def _cross_compare(args) -> int:
    """`tmirror compare PRESET --a X --b Y`: `conformance.compare.crosscheck.compare`, printed."""
    from pathlib import Path

    from conformance.compare import crosscheck
    from conformance.report import runner
    from conformance.spec import registry
    cfg, w, preset = None, None, args.preset
    if "[" in args.preset and args.preset.endswith("]"):  # a registry case: its tiny config
        name, variant = args.preset[:-1].split("[", 1)
        entry = registry.get(name)
        if variant not in entry.variants:
            raise ValueError(f"{name} has variants {list(entry.variants)}; received {args.preset!r}")
        cfg, preset = entry.config(variant), None
    elif args.weights:
        cfg, w, _ = runner.resolve(args.preset, args.weights, args.seed)
    with Progress(1, "compare", args.progress) as bar:
        bar.say(f"tracing {args.a} and {args.b}...")
        bar.step(f"{args.a} and {args.b}", 0)
        report = crosscheck.compare(args.a, args.b, preset=preset, cfg=cfg, weights=w, dtype=args.dtype[0],
                                    batch=args.batch, seq_len=args.seq_len, seed=args.seed, std=args.std)
    report.preset = args.preset
    text = report.markdown(top=args.top)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if report.passed else 1


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
    from conformance.report import matrix, runner
    cases = _cases(args.cases)
    total = len(cases) * len(matrix.columns_of(args.frameworks, args.dtype))
    with Progress(total, "matrix", args.progress) as bar:
        m = matrix.measure(args.frameworks, args.dtype, progress=bar.step, cases=cases)
    env = runner.environment(0, "registry weights", "weights.initialize per case")
    files.write(args.out, matrix.markdown(m, env), "--out")
    failed = [k for k, (_, ok) in m["cells"].items() if not ok]
    print(f"{len(m['cells']) - len(failed)} of {len(m['cells'])} cells pass; wrote {args.out}")
    return 0 if not failed else 1


def cmd_explain(args) -> int:
    from conformance.report import explain
    if args.list or args.component is None:
        import textwrap
        for name, w in explain.walkthroughs().items():
            print(textwrap.fill(w.summary, 100, initial_indent=f"{name:<30} ", subsequent_indent=" " * 31))
        return 0
    text = explain.walkthrough(args.component, variant=args.variant, fmt=args.format)
    if args.out:
        files.write(args.out, text + "\n", "--out")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_export(args) -> int:
    from conformance.backends import keras_export
    keras_export.check_format(args.format, args.quantize)
    if args.format != "onnx" or args.load:
        return _export_artifact(args)
    if args.framework is None:
        raise ValueError("--format onnx needs --framework torch or tf (the mirror to export from); received none")
    import numpy as np

    from conformance.backends import onnx_export
    from conformance.report import runner
    from conformance.backends.build import build
    from conformance.compare.tolerance import compare_outputs
    cfg, w, source = runner.resolve(args.preset, args.weights, args.seed)
    chain = [args.exporter] if args.exporter else list(onnx_export.EXPORTERS[args.framework])
    with Progress(2, "export", args.progress) as bar:
        bar.say(f"exporting {args.preset} from {args.framework} ({' then '.join(chain)}) at opset {args.opset}...")
        bar.step(" then ".join(chain), 0)
        exported = onnx_export.export(cfg, w, args.framework, opset=args.opset, exporter=args.exporter,
                                      preset=args.preset)
        out = args.out or f"{args.preset}-{args.framework}.onnx"
        exported.save(out)
        inputs = onnx_export.example_inputs(cfg, batch=3, length=min(17, cfg.max_positions))
        bar.say("running it in onnxruntime against the float64 reference...")
        bar.step("onnxruntime")
        got = onnx_export.build_from(exported)(**inputs)
        results = compare_outputs("onnx", got, build("numpy", cfg, w, dtype="float64")(**inputs), "float32")
        bar.step()
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


def _export_artifact(args) -> int:
    """`tmirror export --format keras|savedmodel|litert` (and `--load` of any format): the tf_impl twin
    written (or an artifact reloaded), run on batch 3 and up to 17 tokens, and compared under its row."""
    from conformance.backends import keras_export, onnx_export
    from conformance.backends.build import build
    from conformance.compare.tolerance import compare_outputs, sqnr_db
    from conformance.report import runner
    if args.framework not in (None, "tf") and not args.load:
        raise ValueError(f"--format {args.format} writes the Keras twin (tf_impl): --framework must be tf or left out; "
                         f"received --framework {args.framework}")
    if args.exporter:
        raise ValueError(f"--exporter goes with writing --format onnx; received --exporter {args.exporter} with "
                         f"--format {args.format}" + (" --load" if args.load else ""))
    cfg, w, source = runner.resolve(args.preset, args.weights, args.seed)
    inputs = onnx_export.example_inputs(cfg, batch=3, length=min(17, cfg.max_positions))
    row = keras_export.QUANTIZE[args.quantize][1] if args.quantize else "float32"
    path = args.load
    if path is None:
        path = args.out or f"{args.preset}{'-savedmodel' if args.format == 'savedmodel' else ''}" \
                           f"{'-' + args.quantize if args.quantize else ''}{keras_export.SUFFIX[args.format]}"
        what = f"{args.format} {args.quantize}" if args.quantize else args.format
        print(f"writing {args.preset} as {what}...", file=sys.stderr)
        written = keras_export.export(cfg, w, args.format, path, inputs if args.format == "litert" else None,
                                      quantize=args.quantize)
        print(f"wrote {path}: {written.size / 2**20:.2f} MiB in {written.seconds:.1f} s "
              f"({keras_export.FORMATS[args.format]})")
    served = keras_export.load(args.format, path, cfg)
    print(f"running {path} against the float64 reference...", file=sys.stderr)
    got = served(**inputs)
    reference = build("numpy", cfg, w, dtype="float64")(**inputs)
    results = compare_outputs(args.format, got, reference, row)
    print(f"weights: {source}")
    print(f"{args.format} on " + ", ".join(f"{k} {v.shape}" for k, v in inputs.items())
          + f" against the float64 reference, under the {row} row:")
    for c in results:
        key = c.name.split(".", 1)[1]
        sqnr = f", SQNR {sqnr_db(got[key], reference[key]):.1f} dB" if key in got and key in reference else ""
        verdict = "pass" if c.passed else "FAIL" + (f" - {c.detail}" if c.detail else "")
        print(f"  {key}: max abs {c.max_abs:.2e}{sqnr} {verdict}")
    return 0 if results and all(c.passed for c in results) else 1


def cmd_figures(args) -> int:
    from study import figures
    with Progress(None, "figures", args.progress, unit="file") as bar:
        figures.write_all(args.out, quick=args.quick, progress=lambda line: (bar.say(line), bar.step()))
    return 0


def tolerance_frameworks(device: str, given: list | None) -> list:
    """`tmirror tolerances`' frameworks: as given, else every mirror on the CPU and torch alone on cuda (the
    tf mirror runs on the CPU only, and a GPU machine need not have TensorFlow at all)."""
    if given is not None:
        return given
    return ["torch"] if device == "cuda" else ["numpy", "torch", "tf"]


def _cases(globs: str, none_ok=False) -> list:
    """The registry cases whose ids match one of the comma-separated `globs` (--cases)."""
    from conformance.spec.registry import CASES, case_id
    cases = [c for c in CASES if any(fnmatch.fnmatch(case_id(c), g) for g in globs.split(","))]
    if not cases and not none_ok:
        raise ValueError(f"no registry case matches --cases {globs!r}; e.g. {[case_id(c) for c in CASES[:3]]}")
    return cases


def cmd_tolerances(args) -> int:
    from conformance.compare.tolerance import TOLERANCES
    from conformance.suites import measure
    args.frameworks = tolerance_frameworks(args.device, args.frameworks)
    cases = _cases(args.cases, none_ok=bool(args.presets))
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    out = files.file(args.out or f"reports/tolerances{suffix.replace('_', '-')}.md", "--out")
    evidence_path = files.file(args.evidence or f"conformance/compare/tolerance_evidence{suffix}.json", "--evidence")
    with Progress(len(args.regimes) * len(cases) + len(args.presets), "tolerances", args.progress) as bar:
        results = measure.measure(args.dtypes, args.frameworks, args.device, args.regimes, cases,
                                  args.presets, progress=bar.step)
    ev = measure.evidence(results, "tmirror tolerances " + " ".join(args.argv), TOLERANCES)
    if args.merge:
        ev = measure.merge(json.loads(evidence_path.read_text()), ev, TOLERANCES)
    files.write_all({evidence_path: measure.dumps(ev), out: measure.markdown(ev, str(evidence_path))}, "--out")
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
    with Progress(max(1, round(s.budget)), "gpu-check", args.progress, unit="s") as bar:  # the budget's seconds, spent
        rep = gpu.run(s, progress=lambda line: (bar.say(line), bar.at(round(time.perf_counter() - started))),
                      started=started)
    print(rep.line, flush=True)  # the verdict the report holds
    return rep.code


def cmd_compiled(args) -> int:
    """A separate command rather than a report section: compiling every module alone takes minutes
    (inductor on a CPU), where a report is expected in seconds."""
    from tabulate import tabulate

    from conformance.compare import compiled
    from conformance.report import runner
    cfg, w, _ = runner.resolve(args.preset, args.weights, args.seed)
    inputs = runner.model_inputs(cfg, args.batch, args.seq_len, args.seed)
    pairs = compiled.modes_of(args.frameworks, args.modes)
    with Progress(len(pairs), "compiled", args.progress) as bar:
        started = []

        def progress(label):  # a new (framework, mode) starts with its whole compile
            if label.endswith("compiling the whole forward"):
                bar.step(label, 1 if started else 0)
                started.append(label)
            else:
                bar.step(label, 0)
        runs = compiled.compiled_runs(cfg, w, inputs, pairs, None if args.modules == "none" else args.modules,
                                      progress)
    print(tabulate(compiled.summary_rows(runs), compiled.HEADERS, tablefmt="github", disable_numparse=True))
    return 0 if all(r.passed for r in runs) else 1


def cmd_quantize(args) -> int:
    from tabulate import tabulate

    from conformance import weights
    from conformance.compare import int8
    from conformance.report import runner
    cfg, w, _ = runner.resolve(args.preset, args.weights, args.seed)
    inputs = runner.model_inputs(cfg, args.batch, args.seq_len, args.seed)
    with Progress(1, "quantize", args.progress) as bar:
        bar.step("int8 models against the float64 reference", 0)
        m = int8.measure(cfg, w, inputs, args.frameworks, args.onnxruntime)
        bar.step()
    print(tabulate(int8.rows(m), int8.HEADERS, tablefmt="github", disable_numparse=True))
    print("\n".join(int8.notes(m)))
    if args.out:
        cfg8, w8 = weights.quantize_int8(cfg, w)
        weights.save(w8, args.out, cfg8)
        print(f"wrote {args.out}")
    return 0 if m.passed() else 1


COMMANDS = {"export": cmd_export, "explain": cmd_explain, "figures": cmd_figures, "matrix": cmd_matrix,
            "models": cmd_models, "report": cmd_report, "compare": cmd_compare, "trace": cmd_trace,
            "tolerances": cmd_tolerances, "gpu-check": cmd_gpu_check, "compiled": cmd_compiled,
            "quantize": cmd_quantize}

if __name__ == "__main__":
    sys.exit(main())
