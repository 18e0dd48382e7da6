"""The seam between the harness and one framework: the `Backend` every framework implements,
and `Built`, a module of one framework with canonical weights loaded, called with NumPy.

    m = build("torch", cfg, w, device="cpu", dtype="float32")
    out = m(input_ids=ids, attention_mask=mask)   # NumPy in, dict of NumPy out
    out, records = m.trace(input_ids=ids)          # {op name: tensor}, same names everywhere
    grads = m.gradients(input_ids=ids)             # every input, weight and tapped tensor's gradient
    c = build("torch", cfg, w, compile="inductor") # or m.compiled("inductor"): the same module, compiled

A backend is the only place that knows a framework: how to construct a module and load
canonical weights into it, turn NumPy inputs into its tensors and back, walk its module tree
for trace names, count its parameters, apply a dtype policy (autocast, TF32), differentiate
(a vector-Jacobian product), run a training step, and which (entry, dtype, device) it runs at
all (`supports`). Nothing outside the backends asks which framework it holds.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from conformance.backends import finite
from conformance.backends.dtypes import DTYPES
from conformance.core import checks, trace
from conformance.core.config import Config
from conformance.spec import registry
from conformance.spec.entry import Entry


@dataclass(frozen=True)
class Gradients:
    """The gradients of L = sum_k sum(out_k * c_k), all NumPy, for one framework and case."""
    outputs: dict      # {output key: forward output}
    inputs: dict       # {float input name: dL/d input}
    params: dict       # {canonical weight name: dL/d weight, canonical layout}
    activations: dict  # {trace key: dL/d tapped tensor}, in forward (trace) order
    cotangents: dict = field(default_factory=dict)  # {output key: c_k}, float64

    def groups(self):
        return {"input": self.inputs, "param": self.params, "activation": self.activations}


def cotangents_for(outputs: dict, seed: int = 0) -> dict:
    """One seeded standard-normal float64 array per output key, drawn in sorted key order."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(np.shape(outputs[k])) for k in sorted(outputs)}


def as_dict(out) -> dict:
    return out if isinstance(out, dict) else {"output": out}


