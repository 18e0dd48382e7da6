"""Measured counterparts of the analytic figures: FLOP counters, memory peaks, time.

Each framework's own counters are its backend's (`Backend.count_flops`, `allocator_peaks`,
`training_memory`, `step_memory`, `matmul_gflops`); what is left here is framework-free.

FLOPs   torch: `torch.utils.flop_counter.FlopCounterMode` around one forward of the mirror (its
        attention is the unfused q k^T -> softmax -> v path, so every matmul is an aten.bmm /
        addmm it has a formula for). TensorFlow: the model traced once into a concrete
        `tf.function` graph, counted by `tf.compat.v1.profiler` (float_operation) and op by op
        with the same registry (`tensorflow/python/profiler/internal/flops_registry.py`): ops it
        has no formula for (Erf, Tanh, Sqrt, SelectV2, ...) are listed as missed, with their sizes.
        transformers: BertModel / GPT2Model with attn_implementation "eager" and then "sdpa":
        FlopCounterMode has no formula for the CPU scaled_dot_product_attention kernel, so sdpa
        under-counts by exactly the attention matmuls.
Memory  torch: the CPU allocator's events (`torch.profiler`, profile_memory=True), summed in time
        order, peak over the start of the forward. NumPy: `tracemalloc` (NumPy reports its buffers
        to it). Every framework: the process's peak resident set (VmHWM, reset through
        /proc/self/clear_refs) over its resident set before the forward. TensorFlow has no CPU
        allocator statistics (get_memory_info: "not available for device 'CPU:0'").
        Training: the bytes autograd saves for backward (`saved_tensors_hooks`, one count per
        storage, parameters excluded), and after one AdamW step the bytes of parameters,
        gradients and optimizer state per parameter.
Time    best of `repeats` forwards after one warm-up; the machine's matmul peak is the best of
        an N x N float32 matmul in NumPy, torch and TensorFlow, measured in the same run.
"""
from __future__ import annotations

import re

from conformance import training
from conformance.backends import backend
from conformance.oracles import transformers as hf_oracle


def matmul_peak(frameworks=("numpy", "torch", "tf"), n=2048, repeats=3) -> dict:
    """GFLOP/s of an (n, n) @ (n, n) float32 matmul in each framework: 2 n^3 FLOPs."""
    return {fw: backend(fw).matmul_gflops(n, repeats) for fw in frameworks}


def _proc(path, field) -> int:
    with open(path) as f:
        return 1024 * int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def rss() -> int:
    """The resident bytes of this process now (Linux; 0 elsewhere)."""
    try:
        return _proc("/proc/self/status", "VmRSS")
    except OSError:
        return 0


class ResidentPeak:
    """`with ResidentPeak() as p:` then `p.start` (resident bytes at entry) and `p.peak` (the kernel's
    high-water mark over the block, VmHWM reset at entry); both None where /proc cannot say (not Linux)."""

    def __enter__(self):
        self.start = self.peak = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
            self.start = _proc("/proc/self/status", "VmRSS")
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        if self.start is not None:
            self.peak = _proc("/proc/self/status", "VmHWM")


def rss_peak(fn) -> int | None:
    """Peak resident bytes during fn() over the resident bytes before it (Linux only)."""
    with ResidentPeak() as p:
        fn()
    return None if p.start is None else p.peak - p.start


def available_bytes() -> int:
    try:
        return _proc("/proc/meminfo", "MemAvailable")
    except OSError:
        return 1 << 62


def transformers_sdpa(cfg, inputs: dict) -> dict | None:
    """FlopCounterMode on the `transformers` model with `cfg`'s head, eager attention and then sdpa;
    None where `transformers` has no such model. sdpa under-counts by exactly the attention matmuls."""
    counts = hf_oracle.flop_counts(cfg, inputs, ("eager", "sdpa"))
    if counts is None:
        return None
    model = next(iter(counts.values()))["model"]
    return {"model": model, "eager": counts["eager"]["total"], "sdpa": counts["sdpa"]["total"],
            "missed_by_sdpa": counts["eager"]["total"] - counts["sdpa"]["total"],
            "by_op": {impl: c["by_op"] for impl, c in counts.items()}}


def step_memory(preset="bert-tiny", task: str = "mlm", framework: str = "torch",
                tcfg: "training.TrainConfig | None" = None, dtype: str = "float32") -> dict | None:
    """The peak bytes of one training step (forward, backward, clip, AdamW) in `framework` by its own
    allocator record, next to the bytes of weights, gradients and AdamW moments it keeps after;
    None where the framework keeps no allocator record (`Backend.step_memory`)."""
    tcfg = (tcfg or training.TrainConfig()).replace(task=task, steps=1)
    cfg, w, batches = training.setup(preset, task, tcfg)
    step, built = training.trainer(framework, cfg, w, training.for_framework(tcfg, framework), dtype)
    measured = built.backend.step_memory(step, batches[:tcfg.accumulation_steps])
    if measured is None:
        return None
    return {"preset": preset, "task": task, "framework": framework, "dtype": dtype, "batch": tcfg.micro_batch_size,
            "seq_len": tcfg.seq_len, **measured}
