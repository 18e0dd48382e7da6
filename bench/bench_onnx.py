"""onnxruntime against eager PyTorch: BERT-base, batch 1 and 8, sequence 128, float32 CPU, one run.

    python bench/bench_onnx.py                  # ~8 min on 2 cores (two exports of bert-base included)
    python bench/bench_onnx.py --threads 1 --batches 1 --runs 3 --out FILE.md

Contenders, all on the same canonical weights (`weights.initialize(presets.get("bert-base"))`):
- onnxruntime running the graph exported from torch_impl (`onnx_export.export(..., "torch")`:
  torch.onnx with torch.export, TorchScript as the fallback) and from tf_impl (tf2onnx);
- onnxruntime running the torch_impl graph after onnxruntime's own transformer fusions
  (`onnxruntime.transformers.optimizer`, model_type="bert", the Python fusion passes);
- for scale only, the same graph with int8 weights (`onnxruntime.quantization.quantize_dynamic`):
  it changes the numbers (its max abs diff is in the table), so it is not a conformant contender;
- torch_impl eager (`torch.inference_mode`), and transformers' BertModel eager, with its
  "eager" and "sdpa" attention (the weights through `weights.to_hf`).

Each thread count (`--threads`, default 1 and 2) gives onnxruntime as many intra-op threads as
torch (`torch.set_num_threads`). One thread is the clean comparison on a shared machine; with two,
another process on either core stalls torch's OpenMP barriers far more than onnxruntime's thread
pool (torch's times turn bimodal), so that table says as much about the load as about the code.
Each (threads, batch) group is timed interleaved (one call of each contender per round), so load
falls on all of them alike; the tables give the median and the minimum of the rounds after a
warm-up call, with ratios to torch_impl eager on medians and on minima, and every contender's last
hidden state is checked against torch_impl's. GFLOP/s is analytic matmul FLOPs
(bench_models.matmul_flops) / minimum time, next to torch's 2048 x 2048 float32 matmul at the
same thread count. Target: onnxruntime <= 0.6x torch_impl eager. The report also carries the ONNX
section of `tmirror report` (`onnx_export.onnx_section`) for the preset.

Memory: tf2onnx's freezing step peaks near 20x the weights (~10 GiB for bert-base); the bench
stops itself past `--max-rss-gib` rather than push a shared machine into the OOM killer.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from bench.bench_models import matmul_flops  # noqa: E402
from conformance.backends import onnx_export  # noqa: E402
from conformance.core import files as files_lib  # noqa: E402
from conformance.report import onnx as onnx_report  # noqa: E402
from conformance.spec import presets
from conformance import weights

SEQ = 128
BATCHES = (1, 8)
BASELINE = "torch_impl (eager)"
INT8 = "onnxruntime int8 weights (torch export; for scale, not conformant)"
TARGET = 0.6


def guard_memory(limit_gib: float):
    """Exit with a clear line if this process's resident set passes `limit_gib` (a shared machine:
    tf2onnx's freezing step peaks near 20x the weights, ~9.5 GiB for bert-base)."""
    import threading

    def watch():
        while True:
            rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
            if rss > limit_gib:
                os.write(2, f"bench_onnx: resident memory {rss:.1f} GiB passed --max-rss-gib {limit_gib}; "
                            "stopping\n".encode())
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def inputs_for(cfg, batch):
    ids = np.random.default_rng(batch).integers(0, cfg.vocab_size, (batch, SEQ))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(calls: dict, warmup: int, runs: int, progress) -> dict:
    for name, fn in calls.items():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for r in range(runs):
        for name, fn in calls.items():
            times[name].append(timed(fn))
        progress(f"  round {r + 1}/{runs}")
    return times


