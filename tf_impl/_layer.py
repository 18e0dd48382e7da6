"""Mirrors `numpy_ref._module`: the Keras side of `Module`, and the walkers that line Keras up
with numpy_ref's names.

How it differs:
- `Layer` and `Model` are `keras.layers.Layer` and `keras.Model`. Every weight is made in
  `__init__` with `add_weight`, so a layer is built at construction (`built = True`) and Keras
  never traces `call` to build it. `get_config()` returns the Config's fields (`self.cfg`, kept
  by every layer for this); `from_config` rebuilds the Config.
- Keras's `__call__` converts array arguments to tensors of the layer's dtype and rebuilds every
  dict and list on the way: a `cache` would reach `call` as a copy and the caller's would stay
  empty. `__call__` here converts the same arrays itself and hands dicts and lists over as they
  are. Non-tensor positional arguments (GPT-2's `past`, the MLM head's `table`) are accepted.
- `mask` is our own argument (True = attend), not Keras's implicit masking: `compute_mask`
  returns None, so no Keras mask is attached to outputs (and Keras does not warn that one is lost).
- Module's methods are functions of a layer: `named_layers`, `named_weights`, `param_shapes`,
  `load_weights`, `get_weights_dict`; `keras.Model` already owns `load_weights` (a file) and
  `get_weights` (a list).
- Training mode is Keras's `training` call argument (default False), not `train()` / `eval()`.
- `is_symbolic(x)`: a traced tensor has no values, so value checks (ids in range) are skipped.
"""
from __future__ import annotations

import dataclasses

import keras

from conformance.core import trace
from conformance.core.config import Config


class _Twin:
    """What `Layer` and `Model` add to Keras."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True  # every weight is made in __init__
        self._convert_input_args = False  # done in __call__ below
        self._allow_non_tensor_positional_args = True

    def __call__(self, *args, **kwargs):
        def convert(x):  # as Keras converts, but a dict or list (a cache) stays the caller's object
            if isinstance(x, (dict, list)):
                return x
            return self.dtype_policy.convert_input(x, self.autocast, self.input_dtype)

        args, kwargs = list(map(convert, args)), {k: convert(v) for k, v in kwargs.items()}
        leave = trace.entering(self, args, kwargs)  # None unless a trace captures this layer
        out = super().__call__(*args, **kwargs)
        if leave:
            leave(out)
        return out

    def compute_mask(self, inputs, previous_mask):
        return None

    def get_config(self):
        return {**super().get_config(), **self.cfg.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "kind" in config:  # the Config's fields (Linear's config has none)
            fields = [f.name for f in dataclasses.fields(Config) if f.name in config]
            config["cfg"] = Config.from_dict({name: config.pop(name) for name in fields})
        return super().from_config(config)


class Layer(_Twin, keras.layers.Layer):
    """The twin of `Module` for components."""


class Model(_Twin, keras.Model):
    """The twin of `Module` for whole models: a real `keras.Model` (summary, fit, save)."""


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
