"""`build`: the framework-neutral door to every implementation.

    m = build("torch", cfg, w, device="cpu", dtype="float32")
    out = m(input_ids=ids, attention_mask=mask)   # NumPy in, dict of NumPy out
    records = m.trace(input_ids=ids)               # {op name: tensor}, same names everywhere

A `Backend` knows the few things that differ per framework: how to construct and load
a module, how to turn NumPy inputs into its tensors and back, how to walk its module
tree for trace names, and how to count its parameters. Everything else is shared.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from conformance.backends import precision
from conformance.spec import registry
from conformance.core import trace
from conformance import weights as weights_lib
from conformance.core.config import Config

FRAMEWORKS = ("numpy", "torch", "tf")
DTYPES = precision.DTYPES  # float64, float32, tf32, bfloat16, float16, mixed_*: see conformance.backends.precision


class Built:
    """A module of one framework with canonical weights loaded, called with NumPy."""

    def __init__(self, backend, entry, cfg, module, dtype, training):
        self.backend, self.entry, self.cfg = backend, entry, cfg
        self.module, self.dtype, self.training = module, dtype, training
        self.framework = backend.name

    device = "cpu"
    check_finite = True  # bfloat16/float16: inf/NaN outputs raise precision.NonFiniteError naming the op

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        with precision.policy(self):  # autocast, TF32, this build's device
            out = self.backend.run(self.module, self.backend.inputs(inputs, self.dtype, self.device), self.training)
        if not isinstance(out, dict):
            out = {"output": out}
        outputs = {k: self.backend.to_numpy(v) for k, v in out.items()}
        precision.check_finite(self, inputs, outputs)
        return outputs

    def step(self, input_ids, cache: list, attention_mask=None) -> dict[str, np.ndarray]:
        """One decoding call that continues from `cache` (GPT-2's key/value list).

        `__call__` converts every input from NumPy; the cache instead stays in the
        framework's own tensors between calls (the model fills the list on the first
        call and appends to it after), so only the new tokens cross the boundary.
        """
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        with precision.policy(self):
            tensors = self.backend.inputs(inputs, self.dtype, self.device)
            out = self.backend.run(self.module, {**tensors, "cache": cache}, False)
        return {k: self.backend.to_numpy(v) for k, v in out.items()}

    def trace(self, *, summary=False, full=None, capture=None, **inputs) -> tuple[dict, dict]:
        """(outputs, records): the outputs and every tapped tensor, by trace name.

        summary=True keeps statistics (`trace.Summary`) instead of tensors, except for names
        matching `full` (a glob or several); modules whose path matches `capture` also record their
        inputs and output in `self.calls`, for `replay`.
        """
        modules = self.backend.named_modules(self.module)
        with trace.recording(modules, self.backend.to_numpy, summary=summary, keep=full,
                             capture=capture) as t, self.backend.capturing(self.module, capture):
            out = self(**inputs)
        self.calls = t.calls
        precision.check_finite(self, inputs, out, t.records)
        return out, t.records

    def gradients(self, cotangents: dict | None = None, seed: int = 0, **inputs):
        """`conformance.compare.gradients.Gradients` of L = sum_k sum(out_k * c_k): the gradient of every float
        input, weight (canonical name and layout) and traced activation, as NumPy. `cotangents`
        {output key: c_k} defaults to seeded standard normals (`gradients.cotangents_for`)."""
        from conformance.compare import gradients
        return gradients.gradients(self, inputs, cotangents, seed)

    def submodule(self, path: str):
        modules = dict(self.backend.named_modules(self.module))
        if path not in modules:
            raise ValueError(f"no module at path {path!r}; e.g. {list(modules)[1:4]}")
        return modules[path]

    def replay(self, path: str, args: list, kwargs: dict):
        """Run the submodule at `path` alone on NumPy inputs (another framework's recorded call)."""
        convert = lambda v: self.backend.inputs({"v": v}, self.dtype, self.device)["v"] if isinstance(v, np.ndarray) else v  # noqa: E731
        with precision.policy(self):
            out = self.backend.run(self.submodule(path), None, self.training,
                                   call=([convert(a) for a in args], {k: convert(v) for k, v in kwargs.items()}))
        return {k: self.backend.to_numpy(v) for k, v in out.items()} if isinstance(out, dict) \
            else self.backend.to_numpy(out)

    def num_parameters(self) -> int:
        return self.backend.num_parameters(self.module)

    def weights(self) -> dict[str, np.ndarray]:
        """The loaded weights back out, under canonical names and in canonical layout."""
        return self.backend.export(self.module, registry.param_shapes(self.cfg))


class NumpyBackend:
    name = "numpy"

    def construct(self, cls, args, dtype, device):
        _cpu_only(self.name, device)
        return cls(*args)

    def load(self, module, weights, dtype):
        module.load_weights(weights, dtype)

    def inputs(self, inputs, dtype, device="cpu"):
        return {k: _cast(v, dtype) for k, v in inputs.items()}

    def run(self, module, inputs, training, call=None):
        """Call `module(**inputs)`, or `module(*args, **kwargs)` for call=(args, kwargs)."""
        args, kwargs = call or ((), inputs)
        module.train(training)
        return module(*args, **kwargs)

    def capturing(self, module, pattern):
        return contextlib.nullcontext()  # Module.__call__ reports to the tracer itself

    def to_numpy(self, x):
        return np.asarray(x)

    def named_modules(self, module):
        return module.named_modules()

    def num_parameters(self, module):
        return sum(int(np.prod(p.shape)) for _, p in module.named_parameters())

    def export(self, module, shapes):
        return {k: np.asarray(v) for k, v in module.named_parameters()}


class TorchBackend:
    name = "torch"

    def __init__(self):
        import torch
        self.torch = torch

    def construct(self, cls, args, dtype, device):
        if device == "cuda" and not self.torch.cuda.is_available():
            raise ValueError("device='cuda' requested but torch sees no CUDA device")
        return cls(*args).to(device=device, dtype=getattr(self.torch, precision.parameter_dtype(dtype)))

    def load(self, module, weights, dtype):
        from conformance.weights import mapping
        state = {}
        for name, array in weights.items():
            key, value = mapping.to_torch(name, array)
            state[key] = self.torch.from_numpy(np.ascontiguousarray(value))
        module.load_state_dict(state, strict=True)

    def inputs(self, inputs, dtype, device="cpu"):
        return {k: precision.torch_tensor(v, dtype, device) for k, v in inputs.items()}

    def run(self, module, inputs, training, call=None):
        args, kwargs = call or ((), inputs)
        module.train(training)
        with self.torch.no_grad():
            return module(*args, **kwargs)

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

    def to_numpy(self, x):
        return precision.torch_to_numpy(x)  # bfloat16 stays bfloat16 (ml_dtypes), as in Keras

    def named_modules(self, module):
        return module.named_modules()

    def num_parameters(self, module):
        return sum(p.numel() for p in module.parameters())

    def export(self, module, shapes):
        from conformance.weights import mapping
        state = module.state_dict()
        return {name: mapping.from_torch(name, self.to_numpy(state[mapping.torch_name(name)]))
                for name in shapes}


class TFBackend:
    name = "tf"

    def __init__(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras
        from tf_impl import _layer
        self.keras, self.layer = keras, _layer

    def construct(self, cls, args, dtype, device):
        _cpu_only(self.name, device)
        return cls(*args, dtype=dtype)

    def load(self, module, weights, dtype):
        self.layer.load_weights(module, weights)

    def inputs(self, inputs, dtype, device="cpu"):
        return {k: self.keras.ops.convert_to_tensor(_cast(v, dtype)) for k, v in inputs.items()}

    def capturing(self, module, pattern):
        return contextlib.nullcontext()  # tf_impl's Layer.__call__ reports to the tracer itself

    def run(self, module, inputs, training, call=None):
        args, kwargs = call or ((), inputs)
        # Keras decorates an exception raised inside call() with argument info and ANSI codes;
        # with filtering off it passes the mirror's ValueError through word for word.
        config = self.keras.config
        filtering = config.is_traceback_filtering_enabled()
        config.disable_traceback_filtering()
        try:
            return module(*args, **kwargs, training=training)
        finally:
            if filtering:
                config.enable_traceback_filtering()

    def to_numpy(self, x):
        return self.keras.ops.convert_to_numpy(x)

    def named_modules(self, module):
        return self.layer.named_layers(module)

    def num_parameters(self, module):
        return sum(int(np.prod(v.shape)) for _, v in self.layer.named_weights(module))

    def export(self, module, shapes):
        return self.layer.get_weights_dict(module)


class OnnxBackend:
    """onnxruntime running a graph exported from the PyTorch or Keras mirror (`conformance.backends.onnx_export`).

    The module is an `onnx_export.Session`; it validates inputs with the mirrors' checks. Traced
    runs record the module outputs the graph keeps, under the reference's trace names.
    """
    name = "onnx"

    def construct_exported(self, cfg, weights, source, device, exporter=None):
        from conformance.backends import onnx_export
        _cpu_only(self.name, device)
        return onnx_export.Session(onnx_export.export(cfg, weights, source, exporter=exporter))

    def inputs(self, inputs, dtype, device="cpu"):
        return dict(inputs)  # the session validates, fills left-out optional inputs and casts to int64

    def run(self, module, inputs, training, call=None):
        if call is not None:
            raise ValueError("an exported ONNX graph has no submodule to replay")
        if trace._active is None:
            return module.run(inputs)
        out, records = module.run_traced(inputs)
        for name, value in records.items():
            trace._active.records[name] = trace._active.store(name, value)
        return out

    def capturing(self, module, pattern):
        return contextlib.nullcontext()

    def to_numpy(self, x):
        return np.asarray(x)

    def named_modules(self, module):
        return [("", module)]

    def num_parameters(self, module):
        return module.num_parameters()

    def export(self, module, shapes):
        raise ValueError("an ONNX graph does not give canonical weights back; use the weights it was exported from")


BACKENDS = {"numpy": NumpyBackend, "torch": TorchBackend, "tf": TFBackend, "onnx": OnnxBackend}
_instances: dict = {}


def backend(framework: str):
    if framework not in BACKENDS:
        raise ValueError(f"framework must be one of {list(BACKENDS)}; received framework={framework!r}")
    if framework not in _instances:
        _instances[framework] = BACKENDS[framework]()
    return _instances[framework]


def build(framework: str, cfg: Config, weights: dict, device: str = "cpu", dtype: str = "float32",
          training: bool | None = None, source: str | None = None, exporter: str | None = None) -> Built:
    """`source` (framework="onnx" only): "torch" (default) or "tf", the mirror the graph is exported
    from; `exporter` picks one exporter of that source (see `conformance.backends.onnx_export`)."""
    if framework == "onnx":
        return _build_onnx(cfg, weights, device, dtype, source or "torch", exporter)
    if source is not None or exporter is not None:
        raise ValueError(f"source= and exporter= go with framework='onnx' only; received framework={framework!r}, "
                         f"source={source!r}, exporter={exporter!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; received dtype={dtype!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda'; received device={device!r}")
    entry = registry.get(cfg.kind)
    weights_lib.check(cfg, weights)
    b = backend(framework)
    precision.require(framework, dtype)
    module = b.construct(entry.implementation(framework), entry.args(cfg), dtype, device)
    b.load(module, weights, dtype)
    built = Built(b, entry, cfg, module, dtype, entry.training if training is None else training)
    built.device = device
    return built


def _build_onnx(cfg, weights, device, dtype, source, exporter) -> Built:
    if dtype != "float32":
        raise ValueError(f"the onnx framework runs float32 exports; received dtype={dtype!r}")
    entry = registry.get(cfg.kind)
    weights_lib.check(cfg, weights)
    b = backend("onnx")
    return Built(b, entry, cfg, b.construct_exported(cfg, weights, source, device, exporter), dtype, False)


def _cast(x, dtype):
    return precision.cast_input(x, dtype)  # floats to the parameter dtype (float32 for mixed_*, tf32)


def _cpu_only(framework, device):
    if device != "cpu":
        raise ValueError(f"the {framework} framework runs on device='cpu' here; received device={device!r}")