def matmul_operands(n, dtype: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(a, b, FLOPs) of `Backend.matmul_gflops`'s matmul: n an int (square) or (m, k, p)."""
    m, k, p = (n, n, n) if isinstance(n, int) else n
    a, b = (np.random.default_rng(i).standard_normal(shape).astype(dtype) for i, shape in enumerate(((m, k), (k, p))))
    return a, b, 2 * m * k * p


def best_seconds(fn, repeats: int = 3, warm_up: bool = True) -> float:
    """The fastest of `repeats` calls of `fn`, after one call that pays first-call costs."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class Backend:
    """What every framework provides. Subclasses set the class attributes and override the rest."""
    name: str = ""
    package: str | None = None    # the mirror package (numpy_ref, torch_impl, tf_impl); None: no mirror of its own
    dtypes: tuple = DTYPES        # the dtypes it runs
    unsupported: dict = {}        # dtype -> why it does not run it
    devices: tuple = ("cpu",)
    compile_modes: dict = {}      # compile mode -> what it runs, in words; {}: nothing to compile

    # ---- which cases it runs
    def available_devices(self) -> tuple:
        return self.devices

    def supports(self, entry: Entry | None = None, variant: str | None = None, dtype: str = "float32",
                 device: str | None = "cpu") -> str | None:
        """None if this backend runs `entry[variant]` (or any entry) in `dtype` on `device` (None: any
        device); otherwise why not, in words."""
        if dtype not in self.dtypes:
            return self.unsupported.get(dtype, f"{self.name} does not run {dtype}")
        if device is not None and device not in self.available_devices():
            reason = "this machine has none" if device in self.devices else "this harness runs it elsewhere"
            return f"the {self.name} framework runs on {list(self.available_devices())}: {reason}"
        if entry is not None:
            if entry.dtypes is not None and dtype not in entry.dtypes:
                return f"{entry.name} declares dtypes {list(entry.dtypes)}"
            frameworks = entry.variants[variant or "default"].frameworks
            if frameworks is not None and self.name not in frameworks:
                return f"{entry.name}[{variant}] is declared for {list(frameworks)} only"
        return None

    def require(self, dtype: str, device: str | None = None) -> None:
        """Raise a ValueError saying why unless this backend runs `dtype` (on `device`)."""
        if dtype not in self.dtypes:
            raise ValueError(f"{self.name} does not support dtype={dtype!r}: {self.supports(None, None, dtype, None)}")
        why = self.supports(None, None, dtype, device)
        if why:
            raise ValueError(f"{self.name} does not support dtype={dtype!r} on device={device!r}: {why}")

    # ---- construct, load, convert
    def construct(self, entry: Entry, cfg: Config, dtype: str, device: str, **options):
        """`entry`'s module for `cfg` in this framework, `options` its constructor's keyword arguments
        after the entry's own (one layer of a model, `conformance.report.stream`)."""
        raise NotImplementedError

    def construct_for_loading(self, entry: Entry, cfg: Config, dtype: str, device: str, **options):
        """`construct`, for a module whose every weight is loaded next: where a framework can, it skips
        drawing the initial values it would throw away (a streamed run builds layers of 10^8 weights)."""
        return self.construct(entry, cfg, dtype, device, **options)

    def load(self, module, weights, dtype: str, partial: bool = False) -> None:
        """Set `module`'s parameters from `weights` (canonical names -> arrays, any Mapping: read one tensor
        at a time, so a lazy Mapping never has the whole model in memory). `partial`: only the names in
        `weights`; the others stay as constructed (a streamed run loads the part of a model it runs)."""
        raise NotImplementedError

    def inputs(self, inputs: dict, dtype: str, device: str = "cpu") -> dict:
        raise NotImplementedError

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def take_rows(self, x, rows: np.ndarray):
        """The rows `rows` (N',) int of axis 0 of the framework tensor `x`, as a framework tensor (a cache
        reordered for beam search). A framework that cannot keeps the base's refusal: generate without a cache."""
        raise ValueError(f"the {self.name} framework cannot reorder a key/value cache; "
                         f"generate with use_cache=False")

    def run(self, module, inputs, training: bool, call=None):
        """Call `module(**inputs)`, or `module(*args, **kwargs)` for call=(args, kwargs)."""
        raise NotImplementedError

    def require_compile(self, mode) -> None:
        """Raise a ValueError naming `compile`, this framework's modes and `mode` unless it is one of them."""
        if mode not in self.compile_modes:
            raise ValueError(f"compile must be None or one of {list(self.compile_modes)} for framework="
                             f"{self.name!r}; received compile={mode!r}")

    def compile(self, module, mode: str):
        """`module` compiled by `mode` (one of `compile_modes`), called by `run` as the module is. It
        compiles on its first call, and its compiled code lives as long as the returned object."""
        self.require_compile(mode)
        raise NotImplementedError

    def reset_compiled(self) -> None:
        """Forget what earlier compiles cached in the framework itself (beyond their own objects), so the
        next compile traces afresh: a changed module is never served an earlier module's graph."""

    @contextlib.contextmanager
    def transforming(self, module, transform):
        """A context in which `module`'s output is `transform(output)` (a planted change, in whatever is
        traced or compiled while it lasts)."""
        raise ValueError(f"the {self.name} framework cannot change a module's output")
        yield

    def run_method(self, module, method: str, call: tuple, training: bool):
        """Call `module.method(*args, **kwargs)` for call=(args, kwargs), as `run` calls the module (a model's
        `head`, which a streamed run calls alone)."""
        raise NotImplementedError

    def policy(self, dtype: str, device: str):
        """What a call needs beyond its weights' dtype (autocast, TF32), for the length of the call."""
        return contextlib.nullcontext()

    # ---- walk
    def named_modules(self, module):
        return module.named_modules()

    def capturing(self, module, pattern):
        """A context in which modules whose path matches `pattern` report their calls to the tracer."""
        return contextlib.nullcontext()

    def parameters(self, module) -> dict:
        """Canonical weight name -> the framework's own parameter object."""
        raise NotImplementedError

    def num_parameters(self, module) -> int:
        raise NotImplementedError

    def export(self, module, shapes: dict) -> dict[str, np.ndarray]:
        """The loaded weights back out, under canonical names and in canonical layout."""
        raise NotImplementedError

    # ---- differentiate, train
    def gradients(self, built: "Built", inputs: dict, cotangents: dict | None, seed: int) -> Gradients:
        raise ValueError(f"the {self.name} framework computes no gradients")

    def module_gradients(self, built: "Built", sub, prefix: str, tensors: dict, floats: list,
                         cotangent: np.ndarray) -> tuple[dict, dict]:
        raise ValueError(f"the {self.name} framework computes no gradients")

    def argument_names(self, module, args, kwargs) -> dict:
        """{argument name: value} of a call, named by the module's forward signature."""
        import inspect
        return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)

    def apply_lora(self, module, lcfg) -> list[str]:
        """Swap the Linears `lcfg` targets for the mirror's `lora.LoraLinear`, in place: their paths."""
        import importlib
        if self.package is None:
            raise ValueError(f"the {self.name} framework has no LoRA mirror")
        return importlib.import_module(f"{self.package}.lora").apply(module, lcfg)

    def enable_checkpointing(self, module) -> list[str]:
        """Recompute each repeated layer of `module` in backward (the mirror's `training.checkpoint_layers`)."""
        import importlib
        enable = getattr(importlib.import_module(f"{self.package}.training"), "checkpoint_layers", None) \
            if self.package else None
        if enable is None:
            raise ValueError(f"checkpointing=True needs a framework with autograd to checkpoint (torch, tf); "
                             f"received framework={self.name!r}")
        return enable(module)

    def trainer(self, built: "Built", groups: dict, tcfg):
        """The mirror's `training.Trainer` on `built`'s module (`conformance.training`)."""
        import importlib
        if self.package is None:
            raise ValueError(f"the {self.name} framework has no training step")
        package = importlib.import_module(f"{self.package}.training")
        return package.Trainer(built.module, self.parameters(built.module), groups, tcfg, built)

    # ---- measure (conformance.costs): each framework's own counters, where it has them
    def count_flops(self, built: "Built", inputs: dict) -> dict | None:
        """The framework's own FLOP counter on one forward: {"counter", "matmul", "total", ...}; None: none."""
        return None

    def allocator_peaks(self, built: "Built", inputs: dict) -> dict[str, int]:
        """{measure: peak bytes} of one forward from the framework's own allocator statistics."""
        with self.tracking_allocator() as peaks:
            built(**inputs)
        return peaks

    @contextlib.contextmanager
    def tracking_allocator(self):
        """A context whose dict is filled on exit with {measure: peak bytes over the start of the block} from
        the framework's own allocator statistics; empty where it keeps none."""
        yield {}

    def training_memory(self, built: "Built", inputs: dict) -> dict | None:
        """Bytes autograd saves for one forward, and the state per parameter after one AdamW step."""
        return None

    def step_memory(self, trainer, micro_batches) -> dict | None:
        """Peak allocator bytes of one `trainer.step(micro_batches)`; None where there is no allocator record."""
        return None

    def matmul_gflops(self, n, repeats: int, dtype: str = "float32") -> float:
        """GFLOP/s of an (n, n) @ (n, n) matmul in `dtype` (float32 or float64), or (m, k) @ (k, p) for
        n=(m, k, p) (a layer's own shape: a few tokens against a wide weight run at memory speed, not at
        a square matmul's): 2 m k p FLOPs, best of `repeats`."""
        raise NotImplementedError

    # ---- models of other libraries (conformance.compare.external): walk, record calls, rerun one
    separator = "."               # between the components of an external module path

    def external_modules(self, model) -> dict:
        """{path: module} of a model this project did not write (transformers', keras-hub's, a user's)."""
        raise ValueError(f"the {self.name} framework traces no external model")

    def recording_calls(self, model, modules: dict, on_call):
        """A context in which every module of `modules` reports on_call(path, args, kwargs, output)."""
        raise ValueError(f"the {self.name} framework traces no external model")

    def is_tensor(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def owns_parameters(self, module) -> bool:
        """Whether an external module holds parameters, itself or below."""
        raise NotImplementedError

    def fused_activation(self, module) -> str | None:
        """The activation a module applies to its own output (a Keras Dense's), or None."""
        return None

    def like(self, array: np.ndarray, tensor):
        """`array` as a tensor of `tensor`'s dtype and device."""
        raise NotImplementedError

    def call_module(self, module, args, kwargs):
        """Run one module of an external model on its own arguments, no gradients, inference mode."""
        raise NotImplementedError

    def stored_weights(self, model) -> dict[str, np.ndarray]:
        """{weight path: NumPy} of an external model, its own names and layouts ("query.weight")."""
        raise NotImplementedError

    # ---- record
    def environment(self) -> dict:
        """The settings that change this framework's last bits (threads, oneDNN, TF32), for reports."""
        return {}


class Built:
    """A module of one framework with canonical weights loaded, called with NumPy.

    Every call's inputs pass `checks.inputs` first (the same words in every framework). With
    `check_finite` (the default) NaN or inf in a float input is refused, and a call whose outputs go
    non-finite from finite inputs raises `finite.NonFiniteError` naming the first op that did; False
    hands inputs and outputs through as they are (for studying overflow)."""

    def __init__(self, backend: Backend, entry: Entry, cfg: Config, module, dtype: str, training: bool,
                 device: str = "cpu", check_finite: bool = True, compile: str | None = None):
        self.backend, self.entry, self.cfg = backend, entry, cfg
        self.module, self.dtype, self.training, self.device = module, dtype, training, device
        self.framework = backend.name
        self.check_finite = check_finite
        self.signature = entry.signature()  # {input: required}: what the front door lets through
        self.compile = compile  # None: eager; else the backend's compile mode every call runs through
        self.runner = module if compile is None else backend.compile(module, compile)
        self._compiled_submodules: dict = {}  # path -> that submodule compiled alone, for `replay`

    def compiled(self, mode: str) -> "Built":
        """The same module (same weights, no copy) behind a forward compiled by `mode` (`Backend.compile_modes`)."""
        self.backend.require_compile(mode)
        return Built(self.backend, self.entry, self.cfg, self.module, self.dtype, self.training, self.device,
                     self.check_finite, mode)

    def eager_only(self, what: str) -> None:
        """Refuse `what` on a compiled Built: taps and autograd hooks need the eager modules."""
        if self.compile is not None:
            raise ValueError(f"{what} runs the eager modules; this {self.framework} build has compile="
                             f"{self.compile!r}: build it without compile= (conformance.compare.compiled "
                             f"compares a compiled forward module by module)")

    def policy(self):
        return self.backend.policy(self.dtype, self.device)

    def check_inputs(self, inputs: dict, partial: bool = False) -> dict[str, np.ndarray]:
        """`inputs` through the front door (`checks.inputs`) against the module's signature."""
        return checks.inputs(self.entry.cls, inputs, self.signature, self.check_finite, partial)

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        inputs = self.check_inputs(inputs)
        with self.policy():
            out = self.backend.run(self.runner, self.backend.inputs(inputs, self.dtype, self.device), self.training)
        outputs = {k: self.backend.to_numpy(v) for k, v in as_dict(out).items()}
        finite.check_finite(self, inputs, outputs)
        return outputs

    def step(self, input_ids=None, cache: list | None = None, attention_mask=None, **inputs) -> dict:
        """One decoding call that continues from `cache` (the model's key/value list).

        `__call__` converts every input from NumPy; the cache instead stays in the
        framework's own tensors between calls (the model fills the list on the first
        call and appends to it after), so only the new tokens cross the boundary.
        Inputs left None are not passed; what a family's model takes is its
        `conformance.spec.family.Decoding` (e.g. `position_ids`, `decoder_input_ids`).
        """
        self.eager_only("step()")
        if not isinstance(cache, list):
            raise ValueError(f"cache must be a list (empty on the first step); received {type(cache).__name__}")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, **inputs}
        given = self.check_inputs({k: v for k, v in given.items() if v is not None}, partial=True)
        with self.policy():
            tensors = self.backend.inputs(given, self.dtype, self.device)
            out = self.backend.run(self.module, {**tensors, "cache": cache}, False)
        return {k: self.backend.to_numpy(v) for k, v in out.items()}

    def reorder_cache(self, cache: list, rows) -> None:
        """Sequence i of the cache becomes what sequence `rows[i]` was, in every entry of every layer
        (beam search: each beam continues the one it was chosen from). In place; the tensors stay the
        framework's, and `rows` may repeat rows or drop them (N' = len(rows))."""
        rows = np.asarray(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows must be a (N,) integer array; received shape {rows.shape}, dtype {rows.dtype}")
        for layer in cache:
            for name, tensor in layer.items():
                layer[name] = self.backend.take_rows(tensor, rows)

    def trace(self, *, summary=False, full=None, capture=None, **inputs) -> tuple[dict, dict]:
        """(outputs, records): the outputs and every tapped tensor, by trace name.

        summary=True keeps statistics (`trace.Summary`) instead of tensors, except for names
        matching `full` (a glob or several); modules whose path matches `capture` also record their
        inputs and output in `self.calls`, for `replay`.
        """
        self.eager_only("trace()")
        inputs = self.check_inputs(inputs)
        modules = self.backend.named_modules(self.module)
        with trace.recording(modules, self.backend.to_numpy, summary=summary, keep=full,
                             capture=capture) as t, self.backend.capturing(self.module, capture):
            out = self(**inputs)
        self.calls = t.calls
        finite.check_finite(self, inputs, out, t.records)
        return out, t.records

    def gradients(self, cotangents: dict | None = None, seed: int = 0, **inputs) -> Gradients:
        """The gradients of L = sum_k sum(out_k * c_k): of every float input, weight (canonical name and
        layout) and traced activation, as NumPy. `cotangents` {output key: c_k} defaults to seeded
        standard normals (`cotangents_for`)."""
        self.eager_only("gradients()")
        return self.backend.gradients(self, self.check_inputs(inputs), cotangents, seed)

    def submodule(self, path: str):
        modules = dict(self.backend.named_modules(self.module))
        if path not in modules:
            raise ValueError(f"no module at path {path!r}; e.g. {list(modules)[1:4]}")
        return modules[path]

    def convert(self, value):
        """A NumPy argument as this framework's tensor; anything else unchanged."""
        if isinstance(value, np.ndarray):
            return self.backend.inputs({"v": value}, self.dtype, self.device)["v"]
        return value

    def replay(self, path: str, args: list, kwargs: dict):
        """Run the submodule at `path` alone on NumPy inputs (another framework's recorded call); on a
        compiled Built, that submodule compiled alone by the same mode (compiled once, kept)."""
        module = self.submodule(path)
        if self.compile is not None:
            if path not in self._compiled_submodules:
                self._compiled_submodules[path] = self.backend.compile(module, self.compile)
            module = self._compiled_submodules[path]
        with self.policy():
            out = self.backend.run(module, None, self.training,
                                   call=([self.convert(a) for a in args], {k: self.convert(v) for k, v in kwargs.items()}))
        return {k: self.backend.to_numpy(v) for k, v in out.items()} if isinstance(out, dict) \
            else self.backend.to_numpy(out)

    def trace_call(self, args=(), kwargs=None, path: str = "", method: str | None = None) -> tuple:
        """(output, records) of one call, on NumPy arguments, of the submodule at `path` or of the module's
        `method`, traced under this module's names: a part of a model run alone (a streamed run)."""
        kwargs = kwargs or {}
        with trace.recording(self.backend.named_modules(self.module), self.backend.to_numpy) as t, self.policy():
            call = ([self.convert(a) for a in args], {k: self.convert(v) for k, v in kwargs.items()})
            if method is None:
                out = self.backend.run(self.submodule(path), None, self.training, call=call)
            else:
                out = self.backend.run_method(self.module, method, call, self.training)
        outputs = {k: self.backend.to_numpy(v) for k, v in as_dict(out).items()}
        floats = {f"argument {i}": a for i, a in enumerate([*args, *kwargs.values()]) if isinstance(a, np.ndarray)}
        finite.check_finite(self, floats, outputs, t.records)
        return (outputs if isinstance(out, dict) else outputs["output"]), t.records

    def module_gradients(self, path: str, args: list, kwargs: dict, cotangent: np.ndarray) -> tuple[dict, dict]:
        """(input gradients by argument name, weight gradients by canonical name) of the submodule at
        `path` run alone as module(*args, **kwargs) on NumPy inputs, for L = sum(output * cotangent):
        one op's backward, fed the inputs and cotangent of your choice."""
        self.eager_only("module_gradients()")
        sub = self.submodule(path)
        kwargs = {k: v for k, v in kwargs.items() if k != "training"}  # Keras records it; `self.training` rules
        named = self.backend.argument_names(sub, args, kwargs)
        floats = [k for k, v in named.items() if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)]
        tensors = {k: self.convert(v) for k, v in named.items()}
        return self.backend.module_gradients(self, sub, f"{path}." if path else "", tensors, floats, cotangent)

    def num_parameters(self) -> int:
        return self.backend.num_parameters(self.module)

    def weights(self) -> dict[str, np.ndarray]:
        """The loaded weights back out, under canonical names and in canonical layout (a LoRA
        model's adapters too: a mirror exports every parameter its module holds)."""
        held = self.backend.parameters(self.module) if self.backend.package else registry.param_shapes(self.cfg)
        return self.backend.export(self.module, held)
