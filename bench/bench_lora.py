"""Fine-tuning step benchmark: LoRA against full fine-tuning, gradient checkpointing against the
plain step, on the same model, torch_impl, float32, CPU, in one run.

    python bench/bench_lora.py                       # bert-base, micro-batch 8 x 128 tokens, 3 timed steps
    python bench/bench_lora.py --preset bert-tiny --steps 2   # a quick look
    python bench/bench_lora.py --out FILE.md         # default bench/results/lora.md

Contenders, each a `conformance.training` trainer (classification: BERT's pooler and classifier
on top; AdamW; clipping; dropout on):
    full              every weight trained
    full + ckpt       the same, every layer recomputed in backward (TrainConfig.checkpointing)
    lora              adapters (r = 8, alpha 16) on query and value only, every other weight frozen
    lora + ckpt       the same, checkpointed
Each step's peak bytes come from torch's allocator record (`Backend.step_memory`, one step); time
is the median of `--steps` timed steps after one warm-up step, the contenders interleaved step
by step so that load from other processes falls on all alike. Ratios are against `full` from the
same run. Trainable parameters are counted from the trainer's groups; the analytic figures beside
the measurements are `conformance.costs.memory` (saved activations: none and full recomputation)
and `conformance.costs.flops.recomputed` (one extra forward of every layer).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conformance import training  # noqa: E402
from conformance.core.lora import LoraConfig  # noqa: E402
from conformance.costs import flops, memory  # noqa: E402
from conformance.spec import presets  # noqa: E402

CONTENDERS = {"full": {}, "full + ckpt": {"checkpointing": True},
              "lora": {"lora": LoraConfig(rank=8, alpha=16.0, targets=("query", "value"))},
              "lora + ckpt": {"lora": LoraConfig(rank=8, alpha=16.0, targets=("query", "value")),
                              "checkpointing": True}}


def run(preset: str, batch: int, seq_len: int, steps: int) -> dict:
    base = training.TrainConfig(task="classification", steps=steps + 1, micro_batch_size=batch, seq_len=seq_len)
    cfg, w, batches = training.setup(preset, "classification", base)
    rows, trainers = {}, {}
    for name, changes in CONTENDERS.items():
        tcfg = training.for_framework(base.replace(**changes), "torch")
        start = dict(w)
        if tcfg.lora is not None:
            start.update(training.setup(preset, "classification", tcfg)[1])
        step, built = training.trainer("torch", cfg, start, tcfg, "float32")
        rows[name] = {"trainable": sum(p.numel() for p in step.trainable.values()),
                      **built.backend.step_memory(step, batches[:1])}  # also the warm-up step
        trainers[name] = step
    times = {name: [] for name in CONTENDERS}
    for s in range(1, steps + 1):
        for name, step in trainers.items():
            t0 = time.perf_counter()
            step.step(batches[s:s + 1])
            times[name].append(time.perf_counter() - t0)
    for name in rows:
        rows[name]["median_s"] = statistics.median(times[name])
        rows[name]["min_s"] = min(times[name])
    saved = memory.activations(cfg, batch, seq_len)["training"]
    return {"preset": preset, "batch": batch, "seq_len": seq_len, "steps": steps, "rows": rows,
            "parameters": sum(a.size for a in w.values()), "saved_none": saved["none"], "saved_full": saved["full"],
            "recomputed_flops": flops.recomputed(cfg, batch, seq_len)["matmul"],
            "forward_flops": flops.totals(flops.ops(cfg, batch, seq_len))["matmul"],
            "load": os.getloadavg()[0]}


def markdown(r: dict) -> str:
    full = r["rows"]["full"]
    mb = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    lines = [f"# LoRA and gradient checkpointing: one fine-tuning step, {r['preset']}", "",
             f"torch_impl, float32, CPU, classification, micro-batch {r['batch']} x {r['seq_len']} tokens, "
             f"{r['parameters']:,} parameters; median of {r['steps']} timed steps, contenders interleaved; "
             f"load average {r['load']:.1f} at the end. Produced by `python bench/bench_lora.py`.", "",
             "| contender | trainable | peak step MiB | vs full | gradients MiB | AdamW state MiB | median s | vs full | min s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, x in r["rows"].items():
        lines.append(f"| {name} | {x['trainable']:,} | {mb(x['peak_step_bytes'])} | "
                     f"{x['peak_step_bytes'] / full['peak_step_bytes']:.2f} | {mb(x['gradients_bytes'])} | "
                     f"{mb(x['adamw_state_bytes'])} | {x['median_s']:.3f} | {x['median_s'] / full['median_s']:.2f} | "
                     f"{x['min_s']:.3f} |")
    drop = full["peak_step_bytes"] - r["rows"]["full + ckpt"]["peak_step_bytes"]
    lora_drop = r["rows"]["lora"]["peak_step_bytes"] - r["rows"]["lora + ckpt"]["peak_step_bytes"]
    lines += ["", "Analytic figures for the same shapes (`conformance.costs`):", "",
              f"- saved activations: {mb(r['saved_none'])} MiB without recomputation, {mb(r['saved_full'])} MiB with "
              f"every layer recomputed (layer inputs + one layer): an analytic drop of "
              f"{mb(r['saved_none'] - r['saved_full'])} MiB (every weight trained) against a measured peak drop of "
              f"{mb(drop)} MiB for full fine-tuning, whose peak is the optimizer update (weights, gradients and "
              f"moments: 16 bytes a parameter), not the activations, and {mb(lora_drop)} MiB for LoRA, whose peak is "
              "the activations (fewer of them are saved: a frozen projection's input is kept only where an "
              "adapter or a later op needs it);",
              f"- recomputation adds {r['recomputed_flops'] / 1e9:.2f} GFLOPs (one forward of every layer) to a step of "
              f"about 3 x {r['forward_flops'] / 1e9:.2f} GFLOPs (forward + backward): "
              f"{r['recomputed_flops'] / (3 * r['forward_flops']):.0%} more matmul work;",
              f"- AdamW state is 8 bytes a trainable parameter: {mb(8 * full['trainable'])} MiB full, "
              f"{mb(8 * r['rows']['lora']['trainable'])} MiB for LoRA's adapters.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bert-base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "lora.md"))
    a = p.parse_args(argv)
    presets.get(a.preset)  # a clear error for an unknown name
    text = markdown(run(a.preset, a.batch, a.seq_len, a.steps))
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
