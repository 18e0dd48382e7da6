"""PyTorch as a backend: `torch_impl` modules on the CPU or a CUDA device, every dtype, autocast
for the mixed ones, TF32 forced off for float32 and on for tf32, gradients by autograd.

The mapping between canonical weights and torch parameters lives here and nowhere else
(`TORCH_LEAVES`): a torch_impl module that subclasses one of torch's own layers keeps torch's
leaf names and layout (`nn.Linear.weight` is `[out, in]`, `nn.LayerNorm.weight` is gamma,
`nn.Embedding.weight` the table); any other parameter has its canonical name.
"""
from __future__ import annotations

import contextlib
import gc
import os

import numpy as np
import torch
from torch import nn

from conformance.backends.base import Backend, Gradients, as_dict, best_seconds, cotangents_for, matmul_operands
from conformance.backends.dtypes import DTYPES, MIXED, cast_input, compute_dtype, numpy_dtype, parameter_dtype
from conformance.core import quiet, trace
from conformance.spec.leaves import TORCH_EMBEDDING, TORCH_LINEAR, TORCH_NORM, Leaf

TORCH_LEAVES = {nn.Linear: TORCH_LINEAR, nn.LayerNorm: TORCH_NORM, nn.Embedding: TORCH_EMBEDDING}


def leaves_of(module: nn.Module) -> tuple[Leaf, ...]:
    return next((leaves for cls, leaves in TORCH_LEAVES.items() if isinstance(module, cls)), ())


def canonical_names(module: nn.Module) -> dict[str, tuple[str, Leaf]]:
    """Canonical weight name -> (torch state_dict key, leaf) for every parameter of `module`."""
    out = {}
    for path, m in module.named_modules():
        for name, _ in m.named_parameters(recurse=False):
            leaf = next((lf for lf in leaves_of(m) if lf.external == name), Leaf(name, name))
            out[f"{path}.{leaf.canonical}" if path else leaf.canonical] = (f"{path}.{name}" if path else name, leaf)
    return out


def tensor(x, dtype: str, device: str):
    x = cast_input(x, dtype)
    if x.dtype.name == "bfloat16":  # torch.from_numpy does not know ml_dtypes: exact via float32
        return torch.from_numpy(x.astype(np.float32)).to(device=device, dtype=torch.bfloat16)
    return torch.from_numpy(np.require(x, requirements="C")).to(device)  # not ascontiguousarray: it makes 0-D 1-D


def to_numpy(x) -> np.ndarray:
    """A torch tensor as NumPy; bfloat16 stays bfloat16 (ml_dtypes), as Keras returns it."""
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        return x.float().numpy().astype(numpy_dtype("bfloat16"))
    return x.numpy()


