"""The Keras twin's deployment formats, each written, reloaded the way a deployment reloads it, and run.

    artifact = keras_export.export(cfg, w, "litert", "bert.tflite", inputs, quantize="int8")
    served = keras_export.load(artifact.format, artifact.path, cfg)   # NumPy in, {output: NumPy} out
    out = served(**inputs)                                            # compared with the float64 reference

`FORMATS` is the one declaration of what `tmirror export --format` offers; `QUANTIZE` of what `--quantize`
offers, the one format each applies to and the tolerance row its error is held to
(`conformance.compare.tolerance.DEPLOYMENT_TOLERANCES`; a quantized artifact is never held to float32's).

- keras: `model.save(PATH.keras)`, reloaded with `keras.saving.load_model` (every tf_impl class is
  registered). A file saved from another class or Config is refused by name before Keras reads it
  (`checks.saved_model`, the refusal `tf_impl._layer.Model.load_weights` makes).
- savedmodel: `model.export(DIR)` on the first call's signature (ids and masks dynamic on every axis),
  reloaded with `tf.saved_model.load` and called through its `serve` endpoint: no tf_impl code needed.
- litert: the SavedModel, converted by `tf.lite.TFLiteConverter` (float32, or with
  `optimizations=[tf.lite.Optimize.DEFAULT]` and no representative dataset: dynamic-range int8, weights
  stored in int8, activations quantized on the fly), run in `ai_edge_litert.interpreter.Interpreter`'s
  `serving_default` signature. Its shapes are fixed, the example inputs': with `None` axes the converter
  cannot lower the attention mask's `ops.cast(mask, "bool")[:, None, None, :]` (a bool `StridedSlice` with
  new axes on a dynamic shape is neither a builtin nor, in `ai-edge-litert`, a flex op).
- onnx: `keras.Model.export(format="onnx")` through `onnx_export` (exporter "keras"), run in onnxruntime
  beside the tf2onnx and torch.onnx graphs (`tmirror export --format onnx` keeps those as its default).

A reloaded artifact checks every call against its own signature first (`Served`): a missing or
unexpected input, another rank, a fixed axis of another size, a float where ids go: a ValueError naming
the input, what the artifact takes and what it received, never TensorFlow's stack trace. (The mirrors'
value checks, ids within the vocabulary, are the exported graph's business: their words do not survive
export.)
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from conformance.backends import onnx_export
from conformance.backends.base import Built
from conformance.backends.build import backend, build
from conformance.core import checks, files
from conformance.core.config import Config
from conformance.spec import registry

FORMATS = {  # format -> what it is (the one declaration: the CLI's choices and help, the docs)
    "keras": "a .keras file (model.save), reloaded with keras.saving.load_model",
    "savedmodel": "a SavedModel folder (model.export), reloaded with tf.saved_model.load, its serving signature",
    "litert": "a .tflite file (tf.lite.TFLiteConverter), run in the ai-edge-litert Interpreter; fixed shapes",
    "onnx": "an ONNX file (keras.Model.export(format='onnx'); the CLI's default: torch.onnx or tf2onnx), "
            "run in onnxruntime",
}
SUFFIX = {"keras": ".keras", "savedmodel": "", "litert": ".tflite", "onnx": ".onnx"}
QUANTIZE = {"int8": ("litert", "int8_dynamic")}  # --quantize -> (the format it applies to, its tolerance row)


@dataclass(frozen=True)
class Artifact:
    format: str
    path: str
    cfg: Config
    quantize: str | None
    seconds: float  # writing it: save, export, conversion (the SavedModel litert converts from included)

    @property
    def size(self) -> int:
        """Bytes on disk (a SavedModel folder: every file under it)."""
        if os.path.isdir(self.path):
            return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(self.path) for f in names)
        return os.path.getsize(self.path)

    @property
    def row(self) -> str:
        """The tolerance row its outputs are held to."""
        return QUANTIZE[self.quantize][1] if self.quantize else "float32"


def check_format(fmt: str, quantize: str | None = None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}; received format={fmt!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {list(QUANTIZE)} or None; received quantize={quantize!r}")
    if quantize is not None and QUANTIZE[quantize][0] != fmt:
        raise ValueError(f"quantize={quantize!r} applies to format={QUANTIZE[quantize][0]!r} only; "
                         f"received format={fmt!r}")


def export(cfg: Config, weights: dict, fmt: str, path, inputs: dict | None = None,
           quantize: str | None = None) -> Artifact:
    """Write `cfg` with `weights` as `fmt` at `path`. `inputs` (default `onnx_export.example_inputs`: every
    model input, ids and masks int64) make the first call, which sets the signature's dtypes, and for
    litert its fixed shapes."""
    check_format(fmt, quantize)
    onnx_export.signature(cfg)  # whole models only, with the same words as ONNX export
    inputs = onnx_export.example_inputs(cfg) if inputs is None else inputs
    path = str(path)
    t0 = time.perf_counter()
    if fmt == "onnx":
        exported = onnx_export.export(cfg, weights, "tf", exporter="keras")
        exported.save(path)
        return Artifact(fmt, path, cfg, None, exported.seconds)
    model = build("tf", cfg, weights, dtype="float32")
    model(**inputs)  # the first call: through the front door, so masks are bool as the mirror takes them
    with onnx_export._quiet():  # TensorFlow's SavedModel and converter logs
        if fmt == "keras":
            model.module.save(path)
        elif fmt == "savedmodel":
            model.module.export(path, verbose=False)
        else:
            files.write(path, _litert(model.module, quantize), "LiteRT file")
    return Artifact(fmt, path, cfg, quantize, time.perf_counter() - t0)


def _litert(module, quantize: str | None) -> bytes:
    """The flatbuffer of a fixed-shape SavedModel of `module` (already called once)."""
    import tempfile

    import keras
    import tensorflow as tf
    with tempfile.TemporaryDirectory() as folder:
        signature = [{k: keras.InputSpec(shape=shape, dtype=dtype, name=k)  # the first call's shapes, fixed
                      for k, (shape, dtype) in module._twin_first_call.items()}]
        module.export(folder, verbose=False, input_signature=signature)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative dataset: dynamic range
        try:
            return converter.convert()
        except Exception as e:  # the converter's MLIR dump (~200 lines): one line
            raise onnx_export.ExportError(f"LiteRT conversion failed: {_unconverted(e)}") from None


def _unconverted(error: Exception) -> str:
    """The ops the converter found no kernel for, with their types, from its message; else its first line."""
    import re
    ops = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", str(error))))
    if not ops:
        return onnx_export._one_line(error)
    typed = dict(re.findall(r"(tf\.\w+)\((tensor<[^>]*>)", str(error)))
    return "no TFLite builtin kernel for " + ", ".join(f"'{op}'" + (f" on {typed[op]}" if op in typed else "")
                                                       for op in ops)


def _given(inputs: dict) -> dict:
    return {k: np.asarray(v) for k, v in inputs.items() if v is not None}


# ------------------------------------------------------------------------------------ reloading

class Served:
    """A reloaded artifact called like the mirrors: NumPy in, {output: NumPy} out, every call checked
    against the artifact's own signature ({input: (shape, dtype)}, None where an axis is dynamic)."""

    def __init__(self, where: str, signature: dict, run):
        self.where, self.signature, self.run = where, signature, run

    def __call__(self, **inputs) -> dict:
        feed = feed_for(self.where, self.signature, _given(inputs))
        with onnx_export._native_output_silenced():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate"
            out = self.run(feed)
        return {k: np.asarray(v) for k, v in out.items()}


