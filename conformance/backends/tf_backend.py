"""Keras 3 on TensorFlow as a backend: `tf_impl` layers on the CPU, every dtype but tf32 (a GPU
mode), mixed precision through Keras dtype policies, gradients from one `tf.GradientTape`.
`tf_impl` names its variables canonically, so the weight mapping is the identity. Construct,
load and run use Keras alone, so the same backend runs tf_impl under another KERAS_BACKEND
(`conformance.compare.keras_backends`)."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os

import numpy as np

from conformance.backends.base import Backend, Gradients, as_dict, best_seconds, cotangents_for, matmul_operands
from conformance.backends.dtypes import DTYPES, cast_input
from conformance.core import trace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402  (TensorFlow itself only for its GradientTape: Keras may run on another backend)

from tf_impl import _layer  # noqa: E402


DATA_MOVEMENT = {"Const", "Placeholder", "ReadVariableOp", "Reshape", "Transpose", "Identity", "StridedSlice",
                 "GatherV2", "Cast", "ConcatV2", "ExpandDims", "Squeeze", "Pack", "Shape", "Range", "NoOp",
                 "Fill", "ZerosLike", "OnesLike", "BroadcastTo"}  # ops that move data: no FLOPs to miss


def keras_layers(layer, path: str = "", seen: set | None = None):
    """(path, layer) for `layer` ("") and every layer below it, depth first, paths joined by "/" as Keras's
    variable paths are (`transformer_layer_0/self_attention_layer/query`); a layer reached twice keeps its first."""
    seen = {id(layer)} if seen is None else seen
    yield path, layer
    for child in layer._flatten_layers(include_self=False, recursive=False):
        if id(child) not in seen:
            seen.add(id(child))
            yield from keras_layers(child, f"{path}/{child.name}" if path else child.name, seen)


@contextlib.contextmanager
def _zero_initialized():
    """Layers built in this block give every `add_weight` the zeros initializer, whatever they ask for."""
    layer = keras.layers.Layer
    add_weight = layer.add_weight

    def zeros(self, *args, **kwargs):
        return add_weight(self, *args, **{**kwargs, "initializer": "zeros"})

    layer.add_weight = zeros
    try:
        yield
    finally:
        layer.add_weight = add_weight


@contextlib.contextmanager
def _plain_errors():
    """Keras decorates an exception raised inside call() with argument info and ANSI codes; with
    filtering off it passes the mirror's ValueError through word for word."""
    config = keras.config
    filtering = config.is_traceback_filtering_enabled()
    config.disable_traceback_filtering()
    try:
        yield
    finally:
        if filtering:
            config.enable_traceback_filtering()


