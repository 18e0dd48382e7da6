"""Tiled (flash) attention against the reference attention: torch_impl, float32, CPU, one head group.

    python bench/bench_tiled_attention.py                       # T = 4,096 and 16,384 (~10 min on 2 busy cores)
    python bench/bench_tiled_attention.py --lengths 1024 --runs 2 --out /tmp/t.md   # a quick look

Contenders, on the same q, k, v (B = 1, H heads of Dh = 64, no mask: an encoder's full attention):
- reference: `torch_impl.attention.scaled_dot_product_attention`, q k^T -> softmax -> probs v, which
  holds (B, H, T, S) scores and probabilities;
- tiled: `torch_impl.tiled_attention.tiled_context` with `--block-q` x `--block-k` tiles, which holds
  one tile of scores a head and the (B, H, T) running statistics.
A forward+backward row (`--backward-lengths`) times both under autograd (the tiled one through its
`TiledAttention` Function, whose backward recomputes the tiles); the reference's training memory at
16,384 (scores, probabilities and their gradients, ~4 of them) does not fit a shared 23 GB machine,
so by default that row is at 4,096 only.

Memory: each (contender, T, pass) runs in a fresh subprocess, so one contender's freed memory or cached
allocator blocks never count against the next. There the inputs are built and the contender runs once
(warm-up, and the check against the reference), then the kernel's peak-RSS counter is reset (writing 5 to
/proc/self/clear_refs resets VmHWM) and the baseline taken (VmRSS); the peak reported is VmHWM - baseline
over one more call, after the timed ones: every byte the call made resident, whatever allocated it.
For that call glibc is set (`mallopt`) to map every block of 64 KiB or more (every tile, every score
matrix) on allocation and unmap it on free, and its heap is trimmed first, so RSS follows the live
bytes: glibc's default threshold rises after a free and keeps freed blocks resident for reuse, which
after the warm-up would hide the tiles a call allocates (a first run measured so reported 5.4 MiB for
tiled at 16,384, under its 8 MiB output). The timed calls run with glibc's defaults, as a user's do:
mapping every tile afresh costs page faults (1.1 to 1.6x slower tiled in a run measured that way).
tracemalloc would not see torch's allocations, and the torch profiler's memory counts only tensors.
Time: the median of `--runs` calls in that process (`time.perf_counter`), the minimum beside it, on
`--threads` torch threads (default 1: the machine's 2 cores are shared, and with 2 threads under load
each op waits for both to be scheduled, a cost per op that falls on the tiled loop's many small ops and
not on the reference's few large ones; one thread measures the work, the same for both).
Exactness: the tiled child compares its first 256 output rows with the reference attention of those
256 queries against all keys (the whole reference would cost the memory being saved).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def rss_kib(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(spec: dict) -> dict:
    """Run one contender in this (fresh) process; return its timings, peak bytes and exactness check."""
    import torch

    torch.set_num_threads(spec["threads"])
    from conformance.core.config import Config
    from torch_impl.attention import scaled_dot_product_attention
    from torch_impl.tiled_attention import tiled_context
    T, H, Dh = spec["T"], spec["heads"], 64
    cfg = Config(kind="scaled_dot_product_attention", d_model=H * Dh, num_heads=H, attention_impl="tiled",
                 attention_block_q=spec["block_q"], attention_block_k=spec["block_k"])
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, T, Dh, generator=gen) for _ in range(3))  # (B, H, T, Dh)
    reference = lambda q, k, v: scaled_dot_product_attention(q, k, v, None, cfg, lambda n, x: x)  # noqa: E731
    run = {"reference": reference, "tiled": lambda q, k, v: tiled_context(q, k, v, None, cfg)}[spec["impl"]]
    if spec["backward"]:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        cotangent = torch.randn(1, H, T, Dh, generator=gen)

        def call():
            q.grad = k.grad = v.grad = None  # before peak_bytes' baseline too: the last call's are freed first
            run(q, k, v).backward(cotangent)
            return q.grad
    else:
        def call():
            with torch.inference_mode():
                return run(q, k, v)
    out = call()
    check = None
    if spec["impl"] == "tiled" and not spec["backward"]:
        with torch.inference_mode():
            rows = reference(q[:, :, :256], k, v)                    # (B, H, 256, Dh)
        check = float((out[:, :, :256] - rows).abs().max())
    del out
    times = []
    for _ in range(spec["runs"]):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    q.grad = k.grad = v.grad = None
    return {**spec, "median_s": statistics.median(times), "min_s": min(times), "peak_bytes": peak_bytes(call),
            "max_abs_vs_reference": check}


def peak_bytes(call) -> int:
    """Resident bytes one `call()` adds over what is resident before it (VmHWM - VmRSS), with glibc made
    to unmap every freed block of 64 KiB or more and to trim its heap, so RSS follows the live bytes."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 0)
    libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base = rss_kib("VmRSS")
    call()
    return (rss_kib("VmHWM") - base) * 1024