def feed_for(where: str, signature: dict, given: dict) -> dict:
    """`given` cast to the signature's dtypes, or a ValueError naming the input, the expected and the received."""
    missing, unexpected = sorted(set(signature) - set(given)), sorted(set(given) - set(signature))
    if missing or unexpected:
        raise ValueError(f"{where} takes inputs {sorted(signature)}; received {sorted(given)}"
                         + (f" (missing {missing})" if missing else "")
                         + (f" (unexpected {unexpected})" if unexpected else ""))
    feed = {}
    for name, (shape, dtype) in signature.items():
        value, dtype = given[name], np.dtype(dtype)
        expected = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"
        if value.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, value.shape)):
            raise ValueError(f"{name} must have shape {expected} ({where}'s signature); received shape {value.shape}")
        floating = dtype.kind == "f"
        if (value.dtype.kind == "f") != floating or value.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be {'a float' if floating else 'an integer or bool'} array, fed as {dtype.name} "
                             f"({where}'s signature); received dtype {value.dtype}")
        feed[name] = value != 0 if dtype == bool else value.astype(dtype)
    return feed


def load(fmt: str, path, cfg: Config):
    """The artifact at `path` reloaded as `fmt` would be deployed, callable with NumPy: a `Built` around the
    `.keras` model (the mirror's front door), a `Served` for the SavedModel and LiteRT, onnxruntime for ONNX."""
    check_format(fmt)
    path = str(path)
    if not os.path.exists(path):
        raise ValueError(f"path must be an existing {fmt} artifact; received {path!r}, which does not exist")
    return {"keras": _load_keras, "savedmodel": _load_savedmodel, "litert": _load_litert,
            "onnx": _load_onnx}[fmt](path, cfg)