class TFBackend(Backend):
    name = "tf"
    package = "tf_impl"
    dtypes = tuple(d for d in DTYPES if d != "tf32")
    unsupported = {"tf32": "TF32 is a GPU mode and the tf framework runs on cpu only in this harness"}
    compile_modes = {"function": "tf.function: one TensorFlow graph (Grappler's rewrites, oneDNN kernels)",
                     "xla": "tf.function(jit_compile=True): the graph compiled by XLA (fused CPU kernels)"}

    def construct(self, entry, cfg, dtype, device, **options):
        return entry.construct(self.package, cfg, **options, dtype=dtype)

    def construct_for_loading(self, entry, cfg, dtype, device, **options):
        """Every weight starts at zeros. Not only time: a random initializer's temporaries stay in the
        pool of TensorFlow's CPU allocator (oneDNN's), which never shrinks; llama3-8b's layer built with
        its RandomNormal leaves 1.47 GiB resident for 0.81 GiB of variables, with zeros 0.85 GiB."""
        with _zero_initialized():
            return self.construct(entry, cfg, dtype, device, **options)

    def load(self, module, weights, dtype, partial=False):
        _layer.load_weights(module, weights, partial)

    def inputs(self, inputs, dtype, device="cpu"):
        return {k: keras.ops.convert_to_tensor(cast_input(v, dtype)) for k, v in inputs.items()}

    def run(self, module, inputs, training, call=None):
        args, kwargs = call or ((), inputs)
        with _plain_errors():
            return module(*args, **kwargs, training=training)

    def run_method(self, module, method, call, training):
        """A method is no Keras call: it takes no `training`, and the layers it calls run in inference mode."""
        if training:
            raise ValueError(f"the tf framework runs a model's {method} alone in inference only; "
                             f"received training=True")
        with _plain_errors():
            return getattr(module, method)(*call[0], **call[1])

    def compile(self, module, mode):
        """`tf.function(module)`, with `jit_compile=True` for "xla": called by `run` as the layer is (`training`
        a Python bool, so each value traces its own graph). TensorFlow itself, whatever KERAS_BACKEND says."""
        self.require_compile(mode)
        import tensorflow as tf
        return tf.function(module, jit_compile=mode == "xla", autograph=False)

    @contextlib.contextmanager
    def transforming(self, module, transform):
        """The layer's `call` replaced, on the instance, by one whose output passes through `transform`."""
        original = module.call
        object.__setattr__(module, "call", lambda *args, **kwargs: transform(original(*args, **kwargs)))
        try:
            yield
        finally:
            object.__delattr__(module, "call")

    def to_numpy(self, x):
        if len(getattr(x, "shape", (0,))) == 0:  # TensorFlow cannot hand over a 0-d bfloat16 tensor (Mixtral's aux_loss)
            return keras.ops.convert_to_numpy(keras.ops.reshape(x, (1,))).reshape(())
        return keras.ops.convert_to_numpy(x)

    def take_rows(self, x, rows):
        return keras.ops.take(x, keras.ops.convert_to_tensor(rows), axis=0)

    def named_modules(self, module):
        return _layer.named_layers(module)

    def parameters(self, module):
        return dict(_layer.named_weights(module))

    def num_parameters(self, module):
        return sum(int(np.prod(v.shape)) for _, v in _layer.named_weights(module))

    def export(self, module, shapes):
        return _layer.get_weights_dict(module)

    def argument_names(self, module, args, kwargs):
        return dict(inspect.signature(module.call).bind_partial(*args, **kwargs).arguments)

    # ---- external models: each Keras layer's `call` intercepted
    separator = "/"  # keras-hub's variable paths: transformer_layer_0/self_attention_layer/query

    def external_modules(self, model):
        if not isinstance(model, keras.Layer):
            raise ValueError(f"expected a keras.Model or keras.Layer; received {type(model).__name__}")
        return dict(keras_layers(model))

    @contextlib.contextmanager
    def recording_calls(self, model, modules, on_call):
        """Each layer's `call` replaced, on the instance, by one that reports (path, args, kwargs, output)."""
        def wrap(path, original):
            def call(*args, **kwargs):
                output = original(*args, **kwargs)
                on_call(path, args, kwargs, output)
                return output
            return call
        wrapped = [(layer, layer.call) for path, layer in modules.items() if path]
        for (path, layer), (_, original) in zip([(p, la) for p, la in modules.items() if p], wrapped):
            object.__setattr__(layer, "call", wrap(path, original))
        try:
            yield
        finally:
            for layer, _ in wrapped:
                object.__delattr__(layer, "call")

    def is_tensor(self, x):
        return keras.ops.is_tensor(x)

    def owns_parameters(self, module):
        return bool(module.weights)

    def fused_activation(self, module):
        activation = getattr(module, "activation", None)
        if activation is None or activation is keras.activations.linear or not callable(activation) \
                or not isinstance(module, (keras.layers.Dense, keras.layers.EinsumDense)):
            return None
        return getattr(activation, "__name__", type(activation).__name__)

    def like(self, array, tensor):
        return keras.ops.convert_to_tensor(np.asarray(array).astype(keras.backend.standardize_dtype(tensor.dtype)))

    def call_module(self, module, args, kwargs):
        return module(*args, **{k: v for k, v in kwargs.items() if k != "training"}, training=False)

    def stored_weights(self, model):
        """A subclassed model's variable paths start with its own name (`my_gpt2/wte/embeddings`); its
        layers' paths do not (`wte`): the prefix is dropped so the two line up."""
        return {v.path.removeprefix(f"{model.name}/"): keras.ops.convert_to_numpy(v) for v in model.weights}

    def gradients(self, built, inputs, cotangents, seed):
        import tensorflow as tf
        module = built.module
        tensors = self.inputs(inputs, built.dtype)
        leaves = {k: t for k, t in tensors.items() if t.dtype.is_floating}
        tapped = {}

        def on_tap(key, x):
            if tf.is_tensor(x) and x.dtype.is_floating:
                tapped[key] = x

        with tf.GradientTape() as tape, trace.recording(self.named_modules(module), self.to_numpy, on_tap=on_tap):
            tape.watch(list(leaves.values()))
            out = as_dict(self.run(module, tensors, built.training))
            outputs = {k: self.to_numpy(v) for k, v in out.items()}
            cot = cotangents or cotangents_for(outputs, seed)
            loss = tf.add_n([tf.reduce_sum(out[k] * tf.constant(c, dtype=out[k].dtype)) for k, c in cot.items()])
        variables = self.parameters(module)
        grads = tape.gradient(loss, {"inputs": leaves, "params": variables, "activations": tapped})

        def to_numpy(g, like):  # an input or weight the loss does not reach: zeros; tables: IndexedSlices
            return np.zeros(tuple(like.shape), like.dtype.name) if g is None else self.to_numpy(tf.convert_to_tensor(g))

        # a tapped tensor that depends on no watched tensor (a constant) gets None: left out, as in torch
        return Gradients(outputs, {k: to_numpy(g, leaves[k]) for k, g in grads["inputs"].items()},
                         {k: to_numpy(g, variables[k]) for k, g in grads["params"].items()},
                         {k: self.to_numpy(tf.convert_to_tensor(grads["activations"][k])) for k in tapped
                          if grads["activations"][k] is not None}, cot)  # tf.nest sorted the keys: trace order back

    def module_gradients(self, built, sub, prefix, tensors, floats, cotangent):
        import tensorflow as tf
        variables = {prefix + k: v for k, v in _layer.named_weights(sub)}
        with tf.GradientTape() as tape:
            tape.watch([tensors[k] for k in floats])
            out = self.run(sub, tensors, built.training)
            loss = tf.reduce_sum(out * tf.constant(cotangent, dtype=out.dtype))
        grads = tape.gradient(loss, {"inputs": {k: tensors[k] for k in floats}, "params": variables},
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        to_numpy = lambda g: self.to_numpy(tf.convert_to_tensor(g))  # noqa: E731
        return ({k: to_numpy(g) for k, g in grads["inputs"].items()},
                {k: to_numpy(g) for k, g in grads["params"].items()})

    def count_flops(self, built, inputs):
        """TensorFlow's own count on a concrete graph of one forward (`tf.compat.v1.profiler`
        float_operation), and the float ops its registry has no formula for (Erf, Tanh, SelectV2, ...)."""
        import tensorflow as tf
        from tensorflow.python.framework import ops as tf_ops
        importlib.import_module("tensorflow.python.profiler.internal.flops_registry")  # registers the formulas
        x = self.inputs(inputs, built.dtype)
        specs = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in x.items()}
        graph = tf.function(lambda x: built.module(**x, training=False)).get_concrete_function(specs).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        level = tf.get_logger().level
        tf.get_logger().setLevel("ERROR")  # the v1 profiler warns that its shape helper is deprecated
        try:  # and writes "N ops no flops stats due to incomplete shapes" (a MoE's experts) to sys.stderr:
            with contextlib.redirect_stderr(io.StringIO()):  # counted below as `unsized_ops`, and reported
                total = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
        finally:
            tf.get_logger().setLevel(level)
        by_type, missed, unsized = {}, {}, {}
        for op in graph.get_operations():
            if op.outputs and not op.outputs[0].shape.is_fully_defined():  # data-dependent rows: a MoE expert's
                unsized[op.type] = unsized.get(op.type, 0) + 1   # (the profiler's formulas need static shapes)
                continue
            value = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            floating = op.outputs and op.outputs[0].dtype.is_floating
            if value is not None:
                by_type[op.type] = by_type.get(op.type, 0) + int(value)
            elif op.type not in DATA_MOVEMENT and floating:
                missed[op.type] = missed.get(op.type, 0) + int(np.prod(op.outputs[0].shape))
        matmul = sum(v for k, v in by_type.items() if "MatMul" in k)
        return {"counter": "tf.compat.v1.profiler float_operation (MatMul + BatchMatMul)", "total": int(total),
                "matmul": matmul, "by_op_type": by_type, "missed_elements": missed, "unsized_ops": unsized}

    def matmul_gflops(self, n, repeats, dtype="float32"):
        import tensorflow as tf
        a, b, flops = matmul_operands(n, dtype)
        a, b = tf.constant(a), tf.constant(b)
        return flops / best_seconds(lambda: tf.linalg.matmul(a, b).numpy(), repeats) / 1e9

    def environment(self):
        import tensorflow as tf
        env = {"tensorflow": tf.__version__, "keras": keras.__version__,
               "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
               "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
               "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TF default: on for x86 CPUs)"),
               "tf_tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
               "tf_gpus": len(tf.config.list_physical_devices("GPU"))}
        capable = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) >= (8, 0)
                   for g in tf.config.list_physical_devices("GPU")]
        env["tf_tf32_effective"] = env["tf_tf32"] and any(capable)  # TensorFlow's default on Ampere and later
        return env
