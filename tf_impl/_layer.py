"""Mirrors `numpy_ref._module`: the Keras side of `Module`, and the walkers that line Keras up
with numpy_ref's names.

How it differs:
- `Layer` and `Model` are `keras.layers.Layer` and `keras.Model`. Every weight is made in
  `__init__` with `add_weight`, so a layer is built at construction (`built = True`) and Keras
  never traces `call` to build it.
- Every subclass is a Keras citizen without a line of its own (`__init_subclass__`): registered
  as serializable under "tf_impl>ClassName", and its constructor's arguments, recorded as it is
  made (`__new__`), are its `get_config()` (a Config as its fields, under {"Config": {...}});
  `from_config` turns them back into the same constructor call. So `model.save("m.keras")` and
  `keras.saving.load_model("m.keras")` work for every class, and a `.keras` file or a config
  saved from another class or another Config is refused by name (`checks.saved_model`).
- Keras's `__call__` converts array arguments to tensors of the layer's dtype and rebuilds every
  dict and list on the way: a `cache` would reach `call` as a copy and the caller's would stay
  empty. `__call__` here converts the same arrays itself and hands dicts and lists over as they
  are. Non-tensor positional arguments (GPT-2's `past`, the MLM head's `table`) are accepted.
  A single dict of inputs (what `fit`, `predict` and a functional `keras.Input` dict hand a
  model) is unpacked into the call's keyword arguments.
- `Model.export` without an `input_signature` exports the shapes of the model's first call, ids
  and masks dynamic on every axis and a float input on its batch, in one dict keyed by argument name
  (Keras alone would have none: it records shapes only when it builds a layer itself).
- `mask` is our own argument (True = attend), not Keras's implicit masking: `compute_mask`
  returns None, so no Keras mask is attached to outputs (and Keras does not warn that one is lost).
- Module's methods are functions of a layer: `named_layers`, `named_weights`, `param_shapes`,
  `load_weights`, `get_weights_dict`; `keras.Model` already owns `load_weights` (a file) and
  `get_weights` (a list).
- Training mode is Keras's `training` call argument (default False), not `train()` / `eval()`.
- `is_symbolic(x)`: a traced tensor has no values, so value checks (ids in range) are skipped.
"""
from __future__ import annotations

import inspect
import json
import zipfile

import keras

from conformance.core import checks, trace
from conformance.core.config import Config


