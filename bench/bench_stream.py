"""Streamed runs against their targets: peak memory, total time, per-layer time against the FLOP
bound, and the replay phase fanned out over local Dask workers (`conformance.report.stream`).

    python bench/bench_stream.py [--preset llama3-8b] [--seq-len 32] [--layers N] [--frameworks torch,tf]
                                 [--out bench/results/stream.md] [--workers 1,2]
    python bench/bench_stream.py --whole bert-base,qwen2.5-0.5b    # whole model against streamed, measured

It runs (or, with the same arguments, resumes: `tmirror report --stream` keeps every finished part)
the streamed report of the preset into reports/, then times the replay phase again on each worker
count, reusing the recorded chain: the replay results are set aside and redone on a fresh
LocalCluster of N worker processes, each with cpu_count / N threads. Targets (from issue 17):

    peak memory     <= 1.5 x the largest layer's weights in every framework + its activations
    total time      <= 20 minutes for llama3-8b at batch 1, sequence 32, on 2 cores
    per-layer time  <= 1.3 x the layer's FLOP bound at the framework's measured matmul rate
    fan-out         replay phase on 2 workers <= 0.6 x on 1 worker

The machine is shared: the load average before and after each measurement is recorded beside it.

`--whole PRESETS` measures, for models that fit, the whole-model report (`tmirror report PRESET`) and the
streamed one (`--stream`) of the same preset, inputs and frameworks, each in a fresh process: the peak resident
set of that process from the kernel (`wait4`'s ru_maxrss: the interpreter, the libraries and the run), and the
wall time. It writes bench/results/stream-whole.md and .json (the docs' table reads the .json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GiB = float(1 << 30)


def report(preset, seq_len, layers, frameworks, out):
    """Run (or resume) `tmirror report PRESET --stream` and return its record and state directory."""
    args = [sys.executable, "-m", "conformance", "report", preset, "--stream", "--batch", "1", "--seq-len",
            str(seq_len), "--frameworks", frameworks, "--out", str(out)] + (["--layers", str(layers)] if layers else [])
    subprocess.run(args, cwd=ROOT, check=False)
    name = f"{preset}-{layers}layers-stream" if layers else f"{preset}-stream"
    rec = json.loads((out / f"{name}.json").read_text())
    states = sorted((out / ".stream").glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
    return rec, states[-1]


def replay_seconds(preset, seq_len, layers, frameworks, state, workers, scratch):
    """The replay phase alone on `workers` local workers: a copy of the run's state without its replays, resumed
    in a scratch directory, so only the replay jobs run; the committed report is left as it is."""
    out = scratch / f"{workers}-workers"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(state, out / ".stream" / state.name, ignore=shutil.ignore_patterns("replay-*.json"))
    load = os.getloadavg()[0]
    args = [sys.executable, "-m", "conformance", "report", preset, "--stream", "--batch", "1", "--seq-len",
            str(seq_len), "--frameworks", frameworks, "--out", str(out), "--workers", str(workers)]
    args += ["--layers", str(layers)] if layers else []
    subprocess.run(args, cwd=ROOT, check=False)
    name = f"{preset}-{layers}layers-stream" if layers else f"{preset}-stream"
    rec = json.loads((out / f"{name}.json").read_text())
    fan = rec["stream"]["fanout"]
    return {"workers": workers, "replay_seconds": fan["replay_seconds"], "jobs": fan["jobs"],
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "workers_seen": sorted({r["replay_worker"] for r in rec["stream"]["layers"]}),
            "replay_peak_rss": rec["stream"]["replay_peak_rss"],
            "replayed_equal": [r["replayed"] for r in rec["stream"]["layers"]]}


def child(args, out) -> dict:
    """`python -m conformance ARGS --out OUT` in a fresh process: its peak resident bytes (the kernel's, over
    the whole process) and wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "conformance", *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"peak_rss": usage.ru_maxrss * 1024, "seconds": time.perf_counter() - t0, "returncode": proc.returncode}


