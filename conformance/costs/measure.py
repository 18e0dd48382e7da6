"""Measured counterparts of the analytic figures: FLOP counters, memory peaks, time.

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

import contextlib
import gc
import importlib
import os
import re
import sys
import time
import tracemalloc

import numpy as np

from conformance import training
from conformance.spec import families
from conformance.weights import checkpoints

DATA_MOVEMENT = {"Const", "Placeholder", "ReadVariableOp", "Reshape", "Transpose", "Identity", "StridedSlice",
                 "GatherV2", "Cast", "ConcatV2", "ExpandDims", "Squeeze", "Pack", "Shape", "Range", "NoOp",
                 "Fill", "ZerosLike", "OnesLike", "BroadcastTo"}


def best_seconds(fn, repeats=3, warm_up=True) -> float:
    if warm_up:  # first-call allocations, kernel selection
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak(n=2048, repeats=3) -> dict:
    """GFLOP/s of an (n, n) @ (n, n) float32 matmul in each framework: 2 n^3 FLOPs."""
    import tensorflow as tf
    import torch
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fa, fb = tf.constant(a), tf.constant(b)
    runs = {"numpy": lambda: a @ b, "torch": lambda: ta @ tb, "tf": lambda: tf.linalg.matmul(fa, fb).numpy()}
    return {fw: 2 * n**3 / best_seconds(fn, repeats) / 1e9 for fw, fn in runs.items()}


def torch_flops(module, inputs) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(**inputs)
    return {"total": int(counter.get_total_flops()),
            "by_op": {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}}


def tf_flops(module, inputs: dict) -> dict:
    """TensorFlow's own count on a concrete graph of one forward, and what it has no formula for."""
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops
    importlib.import_module("tensorflow.python.profiler.internal.flops_registry")  # registers the formulas
    specs = {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype)) for k, v in inputs.items()}
    graph = tf.function(lambda x: module(**x, training=False)).get_concrete_function(specs).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the v1 profiler warns that its shape helper is deprecated
    try:
        total = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
    finally:
        tf.get_logger().setLevel(level)
    by_type, missed = {}, {}
    for op in graph.get_operations():
        value = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
        if value is not None:
            by_type[op.type] = by_type.get(op.type, 0) + int(value)
        elif op.type not in DATA_MOVEMENT and op.outputs and op.outputs[0].dtype.is_floating:
            missed[op.type] = missed.get(op.type, 0) + int(np.prod(op.outputs[0].shape))
    matmul = sum(v for k, v in by_type.items() if "MatMul" in k)
    return {"total": int(total), "matmul": matmul, "by_op_type": by_type, "missed_elements": missed}


def transformers_sdpa(cfg, inputs: dict) -> dict | None:
    """FlopCounterMode on the `transformers` model with `cfg`'s head (`Family.transformers_class`),
    eager attention and then sdpa; None where `transformers` has no such model."""
    family = families.get(cfg.kind)
    cls = family.transformers_class(cfg)
    if cls is None:
        return None
    import torch
    import transformers
    config = transformers.AutoConfig.for_model(**checkpoints.config_to_hf(cfg, family.hf, cls))
    with torch.device("meta"):
        model = getattr(transformers, cls)(config)
    model = model.to_empty(device="cpu").eval()  # no initialization: zeros, explicit position ids
    for p in model.parameters():
        p.data.zero_()
    x = {k: torch.from_numpy(v) for k, v in inputs.items()}
    x["position_ids"] = torch.arange(x["input_ids"].shape[1])[None]
    counts = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        counts[impl] = torch_flops(model, x)
    return {"model": cls, "eager": counts["eager"]["total"], "sdpa": counts["sdpa"]["total"],
            "missed_by_sdpa": counts["eager"]["total"] - counts["sdpa"]["total"],
            "by_op": {impl: c["by_op"] for impl, c in counts.items()}}


@contextlib.contextmanager
def profiling_memory():
    """`torch.profiler.profile` with memory events, its native start/stop lines kept off stderr."""
    from torch.profiler import ProfilerActivity, profile
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)  # kineto writes "USDT: ... profiler_start" to fd 2 directly
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                yield prof
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def torch_peak(module, inputs) -> int:
    """Peak bytes the CPU allocator holds during one forward, over what it held at the start."""
    import torch
    with torch.no_grad(), profiling_memory() as prof:
        module(**inputs)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return int(np.cumsum([e.nbytes() for e in events]).max(initial=0))


def numpy_peak(fn) -> int:
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def _proc(path, field) -> int:
    with open(path) as f:
        return 1024 * int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def rss_peak(fn) -> int | None:
    """Peak resident bytes during fn() over the resident bytes before it (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
        start = _proc("/proc/self/status", "VmRSS")
    except OSError:
        return None
    fn()
    return _proc("/proc/self/status", "VmHWM") - start


def available_bytes() -> int:
    try:
        return _proc("/proc/meminfo", "MemAvailable")
    except OSError:
        return 1 << 62


def torch_training(module, inputs) -> dict:
    """Bytes saved for backward (one count per storage, parameters excluded) and, after one
    AdamW step, bytes of parameters + gradients + optimizer state per parameter."""
    import torch
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    module.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = module(**inputs)
        loss = sum(v.float().mean() for v in (out.values() if isinstance(out, dict) else [out]))
        optimizer = torch.optim.AdamW(module.parameters())
        loss.backward()
        optimizer.step()
    finally:
        module.eval()
    n = sum(p.numel() for p in module.parameters())
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    module.zero_grad(set_to_none=True)
    del optimizer, out, loss
    gc.collect()
    return {"saved_for_backward": sum(saved.values()),
            "state_per_parameter": {"weights": weights / n, "gradients": grads / n, "AdamW moments": state / n}}


def torch_peak_memory(preset: str = "bert-tiny", task: str = "mlm", tcfg: "training.TrainConfig | None" = None,
                      dtype: str = "float32") -> dict:
    """Peak bytes torch's CPU allocator holds during one training step (forward, backward, clip,
    AdamW; `torch.profiler` memory events summed in time order, over what it held at the start),
    next to the bytes of weights, gradients and AdamW moments it keeps after."""
    import torch

    tcfg = (tcfg or training.TrainConfig()).replace(task=task, steps=1)
    cfg, w, batches = training.setup(preset, task, tcfg)
    step, built = training.trainer("torch", cfg, w, training.for_framework(tcfg, "torch"), dtype)
    with profiling_memory() as prof:
        step.step(batches[:tcfg.accumulation_steps])
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    params = list(built.module.parameters())
    state = sum(t.numel() * t.element_size() for s in step.optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    return {"preset": preset, "task": task, "dtype": dtype, "batch": tcfg.micro_batch_size, "seq_len": tcfg.seq_len,
            "peak_step_bytes": int(np.cumsum([e.nbytes() for e in events]).max(initial=0)),
            "weights_bytes": sum(p.numel() * p.element_size() for p in params),
            "gradients_bytes": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
            "adamw_state_bytes": state}