def tensor_like(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """`array` as a tensor of `like`'s dtype and device (bfloat16 through float32, exactly)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array, np.float32 if like.dtype == torch.bfloat16
                                                            else None))).to(device=like.device, dtype=like.dtype)


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """`dtypes.round_to_tf32` for a torch float32 tensor: the same bits."""
    bits = x.contiguous().view(torch.int32)
    rounded = ((bits + 0xFFF + ((bits >> 13) & 1)) & -0x2000).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


class TF32Emulation(torch.overrides.TorchFunctionMode):
    """Rounds the float32 operands of every matmul to TF32 before it runs: TF32 on a CPU.

    Real tensor cores round (or truncate) the same operands and accumulate in float32, so
    this reproduces TF32's error to within its rounding rule. Inside fused SDPA only q, k, v
    are rounded (not the probabilities), so fused attention is slightly optimistic.
    """
    MATMULS = {torch.matmul: (0, 1), torch.Tensor.matmul: (0, 1), torch.Tensor.__matmul__: (0, 1),
               torch.Tensor.__rmatmul__: (0, 1), torch.mm: (0, 1), torch.bmm: (0, 1),
               torch.addmm: (1, 2), torch.baddbmm: (1, 2), nn.functional.linear: (0, 1),
               nn.functional.scaled_dot_product_attention: (0, 1, 2)}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        positions = self.MATMULS.get(func)
        if positions:
            args = tuple(round_to_tf32(a) if i in positions and isinstance(a, torch.Tensor)
                         and a.dtype == torch.float32 else a for i, a in enumerate(args))
        return func(*args, **kwargs)


@contextlib.contextmanager
def tf32_flags(on: bool):
    """TF32 for cuda matmuls and convolutions forced on or off, the previous flags restored after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def flop_count(module, inputs: dict) -> dict:
    """`torch.utils.flop_counter.FlopCounterMode` around one forward of any torch module: its formulas
    cover matmuls (aten.mm, addmm, bmm), not the CPU scaled_dot_product_attention kernel."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(**inputs)
    total = int(counter.get_total_flops())
    return {"counter": "FlopCounterMode", "total": total, "matmul": total,
            "by_op": {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}}


@contextlib.contextmanager
def profiling_memory():
    """`torch.profiler.profile` with memory events, its native start/stop lines kept off stderr
    (kineto writes "USDT: ... profiler_start" to descriptor 2 directly)."""
    from torch.profiler import ProfilerActivity, profile
    with quiet.stderr_descriptor_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield prof


def _peak(prof) -> int:
    """The allocator's peak over its start: memory events summed in time order."""
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return int(np.cumsum([e.nbytes() for e in events]).max(initial=0))


def _viewable(a: np.ndarray) -> np.ndarray:
    """`a`, or a copy where torch.from_numpy cannot view it (negative strides, read-only memory)."""
    return a if a.flags.writeable and min(a.strides, default=0) >= 0 else np.ascontiguousarray(a).copy()


class TorchBackend(Backend):
    name = "torch"
    package = "torch_impl"
    dtypes = DTYPES
    devices = ("cpu", "cuda")
    compile_modes = {"inductor": "torch.compile(backend='inductor'): TorchDynamo's graph, inductor's fused "
                                 "C++ (CPU, gcc) or Triton (CUDA) kernels"}

    def available_devices(self):
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def construct(self, entry, cfg, dtype, device, **options):
        module = entry.construct(self.package, cfg, **options)
        return module.to(device=device, dtype=getattr(torch, parameter_dtype(dtype)))

    def load(self, module, weights, dtype, partial=False):
        """One tensor at a time, each copied into its parameter (in its layout and dtype) straight from
        the canonical array: a transposed layout is read through a strided view, with no copy between."""
        names = canonical_names(module)
        unexpected = [c for c in weights if c not in names]
        if unexpected:
            raise ValueError(f"weights the {type(module).__name__} module has no parameter for: {unexpected[:5]}")
        state = module.state_dict(keep_vars=True)
        with torch.no_grad():
            for c, (key, leaf) in names.items():
                if not partial or c in weights:
                    state[key].copy_(torch.from_numpy(_viewable(leaf.to_external(weights[c]))))

    def inputs(self, inputs, dtype, device="cpu"):
        return {k: tensor(v, dtype, device) for k, v in inputs.items()}

    def to_numpy(self, x):
        return to_numpy(x)

    def take_rows(self, x, rows):
        return x.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=x.device))

    def compile(self, module, mode):
        """`torch.compile(module, backend="inductor")`: an `nn.Module` that `run` calls as it calls the module.
        Dynamo keys its graphs by the forward's code, shared by every instance of a class, so its
        recompile limit is raised: past it, a call would run eager without a word. Inductor keeps its kernels
        in TORCHINDUCTOR_CACHE_DIR, by default `torchinductor_$USER` in the system's temporary directory
        (tests/test_compile_cache.py: never the checkout)."""
        self.require_compile(mode)
        import logging

        import torch._dynamo
        if "TORCH_LOGS" not in os.environ:  # dynamo's graph-break advice is for a model's author (TORCH_LOGS shows it)
            logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 512)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4096)
        return torch.compile(module, backend=mode, dynamic=False)

    def reset_compiled(self):
        import torch._dynamo
        torch._dynamo.reset()

    @contextlib.contextmanager
    def transforming(self, module, transform):
        """A forward hook that returns `transform(output)`, which replaces the output (and is traced by dynamo)."""
        handle = module.register_forward_hook(lambda m, args, output: transform(output))
        try:
            yield
        finally:
            handle.remove()

    def run(self, module, inputs, training, call=None):
        args, kwargs = call or ((), inputs)
        if module.training != training:  # .train() walks every submodule: a decoding step's cost otherwise
            module.train(training)
        with torch.no_grad():
            return module(*args, **kwargs)

    def run_method(self, module, method, call, training):
        module.train(training)
        with torch.no_grad():
            return getattr(module, method)(*call[0], **call[1])

    @contextlib.contextmanager
    def policy(self, dtype, device):
        """Mixed dtypes run under `torch.autocast`; on cuda TF32 is forced off for float32 and on for
        tf32; tf32 on the CPU is `TF32Emulation`."""
        with contextlib.ExitStack() as stack:
            if dtype in MIXED:
                stack.enter_context(torch.autocast(device_type=device, dtype=getattr(torch, compute_dtype(dtype))))
            if device == "cuda" and dtype in ("float32", "tf32") + MIXED:
                stack.enter_context(tf32_flags(dtype == "tf32"))
            elif dtype == "tf32":
                stack.enter_context(TF32Emulation())
            yield

    @contextlib.contextmanager
    def capturing(self, module, pattern):
        """Forward hooks report each module's inputs and output to the tracer, while it records."""
        handles = []
        if pattern is not None:
            def pre(m, args, kwargs):
                m._tmirror_leave = trace.entering(m, args, kwargs)

            def post(m, args, kwargs, output):
                if getattr(m, "_tmirror_leave", None):
                    m._tmirror_leave(output)
                    m._tmirror_leave = None

            for m in module.modules():
                handles += [m.register_forward_pre_hook(pre, with_kwargs=True),
                            m.register_forward_hook(post, with_kwargs=True)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ---- external models: forward hooks
    def external_modules(self, model):
        if not isinstance(model, nn.Module):
            raise ValueError(f"expected a torch.nn.Module; received {type(model).__name__}")
        return dict(model.named_modules())

    @contextlib.contextmanager
    def recording_calls(self, model, modules, on_call):
        """A forward hook on every module reports (path, args, kwargs, output) as the call returns."""
        def hook(path):
            return lambda m, args, kwargs, output: on_call(path, args, kwargs, output)
        handles = [m.register_forward_hook(hook(path), with_kwargs=True) for path, m in modules.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def is_tensor(self, x):
        return isinstance(x, torch.Tensor)

    def owns_parameters(self, module):
        return next(module.parameters(), None) is not None

    def like(self, array, tensor):
        return tensor_like(array, tensor)

    def call_module(self, module, args, kwargs):
        with torch.no_grad():
            return module(*args, **kwargs)

    def stored_weights(self, model):
        return {k: to_numpy(v) for k, v in model.state_dict().items()}

    def parameters(self, module):
        params = dict(module.named_parameters())
        return {c: params[key] for c, (key, _) in canonical_names(module).items()}

    def num_parameters(self, module):
        return sum(p.numel() for p in module.parameters())

    def export(self, module, shapes):
        state = module.state_dict()
        names = canonical_names(module)
        return {c: names[c][1].to_canonical(to_numpy(state[names[c][0]])) for c in shapes}

    def gradients(self, built, inputs, cotangents, seed):
        module = built.module
        tensors = self.inputs(inputs, built.dtype, built.device)
        leaves = {k: t.requires_grad_() for k, t in tensors.items() if t.is_floating_point()}
        tapped, received = {}, {}

        def on_tap(key, x):  # the hook fires with the gradient accumulated over every use of x
            if isinstance(x, torch.Tensor) and x.requires_grad:
                tapped[key] = x
                x.register_hook(lambda g: received.__setitem__(key, g))

        with built.policy(), torch.enable_grad(), \
                trace.recording(self.named_modules(module), self.to_numpy, on_tap=on_tap):
            module.train(built.training)
            out = as_dict(module(**tensors))
            outputs = {k: to_numpy(v) for k, v in out.items()}
            cot = cotangents or cotangents_for(outputs, seed)
            loss = sum((out[k] * torch.as_tensor(c, dtype=out[k].dtype, device=out[k].device)).sum()
                       for k, c in cot.items())
        params = self.parameters(module)
        names = [n for n in canonical_names(module)]
        targets = list(leaves.values()) + [params[n] for n in names]
        if torch.is_tensor(loss) and loss.requires_grad:
            grads = torch.autograd.grad(loss, targets, allow_unused=True)
        else:  # a constant output: nothing to differentiate
            grads = [None] * len(targets)
        grads = [np.zeros(tuple(t.shape), to_numpy(t).dtype) if g is None else to_numpy(g)
                 for t, g in zip(targets, grads)]
        leaf = canonical_names(module)
        return Gradients(outputs, dict(zip(leaves, grads[:len(leaves)])),
                         {n: leaf[n][1].to_canonical(g) for n, g in zip(names, grads[len(leaves):])},
                         {k: to_numpy(received[k]) for k in tapped if k in received}, cot)

    def module_gradients(self, built, sub, prefix, tensors, floats, cotangent):
        for k in floats:
            tensors[k].requires_grad_()
        names = canonical_names(sub)
        params = self.parameters(sub)
        targets = [tensors[k] for k in floats] + [params[n] for n in names]
        with built.policy(), torch.enable_grad():
            sub.train(built.training)
            out = sub(**tensors)
            loss = (out * torch.as_tensor(cotangent, dtype=out.dtype, device=out.device)).sum()
            grads = torch.autograd.grad(loss, targets, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
        return ({k: to_numpy(g) for k, g in zip(floats, grads)},
                {prefix + n: names[n][1].to_canonical(to_numpy(g)) for n, g in zip(names, grads[len(floats):])})

    def count_flops(self, built, inputs):
        return flop_count(built.module, self.inputs(inputs, built.dtype, built.device))

    def allocator_peaks(self, built, inputs):
        x = self.inputs(inputs, built.dtype, built.device)
        with torch.no_grad(), self.tracking_allocator() as peaks:
            built.module(**x)
        return peaks

    @contextlib.contextmanager
    def tracking_allocator(self):
        peaks = {}
        with profiling_memory() as prof:
            yield peaks
        peaks["allocator_peak"] = _peak(prof)

    def training_memory(self, built, inputs):
        """Bytes saved for backward (`saved_tensors_hooks`, one count per storage, parameters excluded)
        and, after one AdamW step, bytes of parameters + gradients + optimizer state per parameter."""
        module, x = built.module, self.inputs(inputs, built.dtype, built.device)
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
                out = module(**x)
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

    def step_memory(self, trainer, micro_batches):
        with profiling_memory() as prof:
            trainer.step(micro_batches)
        params = list(trainer.model.parameters())
        state = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.dim() > 0)
        return {"peak_step_bytes": _peak(prof), "weights_bytes": sum(p.numel() * p.element_size() for p in params),
                "gradients_bytes": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
                "adamw_state_bytes": state}

    def matmul_gflops(self, n, repeats, dtype="float32"):
        a, b, flops = matmul_operands(n, dtype)
        a, b = torch.from_numpy(a), torch.from_numpy(b)
        return flops / best_seconds(lambda: a @ b, repeats) / 1e9

    def environment(self):
        env = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
               "torch_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
               "torch_tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
               "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
               "torch_cuda_available": bool(torch.cuda.is_available()),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")}
        fp32 = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
        if fp32 is not None:
            env["torch_cuda_matmul_fp32_precision"] = str(fp32)
        capability = None
        if env["torch_cuda_available"]:
            capability = torch.cuda.get_device_capability()
            env["cuda_device"] = torch.cuda.get_device_name()
            env["cuda_capability"] = f"{capability[0]}.{capability[1]}"
        env["tf32_capable_gpu"] = bool(capability and capability >= (8, 0))
        env["torch_tf32_effective"] = env["tf32_capable_gpu"] and (
            env["torch_tf32_matmul"] or env["torch_float32_matmul_precision"] != "highest")
        return env