class _Twin:
    """What `Layer` and `Model` add to Keras."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        keras.saving.register_keras_serializable(package="tf_impl", name=cls.__name__)(cls)

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls, *args, **kwargs)
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = {k: v for k, v in list(bound.arguments.items())[1:]  # less self and Keras's own **kwargs
                     if inspect.signature(cls.__init__).parameters[k].kind is not inspect.Parameter.VAR_KEYWORD}
        object.__setattr__(obj, "_twin_arguments", arguments)  # past Keras's attribute tracking
        return obj

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True  # every weight is made in __init__
        self._convert_input_args = False  # done in __call__ below
        self._allow_non_tensor_positional_args = True

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], dict) and set(args[0]) <= set(_call_arguments(self)):
            args, kwargs = (), {**args[0], **kwargs}  # fit, predict, a functional model: one dict of inputs

        def convert(x):  # as Keras converts, but a dict or list (a cache) stays the caller's object
            if isinstance(x, (dict, list)):
                return x
            return self.dtype_policy.convert_input(x, self.autocast, self.input_dtype)

        args, kwargs = list(map(convert, args)), {k: convert(v) for k, v in kwargs.items()}
        if not hasattr(self, "_twin_first_call"):  # what `Model.export` exports by default
            params = _call_arguments(self)
            named = {**dict(zip(params, args)), **{k: v for k, v in kwargs.items() if k in params}}
            object.__setattr__(self, "_twin_first_call", {k: (tuple(v.shape), checks.dtype_name(v)) for k, v in named.items()
                                                          if hasattr(v, "shape") and hasattr(v, "dtype")})
        leave = trace.entering(self, args, kwargs)  # None unless a trace captures this layer
        out = super().__call__(*args, **kwargs)
        if leave:
            leave(out)
        return out

    def compute_mask(self, inputs, previous_mask):
        return None

    def get_config(self):
        encoded = {k: {"Config": v.to_dict()} if isinstance(v, Config) else v for k, v in self._twin_arguments.items()}
        return {**keras.layers.Layer.get_config(self), "twin": type(self).__name__, **encoded}

    @classmethod
    def from_config(cls, config):
        config = {k: Config.from_dict(v["Config"]) if isinstance(v, dict) and set(v) == {"Config"} else v
                  for k, v in config.items()}
        checks.saved_model("the config", config.pop("twin", cls.__name__), {}, cls.__name__, {})
        return super().from_config(config)


def _call_arguments(layer) -> list[str]:
    return list(inspect.signature(layer.call).parameters)


def input_signature_of(arguments: dict) -> dict:
    """{argument: keras.InputSpec} for {argument: (shape, dtype)}, as `Model.export` exports by default:
    ids and masks dynamic on every axis (any batch, any length), a float tensor on its batch only (its
    other axes are features: a width, ViT's channels and image size)."""
    def spec(name, shape, dtype):
        dims = (None, *shape[1:]) if "float" in dtype else (None,) * len(shape)
        return keras.InputSpec(shape=dims, dtype=dtype, name=name)  # the serving signature's names
    return {k: spec(k, shape, dtype) for k, (shape, dtype) in arguments.items()}


def saved_config(path) -> tuple[str, dict]:
    """(class name, Config fields) of a `.keras` file's model, read from its config.json."""
    with zipfile.ZipFile(path) as archive:
        saved = json.loads(archive.read("config.json"))
    fields = next((v["Config"] for v in saved["config"].values() if isinstance(v, dict) and set(v) == {"Config"}), {})
    return saved["class_name"], fields


class Layer(_Twin, keras.layers.Layer):
    """The twin of `Module` for components."""


class Model(_Twin, keras.Model):
    """The twin of `Module` for whole models: a real `keras.Model` (summary, fit, save, export)."""

    def load_weights(self, filepath, *args, **kwargs):
        """Keras's `load_weights`; a `.keras` file saved from another class or Config is refused by name."""
        if str(filepath).endswith(".keras"):
            saved_class, fields = saved_config(filepath)
            checks.saved_model(str(filepath), saved_class, fields, type(self).__name__, self.cfg.to_dict())
        return super().load_weights(filepath, *args, **kwargs)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Keras's `export`; without `input_signature`, the first call's inputs (`input_signature`)."""
        if input_signature is None and hasattr(self, "_twin_first_call"):
            input_signature = [input_signature_of(self._twin_first_call)]
        return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)


class Shadow:
    """A class attribute that hides a Keras property of the same name (`Layer.output`,
    `Model.layers`) so a sublayer can keep numpy_ref's attribute name. The instance's own value
    wins: TensorFlow and JAX keep it in `__dict__`, torch (an `nn.Module`) in `_modules`."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, layer, owner=None):
        return self if layer is None else getattr(layer, "_modules", {}).get(self.name)


def attributes(layer) -> dict:
    """The instance's attributes in assignment order (torch keeps sublayers apart, in `_modules`)."""
    return {**vars(layer), **getattr(layer, "_modules", {})}


def named_children(layer):
    for name, value in attributes(layer).items():
        if name.startswith("_"):  # Keras's own bookkeeping (`_layers`, `_tracker`, ...)
            continue
        if isinstance(value, keras.layers.Layer):
            yield name, value
        elif isinstance(value, list) and value and isinstance(value[0], keras.layers.Layer):
            for i, child in enumerate(value):
                yield f"{name}.{i}", child


def named_layers(layer, prefix: str = ""):
    """(dotted path, layer) for `layer` and every sublayer, in attribute order."""
    yield prefix, layer
    for name, child in named_children(layer):
        yield from named_layers(child, f"{prefix}.{name}" if prefix else name)


def named_weights(layer):
    """(canonical name, keras.Variable) for every weight, in creation order: path + leaf name."""
    for path, sublayer in named_layers(layer):
        for name, value in attributes(sublayer).items():
            if not name.startswith("_") and isinstance(value, keras.Variable):
                yield (f"{path}.{value.name}" if path else value.name), value


def param_shapes(layer) -> dict[str, tuple]:
    return {name: tuple(v.shape) for name, v in named_weights(layer)}


def load_weights(layer, weights: dict, partial: bool = False):
    """Set every weight from the canonical dict `weights` (name -> np.ndarray), one at a time; `partial`:
    only those `weights` names, the others keep their initial values."""
    for name, variable in named_weights(layer):
        if not partial or name in weights:
            variable.assign(keras.ops.cast(weights[name], variable.dtype))
    return layer


def get_weights_dict(layer) -> dict:
    """The canonical dict back, as NumPy arrays."""
    return {name: keras.ops.convert_to_numpy(v) for name, v in named_weights(layer)}


def is_symbolic(x) -> bool:
    """True while `x` is traced (tf.function, XLA, jax.jit, a Keras functional call): it has a
    shape and a dtype but no values yet."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.is_symbolic_tensor(x)
    if backend == "jax":
        import jax
        return isinstance(x, jax.core.Tracer)
    return bool(getattr(x, "is_meta", False))  # torch: Keras traces functional calls on "meta" tensors