def session(model_bytes: bytes, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def fused(model: bytes, cfg) -> tuple[bytes | None, str]:
    """The graph after onnxruntime's transformer fusions (the Python passes, opt_level=0: level 1
    first builds an onnxruntime session that cannot read the export's constants), and which applied."""
    from onnxruntime.transformers import optimizer
    try:
        with onnx_export._quiet():
            m = optimizer.optimize_model(onnx.load_from_string(model), model_type="bert", num_heads=cfg.num_heads,
                                         hidden_size=cfg.d_model, opt_level=0)
        stats = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
        return m.model.SerializeToString(), ", ".join(f"{k} x{v}" for k, v in stats.items()) or "none"
    except Exception as e:  # a bonus row: its failure is reported, not raised
        return None, f"failed: {onnx_export._one_line(e)}"


def quantized(model: bytes, workdir: str) -> tuple[bytes | None, str]:
    """int8 weights, dynamic activation quantization: for scale, not conformance."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, dst = os.path.join(workdir, "f32.onnx"), os.path.join(workdir, "int8.onnx")
    try:
        Path(src).write_bytes(model)
        with onnx_export._quiet():
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return Path(dst).read_bytes(), "quantize_dynamic(weight_type=QInt8)"
    except Exception as e:
        return None, f"failed: {onnx_export._one_line(e)}"


def torch_matmul_peak(runs=5) -> float:
    import torch
    a = torch.randn(2048, 2048)
    a @ a
    return 2 * 2048**3 / min(timed(lambda: a @ a) for _ in range(runs)) / 1e9


def environment() -> dict:
    import onnxruntime
    import tensorflow as tf
    import tf2onnx
    import torch
    import transformers
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "load average at start (1 min)": f"{os.getloadavg()[0]:.1f}"}


def table(rows, headers) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def export_child(args) -> int:
    """In a child process (tf2onnx's freezing peak stays there): both exports, written to
    `args.export_child` with notes.json, and the ONNX report section as section.md."""
    cfg = presets.get(args.preset)
    w = weights.initialize(cfg)
    onnx_export.CACHE_LIMIT_BYTES = 2**31  # the section below reuses both exports
    notes, files = [], {}
    for source in onnx_export.SOURCES:
        try:
            e = onnx_export.export(cfg, w, source, preset=args.preset)
        except onnx_export.ExportError as err:
            notes.append(f"{source}: FAILED: {err}")
            continue
        notes.append(f"{source}: {e.metadata['exporter']}, {e.seconds:.0f} s, {e.size / 2**20:.0f} MiB, "
                     f"{len(e.proto.graph.node)} ops" + (f"; fallback: {e.fallback}" if e.fallback else ""))
        files[source] = (f"onnxruntime ({source} export: {e.exporter})", f"{source}.onnx")
        e.save(Path(args.export_child) / f"{source}.onnx")
    section = onnx_report.onnx_section(cfg, w, inputs_for(cfg, 1), preset=args.preset, repeats=3)
    out = Path(args.export_child)
    (out / "section.md").write_text(onnx_report.markdown(section))
    (out / "notes.json").write_text(json.dumps({"notes": notes, "files": files}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bert-base")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (torch = onnxruntime)")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds (default 6 at batch 1, 3 above)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/onnx.md"))
    parser.add_argument("--max-rss-gib", type=float, default=14.0, help="stop if a process grows past this")
    parser.add_argument("--export-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    guard_memory(args.max_rss_gib)
    if args.export_child:
        return export_child(args)
    import torch
    import transformers

    from conformance.backends.build import build
    start = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    env = environment()
    cfg = presets.get(args.preset)
    w = weights.initialize(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        progress(f"exporting {args.preset} from torch and tf, and the ONNX report section (a child process)")
        child = subprocess.run([sys.executable, __file__, "--export-child", tmp, "--preset", args.preset,
                                "--max-rss-gib", str(args.max_rss_gib)], stderr=subprocess.PIPE, text=True)
        if child.returncode:
            print(f"bench_onnx: the export step failed (exit {child.returncode}): "
                  f"{(child.stderr.strip().splitlines() or [''])[-1]}", file=sys.stderr)
            return 1
        record = json.loads((Path(tmp) / "notes.json").read_text())
        notes, section_md = record["notes"], (Path(tmp) / "section.md").read_text()
        graphs = {name: (Path(tmp) / file).read_bytes() for name, file in record["files"].values()}
        if "torch" in record["files"]:
            progress("onnxruntime transformer fusions, int8 quantization")
            torch_graph = graphs[record["files"]["torch"][0]]
            model, applied = fused(torch_graph, cfg)
            notes.append(f"onnxruntime.transformers fusions on the torch export: {applied}")
            if model is not None:
                graphs["onnxruntime (torch export + ORT fusions)"] = model
            model, how = quantized(torch_graph, tmp)
            notes.append(f"int8 row: {how}")
            if model is not None:
                graphs[INT8] = model
        torch_model = build("torch", cfg, w, dtype="float32").module.eval()
        weights.to_hf(cfg, w, Path(tmp) / "hf")
        hf = {attn: transformers.BertModel.from_pretrained(Path(tmp) / "hf", attn_implementation=attn).eval()
              for attn in ("eager", "sdpa")}
    del w

    groups, peaks = {}, {}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        peaks[threads] = torch_matmul_peak()
        contenders = {name: session(model, threads) for name, model in graphs.items()}
        for batch in [int(b) for b in args.batches.split(",")]:
            inputs = inputs_for(cfg, batch)
            tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

            def torch_call(model):
                def call():
                    with torch.inference_mode():
                        out = model(**tensors)
                    return (out["last_hidden_state"] if isinstance(out, dict) else out.last_hidden_state).numpy()
                return call

            calls = {BASELINE: torch_call(torch_model),
                     **{f"transformers BertModel ({attn})": torch_call(m) for attn, m in hf.items()},
                     **{name: (lambda s=s: s.run(["last_hidden_state"], inputs)[0]) for name, s in contenders.items()}}
            reference = calls[BASELINE]()
            diffs = {name: float(np.abs(fn() - reference).max()) for name, fn in calls.items()}
            runs = args.runs or (6 if batch == 1 else 3)
            progress(f"{threads} thread(s), batch {batch}: {runs} interleaved rounds")
            groups[threads, batch] = (interleaved(calls, 1, runs, progress), diffs)
            del calls
        del contenders
        gc.collect()

    elapsed = time.perf_counter() - start
    text = report(args, env, notes, peaks, groups, section_md, cfg, elapsed)
    files_lib.write(args.out, text, "--out")
    print(text)
    progress(f"wrote {args.out}")
    return 0


def report(args, env, notes, peaks, groups, section_md, cfg, elapsed) -> str:
    lines = [f"# onnxruntime against eager PyTorch: {args.preset}", "",
             f"Generated by `python bench/bench_onnx.py` in {elapsed / 60:.1f} min. Inference, float32, CPU, sequence "
             f"{SEQ}, no padding; median and minimum of interleaved rounds after one warm-up call. The `x torch_impl` "
             f"columns divide medians by medians and minima by minima (target <= {TARGET}x for onnxruntime). One "
             "thread is the clean comparison on a shared machine: with two, a process on either core stalls torch's "
             "OpenMP barriers (its times turn bimodal) much more than onnxruntime's pool. GFLOP/s: analytic matmul "
             "FLOPs / minimum time. max abs diff: last hidden state against torch_impl's.", "",
             table({**env, **{f"torch 2048^2 float32 matmul, {t} thread(s)": f"{p:.1f} GFLOP/s"
                              for t, p in peaks.items()}}.items(), ["", ""]), "",
             "Exports: " + "; ".join(notes), ""]
    summary = []
    for (threads, batch), (times, diffs) in groups.items():
        med = {k: float(np.median(v)) for k, v in times.items()}
        low = {k: float(min(v)) for k, v in times.items()}
        flops = matmul_flops(cfg, batch, SEQ)
        rows = [(name, f"{1e3 * med[name]:.1f}", f"{1e3 * low[name]:.1f}", f"{med[name] / med[BASELINE]:.2f}",
                 f"{low[name] / low[BASELINE]:.2f}", f"{flops / low[name] / 1e9:.1f}", f"{diffs[name]:.1e}")
                for name in med]
        lines += [f"## {threads} thread(s), batch {batch} x {SEQ} ({flops / 1e9:.1f} GFLOP of matmuls)", "",
                  table(rows, ["contender", "median ms", "min ms", "x torch_impl (medians)", "x torch_impl (minima)",
                               "GFLOP/s", "max abs diff"]), ""]
        conformant = [k for k in med if k.startswith("onnxruntime") and k != INT8]
        best = min(conformant, key=low.get, default=None)
        if best:
            r_med, r_min = med[best] / med[BASELINE], low[best] / low[BASELINE]
            verdict = "meets" if max(r_med, r_min) <= TARGET else "misses"
            summary.append(f"{threads} thread(s), batch {batch}: best float32 onnxruntime ({best}) {r_med:.2f}x "
                           f"torch_impl eager on medians, {r_min:.2f}x on minima ({verdict} the {TARGET}x target); "
                           f"torch_impl {flops / low[BASELINE] / 1e9:.0f} GFLOP/s, onnxruntime "
                           f"{flops / low[best] / 1e9:.0f} GFLOP/s, matmul {peaks[threads]:.0f} GFLOP/s"
                           + (f"; int8 {low[INT8] / low[BASELINE]:.2f}x on minima" if INT8 in low else ""))
    lines += ["## Summary", "", *[f"- {s}" for s in summary], "",
              section_md.replace("## ONNX", "## ONNX report section (batch 1)", 1)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