def measure(spec: dict, timeout: float) -> dict:
    """`child(spec)` in a fresh interpreter; an error or a timeout becomes the row's note."""
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode:
        return {**spec, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n) -> str:
    return f"{n / 2 ** 20:,.1f}"


def report(rows: list[dict], args) -> str:
    """The markdown table: each tiled row beside the reference at the same (T, pass), as ratios."""
    lines = ["# Tiled (flash) attention against the reference, torch_impl, float32 CPU", "",
             f"`python bench/bench_tiled_attention.py {' '.join(sys.argv[1:])}`".replace(" `", "`"), "",
             f"B = 1, H = {args.heads}, Dh = 64, no mask; tiles {args.block_q} x {args.block_k}; "
             f"{args.threads} torch thread(s); median of {args.runs} runs (min beside it), peak = resident bytes over the inputs "
             f"(VmHWM - VmRSS, fresh process per row); torch {args.torch}, {os.cpu_count()} CPUs, "
             f"load average {os.getloadavg()[0]:.1f} at the end.", "",
             "| T | pass | contender | median s | min s | peak MiB | time / reference | peak / reference "
             "| max abs vs reference (256 rows) |", "|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["T"], r["backward"])  # noqa: E731
    refs = {key(r): r for r in rows if r["impl"] == "reference" and "error" not in r}
    for r in rows:
        pass_ = "forward+backward" if r["backward"] else "forward"
        if "error" in r:
            lines.append(f"| {r['T']:,} | {pass_} | {r['impl']} | {r['error']} | | | | | |")
            continue
        ref = refs.get(key(r))
        ratios = (f"{r['median_s'] / ref['median_s']:.2f}x | {r['peak_bytes'] / ref['peak_bytes']:.3f}x"
                  if ref and r is not ref else "| " if ref is None else "1 | 1")
        check = "" if r["max_abs_vs_reference"] is None else f"{r['max_abs_vs_reference']:.1e}"
        lines.append(f"| {r['T']:,} | {pass_} | {r['impl']} | {r['median_s']:.2f} | {r['min_s']:.2f} | "
                     f"{mib(r['peak_bytes'])} | {ratios} | {check} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--backward-lengths", type=int, nargs="*", default=[4096])
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--block-q", type=int, default=None, help="default: Config's attention_block_q")
    p.add_argument("--block-k", type=int, default=None, help="default: Config's attention_block_k")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see the docstring)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tiled_attention.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import torch

    from conformance.core.config import Config
    args.torch = torch.__version__
    defaults = Config(kind="scaled_dot_product_attention")
    args.block_q = args.block_q or defaults.attention_block_q
    args.block_k = args.block_k or defaults.attention_block_k
    base = {"heads": args.heads, "block_q": args.block_q, "block_k": args.block_k, "runs": args.runs,
            "threads": args.threads}
    plan = [(T, False) for T in args.lengths] + [(T, True) for T in args.backward_lengths]
    rows = []
    for T, backward in plan:
        for impl in ("reference", "tiled"):
            print(f"T={T} {'forward+backward' if backward else 'forward'} {impl} ...", file=sys.stderr, flush=True)
            rows.append(measure({**base, "T": T, "impl": impl, "backward": backward}, args.timeout))
    text = report(rows, args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
