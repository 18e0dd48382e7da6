"""Forward-pass benchmark: llama3.2-1b, our twins against their peers, in one run.

    python bench/bench_llama.py                  # llama3.2-1b, batch 1 and 4, sequence 128 (~15 min)
    python bench/bench_llama.py --batches 1 --runs 3 --preset llama-tiny   # a quick look
    python bench/bench_llama.py --out FILE.md    # default bench/results/llama.md

Inference, float32, CPU, no padding. Two groups, each in its own process so that one group's
models are freed before the next is built (1.24B parameters are 4.9 GB a copy in float32; the
machine has 24 GiB):

    torch   torch_impl (eager: the reference attention; fused: attention_impl="fused", one
            F.scaled_dot_product_attention) against transformers' LlamaForCausalLM, eager and sdpa
    tf      tf_impl compiled (tf.function, XLA) against keras-hub's LlamaBackbone compiled the same
            ways, its logits by its own tied ReversibleEmbedding as LlamaCausalLM does

Every contender gets the same canonical weights (`weights.initialize(cfg, seed=0)`), through its
own door: `build` for the twins, `weights.to_hf` + `from_pretrained` for transformers, the family's
keras-hub table for keras-hub. Within a group the contenders are timed interleaved (one call of
each per round, after a pause that lets the previous library's threads park), so load from other
processes falls on all of them alike; the ratios are of medians over the rounds after warm-up,
and the minimum is shown beside. Each contender's logits are checked against its group's twin
(and the two twins against each other) so that all of them compute the same model.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
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
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from bench_models import interleaved, rss_bytes, table  # noqa: E402
from conformance import weights  # noqa: E402
from conformance.costs import flops as flops_lib  # noqa: E402
from conformance.spec import presets  # noqa: E402

TARGETS = [  # (ratio, numerator, denominators: the best of them), goal: parity or better
    ("torch_impl / transformers (eager)", ("torch_impl (eager)",), ("transformers (eager)",)),
    ("torch_impl / transformers (sdpa)", ("torch_impl (eager)",), ("transformers (sdpa)",)),
    ("torch_impl (fused) / transformers (sdpa)", ("torch_impl (fused)",), ("transformers (sdpa)",)),
    ("tf_impl compiled / keras-hub compiled", ("tf_impl (tf.function)", "tf_impl (XLA)"),
     ("keras-hub (tf.function)", "keras-hub (XLA)")),
]


def inputs_for(cfg, batch, seq):
    ids = np.random.default_rng(batch).integers(0, cfg.vocab_size, (batch, seq))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def torch_group(cfg, w, shapes, runs, progress):
    import torch
    from conformance.backends.build import build
    from conformance.oracles import transformers as hf
    models = {"torch_impl (eager)": build("torch", cfg, w, dtype="float32").module.eval()}
    theirs = hf.transformers_model(cfg, w, "eager", "float32")
    del w
    gc.collect()
    theirs.config.use_cache = False

    def call(model, attn=None):
        def run(x):
            if attn:
                theirs.set_attn_implementation(attn)
            with torch.inference_mode():
                out = model(**x)
            return out["logits"] if isinstance(out, dict) else out.logits
        return run

    ours = models["torch_impl (eager)"]
    fused = type(ours)(cfg.replace(attention_impl="fused")).eval()  # F.scaled_dot_product_attention
    fused.load_state_dict(ours.state_dict(), assign=True)  # the same tensors: no second copy
    gc.collect()
    fns = {"torch_impl (eager)": call(ours), "torch_impl (fused)": call(fused),
           "transformers (eager)": call(theirs, "eager"), "transformers (sdpa)": call(theirs, "sdpa")}
    return _time(fns, lambda x: {k: torch.from_numpy(v) for k, v in x.items()}, cfg, shapes, runs, progress,
                 "torch_impl (eager)")


def tf_group(cfg, w, shapes, runs, progress):
    import tensorflow as tf
    from conformance.backends.build import build
    from conformance.oracles import keras_hub as kho
    twin = build("tf", cfg, w, dtype="float32").module
    kh = kho.load(kho.backbone(cfg, "float32"), cfg, w)
    del w
    gc.collect()
    kh_forward = kho.forward(kh, cfg)

    def ours(x):
        return twin(**x)["logits"]

    graph, xla = tf.function(ours), tf.function(ours, jit_compile=True)
    kh_graph = tf.function(lambda x: kh_forward(x)["logits"])
    kh_xla = tf.function(lambda x: kh_forward(x)["logits"], jit_compile=True)
    fns = {"tf_impl (tf.function)": lambda x: graph(x["ours"]), "tf_impl (XLA)": lambda x: xla(x["ours"]),
           "keras-hub (tf.function)": lambda x: kh_graph(x["kh"]), "keras-hub (XLA)": lambda x: kh_xla(x["kh"])}

    def feed(x):
        return {"ours": {k: tf.constant(v) for k, v in x.items()},
                "kh": {k: tf.constant(v) for k, v in kho.inputs(cfg, **x).items()}}
    return _time(fns, feed, cfg, shapes, runs, progress, "tf_impl (tf.function)")


def _time(fns, feed, cfg, shapes, runs, progress, reference):
    """Per shape: every contender's logits against `reference`'s, then interleaved timing."""
    out = {"rows": {}, "agreement": {}, "rss_after_build_gib": rss_bytes() / 2 ** 30}
    for i, (batch, seq) in enumerate(shapes):
        x = inputs_for(cfg, batch, seq)
        fed = feed(x)
        logits = {name: np.asarray(fn(fed)) for name, fn in fns.items()}  # also the first warm-up call
        out["agreement"][f"b{batch}"] = {name: float(np.abs(v - logits[reference]).max()) for name, v in logits.items()}
        if i == 0:
            np.save(out.setdefault("logits_file", tempfile.mktemp(suffix=".npy")), logits[reference])
        progress(f"  b{batch}: agreement with {reference} {out['agreement'][f'b{batch}']}")
        times = interleaved({name: (lambda fn=fn: np.asarray(fn(fed))) for name, fn in fns.items()}, True,
                            runs, min(3, runs), 600.0, progress)
        out["rows"][f"b{batch}"] = times
    return out


GROUPS = {"torch": torch_group, "tf": tf_group}


def child(group, preset, shapes, runs):
    cfg = presets.get(preset)
    t0 = time.perf_counter()
    w = weights.initialize(cfg, seed=0)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"[{group}] weights in {time.perf_counter() - t0:.0f} s")
    result = GROUPS[group](cfg, w, shapes, runs, log)
    result["threads"] = _threads(group)
    print(json.dumps(result))


def _threads(group):
    if group == "torch":
        import torch
        return torch.get_num_threads()
    import tensorflow as tf
    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()


def environment() -> dict:
    import platform
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    versions = {}
    for name in ("torch", "transformers", "tensorflow", "keras", "keras_hub"):
        out = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.__version__)"],
                             capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        versions[name] = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else "not installed"
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "python": platform.python_version(), **versions,
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (oneDNN on)"),
            "load average": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def report(preset, shapes, results, env, elapsed) -> str:
    cfg = presets.get(preset)
    lines = [f"# Benchmark: {preset} forward, float32 CPU", "",
             f"`python bench/bench_llama.py --preset {preset}`, {elapsed / 60:.1f} min. Medians over the timed rounds "
             "(minimum beside); ratios of medians within one process, so load falls on both sides alike.", "",
             table(list(env.items()), ["environment", ""]), ""]
    target_rows, rows = [], []
    for batch, seq in shapes:
        key = f"b{batch}"
        merged = {name: t for r in results.values() for name, t in r["rows"][key].items()}
        gflops = flops_lib.totals(flops_lib.ops(cfg, batch, seq))["matmul"] / 1e9
        for name, t in merged.items():
            rows.append((f"{batch} x {seq}", name, f"{1e3 * np.median(t):,.0f}", f"{1e3 * min(t):,.0f}",
                         f"{gflops / np.median(t):.1f}"))
        for what, num, den in TARGETS:
            pick = lambda names, how: min(how(merged[n]) for n in names if n in merged)  # noqa: E731
            if not all(any(n in merged for n in side) for side in (num, den)):
                continue
            by_median, by_min = pick(num, np.median) / pick(den, np.median), pick(num, min) / pick(den, min)
            verdict = "met" if max(by_median, by_min) <= 1.0 else (
                "missed" if min(by_median, by_min) > 1.0 else "met by one statistic only")
            target_rows.append((what, f"{batch} x {seq}", f"{by_median:.2f}", f"{by_min:.2f}", verdict))
    lines += ["## Ratios (goal: <= 1.0)", "", table(target_rows, ["ratio", "batch x seq", "median", "min",
                                                                 "verdict"]), "",
              "## Times", "", table(rows, ["batch x seq", "contender", "median ms", "min ms", "matmul GFLOP/s"]), "",
              "## Agreement (max |logits - the group's twin|)", ""]
    agree = [(group, shape, name, f"{d:.2e}") for group, r in results.items()
             for shape, ds in r["agreement"].items() for name, d in ds.items()]
    lines += [table(agree, ["group", "shape", "contender", "max abs difference"]), ""]
    if all("logits_file" in r for r in results.values()):
        a, b = (np.load(r["logits_file"]) for r in results.values())
        lines += [f"torch_impl against tf_impl, first shape: max |difference| {np.abs(a - b).max():.2e} "
                  f"(logits up to {np.abs(a).max():.1f}).", ""]
    lines += ["RSS after building each group: " + ", ".join(f"{g} {r['rss_after_build_gib']:.1f} GiB"
                                                           for g, r in results.items()) + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="llama3.2-1b")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--groups", default="torch,tf")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "llama.md"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shapes = [(int(b), args.seq) for b in args.batches.split(",")]
    if args.child:
        return child(args.child, args.preset, shapes, args.runs)
    t0, results = time.perf_counter(), {}
    for group in args.groups.split(","):
        print(f"group {group}", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", group, "--preset", args.preset,
                               "--batches", args.batches, "--seq", str(args.seq), "--runs", str(args.runs)],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            raise SystemExit(f"group {group} failed (exit {proc.returncode})")
        results[group] = json.loads(proc.stdout.strip().splitlines()[-1])
    text = report(args.preset, shapes, results, environment(), time.perf_counter() - t0)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
