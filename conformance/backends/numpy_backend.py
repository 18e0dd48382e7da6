"""The NumPy reference as a backend: `numpy_ref` modules, float64 and float32 on the CPU, and
gradients from its hand-written backward (`numpy_ref.autograd`)."""
from __future__ import annotations

import contextlib
import tracemalloc

import numpy as np

from conformance.backends.base import Backend, Gradients, as_dict, best_seconds, cotangents_for, matmul_operands
from conformance.backends.dtypes import cast_input
from conformance.core import trace
from numpy_ref import autograd


class NumpyBackend(Backend):
    name = "numpy"
    package = "numpy_ref"
    dtypes = ("float64", "float32")
    unsupported = {
        "float16": "scipy.special.erf has no float16 loop (returns float64), so numpy_ref's exact "
                   "GELU leaves float16 (numpy_ref/activations.py gelu)",
        "bfloat16": "ml_dtypes bfloat16 matmul returns float32 and a Python-float scalar promotes "
                    "bfloat16 arrays to float32, so numpy_ref cannot stay in bfloat16",
        "mixed_bfloat16": "NumPy has no autocast",
        "mixed_float16": "NumPy has no autocast",
        "tf32": "TF32 is a GPU matmul mode",
    }

    def construct(self, entry, cfg, dtype, device, **options):
        return entry.construct(self.package, cfg, **options)

    def load(self, module, weights, dtype, partial=False):
        module.load_weights(weights, dtype, partial)

    def inputs(self, inputs, dtype, device="cpu"):
        return {k: cast_input(v, dtype) for k, v in inputs.items()}

    def run(self, module, inputs, training, call=None):
        args, kwargs = call or ((), inputs)
        module.train(training)
        return module(*args, **kwargs)

    def run_method(self, module, method, call, training):
        module.train(training)
        return getattr(module, method)(*call[0], **call[1])

    def take_rows(self, x, rows):
        return np.take(x, rows, axis=0)

    def parameters(self, module):
        return dict(module.named_parameters())

    def num_parameters(self, module):
        return sum(int(np.prod(p.shape)) for _, p in module.named_parameters())

    def export(self, module, shapes):
        return {k: np.asarray(v) for k, v in module.named_parameters()}

    @contextlib.contextmanager
    def tracking_allocator(self):
        """NumPy reports its buffers to `tracemalloc`: the peak over the start of the block."""
        peaks = {}
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            yield peaks
            peaks["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()

    def matmul_gflops(self, n, repeats, dtype="float32"):
        a, b, flops = matmul_operands(n, dtype)
        return flops / best_seconds(lambda: a @ b, repeats) / 1e9

    def gradients(self, built, inputs, cotangents, seed):
        module = built.module
        with trace.recording(self.named_modules(module), self.to_numpy) as t, autograd.recording(module) as tape:
            out = self.run(module, self.inputs(inputs, built.dtype), built.training)
        outputs = {k: np.asarray(v) for k, v in as_dict(out).items()}
        cot = cotangents or cotangents_for(outputs, seed)
        cast = {k: np.asarray(c, outputs[k].dtype) for k, c in cot.items()}
        grads_in = tape.backward(cast if isinstance(out, dict) else cast["output"])
        acts = tape.activation_grads  # filled as the backward ran: put back in forward (trace) order
        ordered = {k: acts[k] for k in t.records if k in acts} | acts
        return Gradients(outputs, dict(grads_in), dict(tape.param_grads), ordered, cot)

    def module_gradients(self, built, sub, prefix, tensors, floats, cotangent):
        with autograd.recording(sub) as tape:
            out = self.run(sub, tensors, built.training)
        grads_in = tape.backward(np.asarray(cotangent, np.asarray(out).dtype))
        return {k: grads_in[k] for k in floats}, {prefix + k: g for k, g in tape.param_grads.items()}