def whole_vs_streamed(preset, seq_len, frameworks, scratch) -> dict:
    """The same report whole and streamed, each in its own process, measured by the kernel."""
    common = ["report", preset, "--batch", "1", "--seq-len", str(seq_len), "--frameworks", frameworks]
    out = scratch / "whole-vs-streamed" / preset
    shutil.rmtree(out, ignore_errors=True)  # a streamed run resumes: start it from nothing
    load = os.getloadavg()[0]
    whole = child(common, out / "whole")
    streamed = child(common + ["--stream"], out / "streamed")
    rec = json.loads((out / "streamed" / f"{preset}-stream.json").read_text())
    s = rec["stream"]
    return {"preset": preset, "parameters": s["estimate"]["parameters"], "seq_len": seq_len, "frameworks": frameworks,
            "whole": whole, "streamed": streamed, "streamed_in_process_peak": s["peak_rss"],
            "streamed_baseline": s["baseline_rss"], "whole_estimate": s["estimate"]["whole"],
            "streamed_passed": all(r["passed"] for r in rec["runs"]),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def whole_markdown(rows) -> str:
    lines = ["# Whole model against streamed: peak memory, measured", "",
             f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores. "
             "`python bench/bench_stream.py --whole " + ",".join(r["preset"] for r in rows) + "`: the same report "
             "(batch 1, the same inputs and frameworks, float64 reference) run whole and `--stream`, each in a fresh "
             "process; peak resident set of that process from the kernel (ru_maxrss), so both include the interpreter "
             "and the libraries (about 0.8 GiB with NumPy, torch and TensorFlow imported, as the streamed runs measure it before they start).", "",
             "| preset | parameters | frameworks | whole: peak RSS GiB | streamed: peak RSS GiB | streamed / whole | "
             "whole s | streamed s | load before, after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w, s = r["whole"], r["streamed"]
        lines.append(f"| {r['preset']} | {r['parameters']:,} | {r['frameworks']} | {w['peak_rss'] / GiB:.2f} | "
                     f"{s['peak_rss'] / GiB:.2f} | {s['peak_rss'] / w['peak_rss']:.2f} | {w['seconds']:.0f} | "
                     f"{s['seconds']:.0f} | {r['load_before']}, {r['load_after']} |")
    return "\n".join(lines) + "\n"


def markdown(rec, fan, args) -> str:
    s, env = rec["stream"], rec["environment"]
    cm = s["cost_model"]
    bound = s["memory_bound"]
    rows = [("peak resident set over the one before the run (interpreter, libraries) / bound",
             f"{s['peak_over_baseline'] / GiB:.2f} GiB / {bound / GiB:.2f} GiB",
             ("met" if s["peak_over_baseline"] <= bound else "NOT met") + f" (policy {s['policy']})"),
            ("peak resident set of the process", f"{s['peak_rss'] / GiB:.2f} GiB", ""),
            ("whole-model estimate, for comparison", f"{s['estimate']['whole'] / GiB:.1f} GiB", ""),
            ("total wall time", f"{s['wall']['total'] / 60:.1f} min",
             ("met" if s["wall"]["total"] <= 20 * 60 else "NOT met") + " (target 20 min)")]
    for label, v in cm["per_framework"].items():
        rows.append((f"{label} forward / FLOP bound (median layer)", f"{v['forward_over_bound']:.2f}",
                     "met" if v["forward_over_bound"] <= 1.3 else "NOT met"))
    lines = [f"# Streamed runs: {rec['preset']}", "",
             f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores. "
             f"`python bench/bench_stream.py --preset {args.preset} --seq-len {args.seq_len}"
             + (f" --layers {args.layers}" if args.layers else "") + f" --frameworks {args.frameworks}`. "
             f"The report: `reports/{Path(args.name).name}.md`. Load average at the report's start and end: "
             f"{env.get('load_average_at_start')}, {env.get('load_average_at_end')} (the machine is shared).", "",
             "| target | measured | |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if fan:
        one = next((f for f in fan if f["workers"] == 1), None)
        lines += ["", "## Fan-out of the replay phase", "",
                  f"{s['layers'] and len(s['layers'])} replay jobs (one per layer) on a fresh LocalCluster, the "
                  "frameworks imported on every worker before the clock starts.", "",
                  "| workers | threads each | replay phase s | x one worker | load before, after | workers seen | "
                  "peak RSS of a job GiB | bit-identical to in-process |", "|---|---|---|---|---|---|---|---|"]
        for f in fan:
            ratio = f["replay_seconds"] / one["replay_seconds"] if one else float("nan")
            lines.append(f"| {f['workers']} | {max(1, os.cpu_count() // f['workers'])} | {f['replay_seconds']:.1f} | "
                         f"{ratio:.2f} | {f['load_before']}, {f['load_after']} | {len(f['workers_seen'])} | "
                         f"{f['replay_peak_rss'] / GiB:.2f} | {f['same_numbers_as_in_process']} |")
        lines += ["", "A worker of one thread sums a matmul in another order than a process of two, so its errors "
                  "can differ from the in-process ones in their last digits; whether every layer passes does not "
                  "(the report's first layer out of tolerance, replayed, is the same)."]
    lines += ["", "## Per-layer time against the FLOP bound", "",
              f"One layer: {cm['layer_flops'] / 1e9:.2f} GFLOP at batch 1, sequence {args.seq_len}.", "",
              "| framework | matmul GFLOP/s (the layer's widest matmul) | FLOP bound s | forward s (untraced) | ratio | load s |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['gflops_rate']:.1f} | {v['flop_bound_seconds']:.3f} | {v['forward_seconds']:.3f} | "
              f"{v['forward_over_bound']:.2f} | {v['load_seconds']:.2f} |" for k, v in cm["per_framework"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="llama3-8b")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--frameworks", default="torch,tf")
    p.add_argument("--workers", default="1,2", help="worker counts to time the replay phase on ('' for none)")
    p.add_argument("--reports", default=str(ROOT / "reports"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream.md"))
    p.add_argument("--scratch", default="/tmp/bench-stream", help="where the fan-out runs resume copies of the state")
    p.add_argument("--whole", default=None, help="presets to measure whole against streamed (comma-separated)")
    args = p.parse_args(argv)
    if args.whole:
        rows = [whole_vs_streamed(preset, args.seq_len, args.frameworks, Path(args.scratch))
                for preset in args.whole.split(",")]
        results = ROOT / "bench" / "results"
        (results / "stream-whole.json").write_text(json.dumps(rows, indent=1) + "\n")
        (results / "stream-whole.md").write_text(whole_markdown(rows))
        print(whole_markdown(rows))
        return
    out = Path(args.reports)
    rec, state = report(args.preset, args.seq_len, args.layers, args.frameworks, out)
    args.name = f"{args.preset}-{args.layers}layers-stream" if args.layers else f"{args.preset}-stream"
    scratch = Path(args.scratch)
    fan = [replay_seconds(args.preset, args.seq_len, args.layers, args.frameworks, state, int(n), scratch)
           for n in args.workers.split(",") if n.strip()]
    here = [r["replayed"] for r in rec["stream"]["layers"]]
    for f in fan:  # the same numbers wherever the jobs ran
        f["same_numbers_as_in_process"] = f.pop("replayed_equal") == here
    text = markdown(rec, fan, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
