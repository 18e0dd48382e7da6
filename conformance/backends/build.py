"""`build`: the framework-neutral door to every implementation.

    m = build("torch", cfg, w, device="cpu", dtype="float32")
    out = m(input_ids=ids, attention_mask=mask)   # NumPy in, dict of NumPy out
    c = build("tf", cfg, w, compile="xla")        # the same call, through the backend's compiler

The backends are found by name (`BACKENDS`) and imported when first asked for, so importing
the harness imports no framework.
"""
from __future__ import annotations

import importlib

from conformance import weights as weights_lib
from conformance.backends.base import Backend, Built
from conformance.backends.dtypes import DTYPES
from conformance.core.config import Config
from conformance.core.lora import LoraConfig
from conformance.spec import registry

BACKENDS = {  # framework -> (module, class)
    "numpy": ("conformance.backends.numpy_backend", "NumpyBackend"),
    "torch": ("conformance.backends.torch_backend", "TorchBackend"),
    "tf": ("conformance.backends.tf_backend", "TFBackend"),
    "onnx": ("conformance.backends.onnx_backend", "OnnxBackend"),
}
FRAMEWORKS = ("numpy", "torch", "tf")  # the mirrors; onnx runs an export of torch's or tf's
DEVICES = ("cpu", "cuda")
_instances: dict[str, Backend] = {}


def backend(framework: str) -> Backend:
    if framework not in BACKENDS:
        raise ValueError(f"framework must be one of {list(BACKENDS)}; received framework={framework!r}")
    if framework not in _instances:
        module, cls = BACKENDS[framework]
        _instances[framework] = getattr(importlib.import_module(module), cls)()
    return _instances[framework]


def supports(framework: str, case=None, dtype: str = "float32", device: str | None = "cpu") -> str | None:
    """None if `framework` runs `case` ((entry name, variant) or None) in `dtype` on `device`, else why not."""
    entry, variant = (registry.get(case[0]), case[1]) if case is not None else (None, None)
    return backend(framework).supports(entry, variant, dtype, device)


def load(b: Backend, cfg: Config, weights: dict, device: str = "cpu", dtype: str = "float32",
         training: bool | None = None, check_finite: bool = True, lora=None, checkpointing: bool = False) -> Built:
    """Construct `cfg`'s module in backend `b`, with LoRA adapters where `lora` (a
    `conformance.core.lora.LoraConfig`) targets, and load `weights` (already checked) into it."""
    entry = registry.get(cfg.kind)
    module = b.construct(entry, cfg, dtype, device)
    if lora is not None:
        b.apply_lora(module, lora)
    b.load(module, weights, dtype)
    if checkpointing:
        b.enable_checkpointing(module)
    return Built(b, entry, cfg, module, dtype, entry.training if training is None else training, device,
                 check_finite)


def build(framework: str, cfg: Config, weights: dict, device: str = "cpu", dtype: str = "float32",
          training: bool | None = None, source: str | None = None, exporter: str | None = None,
          check_finite: bool = True, compile: str | None = None, lora=None, checkpointing: bool = False) -> Built:
    """`compile`: None (eager) or one of the backend's `compile_modes` (torch: "inductor"; tf: "function",
    "xla"), through which every call runs.
    `source` (framework="onnx" only): "torch" (default) or "tf", the mirror the graph is exported
    from; `exporter` picks one exporter of that source (see `conformance.backends.onnx_export`).
    `check_finite=False` lets NaN and inf through, in weights, inputs and outputs (see `Built`).
    `lora` (a `conformance.core.lora.LoraConfig`): adapters on its targets; `weights` then holds the
    base model's weights and every adapter's (`conformance.core.lora.initialize`).
    `checkpointing=True` (torch, tf): every repeated layer recomputed in backward instead of keeping
    its activations (`torch_impl.training.checkpoint_layers`): a build option, not a Config field, because it
    changes memory and time, never a number, and the reference has no autograd graph to checkpoint."""
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config (presets.get(name), weights.load_config(path) or "
                         f"Config(kind=...)); received {type(cfg).__name__}")
    if not isinstance(check_finite, bool):
        raise ValueError(f"check_finite must be True or False; received check_finite={check_finite!r}")
    if framework != "onnx" and (source is not None or exporter is not None):
        raise ValueError(f"source= and exporter= go with framework='onnx' only; received framework={framework!r}, "
                         f"source={source!r}, exporter={exporter!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; received dtype={dtype!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}; received device={device!r}")
    b = backend(framework)
    if compile is not None:
        b.require_compile(compile)
    b.require(dtype, device)
    if lora is not None and not isinstance(lora, LoraConfig):
        raise ValueError(f"lora must be None or a conformance.core.lora.LoraConfig; received {type(lora).__name__}")
    if lora is not None and framework == "onnx":
        raise ValueError("lora= builds a mirror (numpy, torch, tf); for onnx, merge the adapters first "
                         "(conformance.core.lora.merge) and export the plain model")
    weights_lib.check(cfg, weights, finite=check_finite, lora=lora)
    if framework == "onnx":
        entry = registry.get(cfg.kind)
        return Built(b, entry, cfg, b.construct_exported(cfg, weights, source or "torch", exporter), dtype, False,
                     check_finite=check_finite)
    if not isinstance(checkpointing, bool):
        raise ValueError(f"checkpointing must be True or False; received checkpointing={checkpointing!r}")
    built = load(b, cfg, weights, device, dtype, training, check_finite, lora, checkpointing)
    return built if compile is None else built.compiled(compile)


def environment(frameworks=FRAMEWORKS) -> dict:
    """Every setting of these frameworks that changes the last bits (threads, oneDNN, TF32), for reports."""
    env = {}
    for framework in frameworks:
        env.update(backend(framework).environment())
    return env
