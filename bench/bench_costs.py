"""Parameters, FLOPs, memory and speed, measured beside the analytic figures (`conformance.costs`).

For each preset: every parameter count (config, declaration, each framework, transformers),
FlopCounterMode and TensorFlow's profiler against the analytic matmul FLOPs, the transformers
sdpa under-count, measured memory peaks against the analytic ones, and forward time as GFLOP/s
and as a fraction of the machine's matmul peak measured in the same run. Prints a summary and
writes it, with each preset's full section, to bench/results/costs.md.

    python bench/bench_costs.py [--presets bert-base,gpt2] [--batch 1] [--seq-len 128] [--repeats 3] [--threads N]

--threads N sets every framework's thread count (OpenMP / OpenBLAS / torch / TensorFlow) before
they load. On a machine other jobs share, OpenMP threads that spin-wait for a busy core make a
2-thread forward many times slower than a 1-thread one; the matmul peak is measured at the same N.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.core import files  # noqa: E402

FRAMEWORKS = ("numpy", "torch", "tf")


def summary_rows(name, rec):
    f, m, s = rec["flops"], rec["memory"]["measured"], rec["speed"]
    mm, measured = f["totals"]["matmul"], f["measured"]
    hf = measured.get("transformers")
    ratio = lambda a, b: f"{a / b:.3f}" if a is not None and b else "n/a"  # noqa: E731
    rows = [("parameters: all counts and breakdowns agree", f"{rec['parameters']['analytic']['total']:,}",
             "yes" if rec["parameters"]["agree"] else "NO"),
            ("matmul FLOPs, analytic", f"{mm:,}", ""),
            ("matmul FLOPs, FlopCounterMode on torch_impl", f"{measured['torch']['total']:,}",
             ratio(measured["torch"]["total"], mm)),
            ("matmul FLOPs, TF profiler on tf_impl", f"{measured['tf']['matmul']:,}",
             ratio(measured["tf"]["matmul"], mm)),
            ("TF profiler: op types with no formula", ", ".join(measured["tf"]["missed_elements"]), "")]
    if hf:
        rows.append((f"transformers {hf['model']} sdpa under-count (FlopCounterMode)", f"{hf['missed_by_sdpa']:,}",
                     f"= analytic attention {hf['analytic_attention_matmul']:,}: "
                     f"{hf['missed_by_sdpa'] == hf['analytic_attention_matmul']}"))
    rows += [("torch allocator peak / analytic", f"{m['torch']['allocator_peak'] / 2**20:.2f} MiB",
              ratio(m["torch"]["allocator_peak"], m["torch"]["analytic_inference_peak"])),
             ("numpy tracemalloc peak / analytic", f"{m['numpy']['tracemalloc_peak'] / 2**20:.2f} MiB",
              ratio(m["numpy"]["tracemalloc_peak"], m["numpy"]["analytic_inference_peak"]))]
    rows += [(f"{fw} peak RSS increase (first forward) / analytic", f"{m[fw]['rss_peak'] / 2**20:.2f} MiB",
              ratio(m[fw]["rss_peak"], m[fw]["analytic_inference_peak"])) for fw in FRAMEWORKS if fw in m]
    if "torch_training" in m:
        tr = m["torch_training"]
        rows += [("torch training: bytes saved for backward / analytic", f"{tr['saved_for_backward'] / 2**20:.2f} MiB",
                  ratio(tr["saved_for_backward"], tr["analytic_saved_for_backward"])),
                 ("torch after one AdamW step: bytes / parameter", f"{sum(tr['state_per_parameter'].values()):.2f}",
                  "analytic 16")]
    for fw, r in s["forward"].items():
        rows.append((f"{fw} forward", f"{1e3 * r['seconds']:.1f} ms, {r['gflops']:.1f} GFLOP/s",
                     f"{100 * r['fraction_of_peak']:.1f}% of machine matmul peak "
                     f"({100 * r['fraction_of_own_matmul_peak']:.1f}% of {fw}'s own)"))
    return [(name, *row) for row in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="bert-base,gpt2")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="threads for every framework (default: each framework's own)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "costs.md"))
    args = p.parse_args(argv)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import tensorflow as tf
    import torch
    from tabulate import tabulate

    from conformance import costs
    from conformance.spec import presets
    if args.threads:
        torch.set_num_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    load = os.getloadavg()
    sections, rows = [], []
    for name in args.presets.split(","):
        print(f"{name} ...", file=sys.stderr)
        rec = costs.costs(presets.get(name), args.batch, args.seq_len, FRAMEWORKS, repeats=args.repeats)
        rows += summary_rows(name, rec)
        sections += [f"# {name}", "", costs.markdown(rec), ""]
    peak = rec["speed"]["matmul_peak_gflops"]
    env = (f"{datetime.date.today()}, {platform.platform()}, {os.cpu_count()} CPUs, load average "
           f"{load[0]:.1f} before and {os.getloadavg()[0]:.1f} after (other jobs share this machine: times are "
           f"noisy, fractions of the peak measured in the same run less so); numpy matmul peak {peak['numpy']:.1f}, "
           f"torch {peak['torch']:.1f}, tf {peak['tf']:.1f} GFLOP/s; threads: "
           f"{args.threads or 'framework defaults'} (torch {torch.get_num_threads()}); "
           f"torch {torch.__version__}, tensorflow {tf.__version__}.")
    table = tabulate(rows, ["preset", "what", "value", "check / ratio"], tablefmt="github", disable_numparse=True)
    report = "\n".join([f"# Costs: analytic against measured (batch {args.batch}, sequence {args.seq_len})", "",
                        env, "", table, "", *sections])
    files.write(args.out, report, "--out")
    print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