def _load_keras(path, cfg):
    import keras

    from tf_impl._layer import saved_config
    entry = registry.get(cfg.kind)
    saved_class, fields = saved_config(path)
    checks.saved_model(path, saved_class, fields, entry.implementation("tf_impl").__name__, cfg.to_dict())
    return Built(backend("tf"), entry, cfg, keras.saving.load_model(path), "float32", False)


def _load_savedmodel(path, cfg):
    import tensorflow as tf
    with onnx_export._quiet():
        served = tf.saved_model.load(path)
    function = served.serve.concrete_functions[0]
    specs = function.structured_input_signature[0][0]  # serve takes one dict of inputs
    signature = {k: (tuple(s.shape), s.dtype.as_numpy_dtype) for k, s in specs.items()}
    return Served(f"the SavedModel {path}", signature,
                  lambda feed: served.serve({k: tf.constant(v) for k, v in feed.items()}))


def _load_litert(path, cfg):
    from ai_edge_litert.interpreter import Interpreter
    with onnx_export._native_output_silenced():
        runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    signature = {k: (tuple(int(d) for d in v["shape"]), v["dtype"]) for k, v in runner.get_input_details().items()}
    return Served(f"the LiteRT file {path}", signature, lambda feed: runner(**feed))


def _load_onnx(path, cfg):
    """An ONNX file of `onnx_export`'s (its metadata_props name the config and the exporter) in onnxruntime."""
    import json

    import onnx
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    if "config" in meta:  # a file of another preset is refused by name, as a .keras file is
        saved = json.loads(meta["config"])
        checks.saved_model(path, registry.get(saved["kind"]).implementation("tf_impl").__name__, saved,
                           registry.get(cfg.kind).implementation("tf_impl").__name__, cfg.to_dict())
    label = meta.get("exporter", "")
    name = ("keras" if "keras.Model.export" in label else "tf2onnx" if "tf2onnx" in label
            else "dynamo" if "dynamo=True" in label else "torchscript")
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    exported = onnx_export.Exported(proto.SerializeToString(), cfg, "torch" if name in ("dynamo", "torchscript") else "tf",
                                    name, opset, 0.0, tuple(i.name for i in proto.graph.input),
                                    tuple(o.name for o in proto.graph.output), meta)
    return onnx_export.build_from(exported)
