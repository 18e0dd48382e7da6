"""ONNX export from the PyTorch and Keras mirrors, run in onnxruntime as a fourth backend.

    exported = onnx_export.export(cfg, w, "torch")     # torch.onnx (torch.export; TorchScript fallback)
    exported = onnx_export.export(cfg, w, "tf")        # tf2onnx from a tf.function, dynamic signature
    exported = onnx_export.export(cfg, w, "tf", exporter="keras")   # keras.Model.export(format="onnx")
    exported.save("bert.onnx")
    m = build("onnx", cfg, w, source="torch")          # onnxruntime: NumPy in, dict of NumPy out
    out, records = m.trace(**inputs)                   # the values the graph keeps, by trace name
    first_divergence(reference_trace, records)         # the first kept op out of tolerance
    section = onnx_section(cfg, w); print(markdown(section))   # the report section

Exporters. PyTorch: `torch.onnx.export(dynamo=True)` (torch.export, then the ONNX translation);
if it raises, or does not deliver the requested opset, the TorchScript exporter
(`dynamo=False`) runs and the first one's reason is kept (`Exported.fallback`). Keras: a
`tf.function` whose input signature has `None` batch and sequence axes, converted by
`tf2onnx.convert.from_function`; or, asked for by name (`exporter="keras"`, never in the default chain),
Keras's own `keras.Model.export(format="onnx")` on the first call's signature (`tf_impl`'s `Model.export`),
which on TensorFlow is tf2onnx again, from Keras's traced call (the same tf2onnx fixes below apply: without
them Llama's graph fails at any batch other than the export's). Every token input is an int64 `(B, T)` array whose batch and
sequence axes are dynamic (a decoder's sequence axis is its own); a float input (ViT's pixel_values
(B, C, H, W)) is float32 with a dynamic batch axis and the rest fixed. Every model input is a graph input:
an optional one left out of a call gets the value the model would have used (a mask of ones,
segment ids of zeros). The file carries `metadata_props`: preset, weights fingerprint, source
framework, opset, exporter, config. `onnx.checker.check_model(full_check=True)` runs on it.

A failed export (an op the exporter cannot convert, an opset it refuses, an exporter bug) is an
`ExportError`: one line naming the exporter and the reason, never a traceback or a hang.

Trace names inside ONNX. Both exporters keep the module scope of each node: torch.onnx in the
node's `pkg.torch.onnx.name_scopes` metadata, the TorchScript exporter and tf2onnx in the node
name (`/encoder.0/attention/query/MatMul`, `bert_1/encoder.0_1/attention_1/query_1/add`). The
output of module `P` (trace name `P.output`, the k-th call `P.output#k`) is the float value made
inside `P`'s scope and used outside it. Those values become extra graph outputs, so a run returns
them under the reference's trace names; taps inside a module's own code (attention's `q`,
`scores`, `probs`, ...) have no scope of their own and are not kept.
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import io
import json
import logging
import os
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from conformance.core import checks, files
from conformance.backends.base import Built
from conformance.backends.build import backend, build
from conformance.spec import families, presets, registry
from conformance import weights as weights_lib
from conformance.core.config import Config

SOURCES = ("torch", "tf")
EXPORTERS = {"torch": ("dynamo", "torchscript"), "tf": ("tf2onnx",)}  # each source's default chain, in order
ON_REQUEST = {"torch": (), "tf": ("keras",)}  # exporters run only when named: keras.Model.export(format="onnx")
DEFAULT_OPSET = 18  # the highest opset both tf2onnx 1.17 and torch.onnx write
EXAMPLE_BATCH, EXAMPLE_LENGTH = 2, 5  # export shapes; tests run others (batch 3, sequence 17)
FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
CACHE_LIMIT_BYTES = 128 * 2**20  # `export` keeps exports up to this size for the process


class ExportError(ValueError):
    """An export that failed: one line naming the exporter and why."""


# ----------------------------------------------------------------------------------- export

@dataclass(frozen=True)
class Exported:
    model: bytes                 # the serialized onnx.ModelProto
    cfg: Config
    source: str                  # "torch" or "tf"
    exporter: str                # "dynamo", "torchscript", "tf2onnx" or "keras"
    opset: int
    seconds: float               # exporter call, checker included
    inputs: tuple                # graph input names, in order
    outputs: tuple               # graph output names = the model's output keys
    metadata: dict = field(default_factory=dict)
    fallback: str | None = None  # why the first exporter was not used

    @property
    def proto(self):
        import onnx
        return onnx.load_from_string(self.model)

    @property
    def size(self) -> int:
        return len(self.model)

    def save(self, path) -> None:
        files.write(path, self.model, "ONNX file")


def signature(cfg: Config) -> tuple[list[str], list[str]]:
    """(input names, required names) of the model's forward, from the PyTorch mirror (no cache): the
    arguments the family's run inputs give for `cfg` (T5's encoder alone takes no decoder input);
    required, those without a default and the token ids (an encoder-decoder's default to None only
    so that a cached call can leave the source out)."""
    entry = registry.get(cfg.kind)
    if not entry.is_model:
        raise ValueError(f"ONNX export covers whole models {[e.name for e in registry.ENTRIES.values() if e.is_model]}; "
                         f"received kind={cfg.kind!r}")
    given = families.get(cfg.kind).inputs(cfg, 1, 2)  # an optional input the config's model never takes is no
    params = [p for name, p in inspect.signature(entry.implementation("torch_impl").forward).parameters.items()
              if name not in ("self", "cache") and (p.default is inspect.Parameter.empty or name in given)]  # input
    return [p.name for p in params], [p.name for p in params
                                      if p.default is inspect.Parameter.empty or p.name.endswith("input_ids")]


def sequence_axis(name: str) -> str:
    return "decoder_sequence" if name.startswith("decoder_") else "sequence"


def graph_dtype(array) -> type:
    """A graph input's dtype: float32 for a float input (pixels), int64 for ids and masks."""
    return np.float32 if np.issubdtype(np.asarray(array).dtype, np.floating) else np.int64


def dynamic_axes(name: str, array) -> dict:
    """{axis: name} of the dynamic axes: batch and sequence of a (B, T) token input, batch only of a float one."""
    return {0: "batch"} if graph_dtype(array) is np.float32 else {0: "batch", 1: sequence_axis(name)}


def example_inputs(cfg: Config, batch: int = EXAMPLE_BATCH, length: int = EXAMPLE_LENGTH) -> dict:
    """Every graph input, from the family's run inputs (a decoder's T differs): int64 (B, T) or float32."""
    names, _ = signature(cfg)
    inputs = families.get(cfg.kind).inputs(cfg, batch, length)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"the {cfg.kind} family's run inputs must give every model input; missing {missing}")
    return {n: np.asarray(inputs[n]).astype(graph_dtype(inputs[n])) for n in names}


def check_exportable(cfg: Config) -> None:
    """Tiled attention is a Python loop over blocks: traced, it unrolls at the example's T and S into a graph
    for that one length, which the dynamic sequence axis would then run at others (wrong numbers, or a
    failed trace where the length is symbolic). Refused by name; the same attention exports as 'reference'."""
    if cfg.attention_impl == "tiled":
        raise ValueError("ONNX export has a dynamic sequence axis, and Config.attention_impl='tiled' unrolls its "
                         "loop over blocks at one traced length; export with attention_impl='reference' or "
                         "'fused' (the same attention); received attention_impl='tiled'")


def export(cfg: Config, weights: dict, source: str, opset: int = DEFAULT_OPSET, exporter: str | None = None,
           preset: str | None = None) -> Exported:
    """Export `cfg` with `weights` from `source`; the same call twice in a process exports once."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}; received source={source!r}")
    if exporter is not None and exporter not in EXPORTERS[source] + ON_REQUEST[source]:
        raise ValueError(f"exporter for source={source!r} must be one of {list(EXPORTERS[source] + ON_REQUEST[source])}; "
                         f"received exporter={exporter!r}")
    if not isinstance(opset, int) or opset < 1:
        raise ValueError(f"opset must be a positive int; received opset={opset!r}")
    signature(cfg)
    check_exportable(cfg)
    weights_lib.check(cfg, weights)
    preset = preset or _preset_name(cfg)
    fingerprint = weights_lib.fingerprint(weights)
    reasons = []
    for name in [exporter] if exporter else EXPORTERS[source]:
        key = (cfg, fingerprint, source, opset, name)
        if key not in _exports:
            result = _attempt(cfg, weights, source, opset, name, fingerprint)
            if isinstance(result, str) or result.size <= CACHE_LIMIT_BYTES:
                _exports[key] = result
        else:
            result = _exports[key]
        if isinstance(result, str):  # that exporter's one-line failure
            reasons.append(f"{name}: {result}")
            continue
        return _stamped(result, preset, "; ".join(reasons) or None)
    raise ExportError(f"ONNX export of {preset} from {source} at opset {opset} failed: " + "; ".join(reasons))


_exports: dict = {}  # (cfg, weights fingerprint, source, opset, exporter) -> Exported, or why it failed


def _attempt(cfg, weights, source, opset, name, fingerprint) -> Exported | str:
    """One exporter: an `Exported`, or its failure as one line."""
    t0 = time.perf_counter()
    try:
        with _quiet():
            proto, outputs = EXPORT_FUNCTIONS[name](cfg, weights, example_inputs(cfg), opset)
            _check(proto, name, opset)
    except ExportError as e:
        return str(e)
    except Exception as e:  # an exporter's own error, whatever its type: one line, never a traceback
        return _one_line(e)
    metadata = {"weights_fingerprint": fingerprint, "source_framework": source, "opset": str(opset),
                "exporter": _exporter_label(name), "config": json.dumps(cfg.to_dict())}
    return Exported(proto.SerializeToString(), cfg, source, name, opset, time.perf_counter() - t0,
                    tuple(i.name for i in proto.graph.input), tuple(outputs), metadata)


def _stamped(exported: Exported, preset: str, fallback: str | None) -> Exported:
    """`exported` with the preset and the fallback reason (if any) in its metadata_props."""
    import onnx
    metadata = {"preset": preset, **exported.metadata, **({"fallback_reason": fallback} if fallback else {})}
    proto = exported.proto
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    return replace(exported, model=proto.SerializeToString(), metadata=metadata, fallback=fallback)


def _export_dynamo(cfg, weights, inputs, opset):
    import torch
    model, args, output_names = _torch_model(cfg, weights, inputs)
    dims = {axis: torch.export.Dim(axis) for axis in ("batch", "sequence", "decoder_sequence")}
    dynamic = {name: {i: dims[axis] for i, axis in dynamic_axes(name, inputs[name]).items()} for name in args}
    program = torch.onnx.export(model, (), kwargs=args, dynamo=True, opset_version=opset,
                                input_names=list(args), output_names=output_names, dynamic_shapes=dynamic,
                                external_data=False)
    return program.model_proto, output_names


def _export_torchscript(cfg, weights, inputs, opset):
    import torch
    model, args, output_names = _torch_model(cfg, weights, inputs)
    f = io.BytesIO()
    torch.onnx.export(model, (), f, kwargs=args, dynamo=False, opset_version=opset, input_names=list(args),
                      output_names=output_names,
                      dynamic_axes={name: dynamic_axes(name, inputs[name]) for name in args})
    import onnx
    return onnx.load_from_string(f.getvalue()), output_names


def _torch_model(cfg, weights, inputs):
    import torch

    model = build("torch", cfg, weights, dtype="float32").module.eval()
    args = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        output_names = list(model(**args))
    return model, args, output_names


def _export_tf2onnx(cfg, weights, inputs, opset):
    import tensorflow as tf
    import tf2onnx

    model = build("tf", cfg, weights, dtype="float32").module
    names = list(inputs)
    spec = [tf.TensorSpec([None if i in dynamic_axes(n, v) else d for i, d in enumerate(v.shape)],
                          tf.float32 if graph_dtype(v) is np.float32 else tf.int64, name=n) for n, v in inputs.items()]

    @tf.function(input_signature=spec)
    def forward(*args):
        return model(**dict(zip(names, args)))

    output_names = list(model(**{k: tf.constant(v) for k, v in inputs.items()}))
    import keras
    filtering = keras.config.is_traceback_filtering_enabled()
    keras.config.disable_traceback_filtering()  # a mirror's ValueError while tracing stays word for word
    saved = os.environ.get("TF2ONNX_CATCH_ERRORS")
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"  # no deep copy of the graph before each optimizer pass
    try:
        with _tf2onnx_fresh_constants(), _tf2onnx_reshapes_keep_copied_dims():
            proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=opset)
    finally:
        if saved is None:
            os.environ.pop("TF2ONNX_CATCH_ERRORS", None)
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = saved
        if filtering:
            keras.config.enable_traceback_filtering()
    got = [o.name for o in proto.graph.output]
    if sorted(got) != sorted(output_names):
        raise ExportError(f"graph outputs {got}, expected the model's outputs {output_names}")
    return proto, got


def _export_keras(cfg, weights, inputs, opset):
    """`keras.Model.export(format="onnx")` after one call on `inputs`: Keras's own ONNX path, on the
    signature `tf_impl`'s `Model.export` takes from that call (ids and masks dynamic on every axis)."""
    import tempfile

    import onnx
    import tensorflow as tf

    model = build("tf", cfg, weights, dtype="float32").module
    output_names = list(model(**{k: tf.constant(v) for k, v in inputs.items()}))
    with tempfile.TemporaryDirectory() as folder, _tf2onnx_fresh_constants(), _tf2onnx_reshapes_keep_copied_dims():
        model.export(os.path.join(folder, "model.onnx"), format="onnx", opset_version=opset, verbose=False)
        proto = onnx.load(os.path.join(folder, "model.onnx"))
    got = [o.name for o in proto.graph.output]
    if sorted(got) != sorted(output_names):
        raise ExportError(f"graph outputs {got}, expected the model's outputs {output_names}")
    return proto, got


@contextlib.contextmanager
def _tf2onnx_fresh_constants():
    """tf2onnx rewrites each node's attributes in place (`Node.update_proto`) on every one of its
    ~36 optimizer passes. Under the upb protobuf runtime a replaced field's memory stays in the
    message's arena until the message is freed, so every pass kept one more copy of every weight
    (bert-base: 36 x 420 MB). Here a constant node gets a fresh message after each update, and the
    old arena is freed with the old message."""
    from onnx import NodeProto
    from tf2onnx import graph
    original = graph.Node.update_proto

    def update_proto(node, *args, **kwargs):
        original(node, *args, **kwargs)
        if node.type == "Const":
            fresh = NodeProto()
            fresh.CopyFrom(node._op)
            node._op = fresh

    graph.Node.update_proto = update_proto
    try:
        yield
    finally:
        graph.Node.update_proto = original


@contextlib.contextmanager
def _tf2onnx_reshapes_keep_copied_dims():
    """tf2onnx's back-to-back pass merges Reshape(Reshape(x, s1), s2) into Reshape(x, s2). Its
    reshape pass has by then written the batch and sequence axes of s2 as 0, which ONNX reads as
    "copy this axis of the input": after the merge the input is x, not the middle tensor, and the
    axes copied are the wrong ones. A bias-free Linear (Keras's matmul reshapes (B, T, D) to
    (B T, D) and back) followed by a split into heads is exactly that pattern: Llama's q, k and v.
    Here a pair is merged only where s2 is a constant without a 0 (onnxruntime#28348 is the same
    bug in onnxruntime's own fusion)."""
    from tf2onnx.optimizer import back_to_back_optimizer as b2b
    original = b2b._func_map[("Reshape",)]

    def reshape_reshape(g, node, consumer_nodes):
        if len(consumer_nodes) == 1 and consumer_nodes[0].type == "Reshape":
            shape = consumer_nodes[0].inputs[1]
            if not shape.is_const() or 0 in shape.get_tensor_value(as_list=True):
                return []
        return original(g, node, consumer_nodes)

    b2b._func_map[("Reshape",)] = reshape_reshape
    try:
        yield
    finally:
        b2b._func_map[("Reshape",)] = original


EXPORT_FUNCTIONS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript, "tf2onnx": _export_tf2onnx,
                    "keras": _export_keras}


def _check(proto, exporter, opset):
    """The opset asked for, every node a registered ONNX op at that opset, and the checker."""
    import onnx
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(f"wrote opset {got}, not the requested opset {opset}")
    unknown = Counter()
    for node in proto.graph.node:
        try:
            onnx.defs.get_schema(node.op_type, opset, node.domain)
        except Exception:
            unknown[node.op_type] += 1
    if unknown:
        listed = ", ".join(f"{op} (x{n})" for op, n in unknown.most_common())
        raise ExportError(f"{sum(unknown.values())} node(s) are not ONNX ops at opset {opset} "
                          f"(left unconverted): {listed}")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker: {_one_line(e)}") from None


def _exporter_label(name) -> str:
    if name in ("tf2onnx", "keras"):
        import keras
        import tensorflow as tf
        import tf2onnx
        how = "tf.function" if name == "tf2onnx" else f'keras.Model.export(format="onnx"), keras {keras.__version__}'
        return f"tf2onnx {tf2onnx.__version__} ({how}, tensorflow {tf.__version__})"
    import torch
    return f"torch.onnx.export(dynamo={name == 'dynamo'}) torch {torch.__version__}"


@contextlib.contextmanager
def _quiet():
    """Exporters print progress, warnings and logged tracebacks: none of it reaches the user."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "tf2onnx", "absl")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_output_silenced():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def _native_output_silenced():
    """File descriptors 1 and 2 to a scratch file: the TorchScript exporter (its IR dump on a
    failure) and TensorFlow write from C++, past `sys.stdout` and `sys.stderr`."""
    import tempfile
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no file descriptors 1 and 2 (an embedded interpreter): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 1)
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _one_line(e: BaseException) -> str:
    """The root cause of an exception as one short line: type and first meaningful line."""
    root = e
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    message = lines[0] if lines else ""
    if "Exception summary" in text:  # torch.onnx wraps the torch.export error in a long report
        after = text.split("Exception summary", 1)[1].strip().splitlines()
        message = next((ln.strip() for ln in after if ln.strip()), message)
    message = re.sub(r"\s+", " ", message)
    return f"{type(root).__name__}: {message[:400]}" if message else type(root).__name__


def _preset_name(cfg: Config) -> str:
    return next((name for name in presets.names() if presets.get(name) == cfg), f"custom {cfg.kind}")


# ------------------------------------------------------------------------------- onnxruntime

class Session:
    """An exported model in onnxruntime, called with NumPy the way the mirrors are.

    Validates inputs with the mirrors' own checks (ids in range, masks shaped (B, T)), fills the
    optional inputs a call leaves out, casts to int64, and returns {output key: array}.
    """

    def __init__(self, exported: Exported, threads: int | None = None):
        import onnxruntime as ort
        self.exported, self.cfg = exported, exported.cfg
        self.names, self.required = signature(exported.cfg)
        self.options = ort.SessionOptions()
        if threads:
            self.options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(exported.model, self.options, providers=["CPUExecutionProvider"])
        self._traced = None  # (session, {trace name: value name}), made on the first traced run
        trace_names(self.cfg), input_free(self.cfg)  # now: inside a traced run no reference trace can be recorded

    def feed(self, inputs: dict) -> dict:
        unknown = sorted(set(inputs) - set(self.names))
        if unknown:
            raise ValueError(f"unexpected input(s) {unknown}; the exported {self.cfg.kind} takes {self.names}")
        missing = [n for n in self.required if inputs.get(n) is None]
        if missing:
            raise ValueError(f"missing input(s) {missing}; the exported {self.cfg.kind} requires {self.required}")
        feed = {k: np.asarray(v) for k, v in inputs.items() if v is not None}
        for prefix in ("", "decoder_"):
            ids = feed.get(f"{prefix}input_ids")
            if ids is None:
                continue
            checks.token_inputs(checks.spec(ids), checks.spec(feed.get(f"{prefix}attention_mask")),
                                checks.spec(feed.get("token_type_ids")) if not prefix else None, prefix=prefix)
            if ids.size:
                checks.index_range(f"{prefix}input_ids", int(ids.min()), int(ids.max()), self.cfg.vocab_size,
                                   "vocab_size")
            if self.cfg.position == "learned" and ids.shape[1]:
                positions = np.arange(ids.shape[1]) + self.cfg.position_offset         # (T,)
                if self.cfg.pad_positions and not prefix:  # RoBERTa: the mirrors' positions, from the ids
                    checks.padding_at_the_ends("input_ids", ids, self.cfg.pad_token_id)
                    real = ids != self.cfg.pad_token_id                               # (B, T)
                    positions = np.cumsum(real, axis=1) * real + self.cfg.pad_token_id  # (B, T)
                checks.index_range("position_ids", int(positions.min()), int(positions.max()), self.cfg.max_positions,
                                   "max_positions: the sequence is longer than the position table")
            mask = f"{prefix}attention_mask"
            if mask in self.names and mask not in feed:
                feed[mask] = np.ones(ids.shape, np.int64)  # no mask: every position attends
        if "token_type_ids" in self.names:
            if "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros(feed["input_ids"].shape, np.int64)
            tt = feed["token_type_ids"]
            if tt.size:
                checks.index_range("token_type_ids", int(tt.min()), int(tt.max()), self.cfg.type_vocab_size,
                                   "type_vocab_size")
        if "pixel_values" in feed:
            checks.pixel_values(checks.spec(feed["pixel_values"]), self.cfg.num_channels, self.cfg.patch_size,
                                self.cfg.interpolate_pos_encoding)
        return {k: v.astype(graph_dtype(v)) for k, v in feed.items()}

    def run(self, inputs: dict) -> dict:
        if "cache" in inputs:
            raise ValueError("the onnx framework keeps no key/value cache: call it with the whole sequence "
                             "(generate(..., use_cache=False))")
        names = list(self.exported.outputs)
        return dict(zip(names, self.session.run(names, self.feed(inputs))))

    def run_traced(self, inputs: dict) -> tuple[dict, dict]:
        """(outputs, {trace name: value}) for every trace name the graph keeps."""
        if self._traced is None:
            self._traced = self._traced_session()
        session, mapping = self._traced
        values = sorted(set(mapping.values()) | set(self.exported.outputs))
        got = dict(zip(values, session.run(values, self.feed(inputs))))
        return ({k: got[k] for k in self.exported.outputs}, {name: got[v] for name, v in mapping.items()})

    def _traced_session(self):
        import onnx
        import onnxruntime as ort
        proto = self.exported.proto
        mapping = trace_map(proto, self.exported.exporter, self.cfg)
        types = value_types(proto)
        have = {o.name for o in proto.graph.output}
        for value in dict.fromkeys(mapping.values()):
            if value not in have:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(value, types.get(value, 1), None))
        session = ort.InferenceSession(proto.SerializeToString(), self.options, providers=["CPUExecutionProvider"])
        return session, mapping

    def num_parameters(self) -> int:
        """Elements of the float initializers: what the file stores (a transposed copy counts)."""
        return sum(int(np.prod(i.dims)) for i in self.exported.proto.graph.initializer
                   if i.data_type in FLOAT_TYPES and len(i.dims) >= 1)


def build_from(exported: Exported):
    """A `Built` over an `Exported` (for a modified graph, e.g. a planted bug)."""
    return Built(backend("onnx"), registry.get(exported.cfg.kind), exported.cfg, Session(exported),
                 "float32", False)


# --------------------------------------------------------------------- trace names in a graph

@lru_cache(maxsize=None)
def trace_names(cfg: Config) -> tuple:
    """The reference's trace names for `cfg`, in order. Names depend on the structure (layers,
    heads, options), not on widths or vocabulary: a batch-1, length-2 run of a narrow copy with zero
    weights takes milliseconds for any preset."""
    narrow = cfg.replace(d_model=2 * cfg.num_heads, d_ff=4, vocab_size=4, max_positions=8, weight_quantization="none")
    w = {name: np.zeros(shape, np.float32) for name, shape in registry.param_shapes(narrow).items()}
    inputs = {k: v[:1] if graph_dtype(v) is np.float32 else v[:1, :2] for k, v in example_inputs(narrow).items()}
    _, records = build("numpy", narrow, w, dtype="float32").trace(**inputs)
    return tuple(records)


@lru_cache(maxsize=None)
def input_free(cfg: Config) -> frozenset:
    """The trace names whose values no input changes, not even its length: functions of the weights alone
    (DeBERTa's relative table, normed, and its projections; not BERT's positions, which follow T). An
    exporter may fold them into initializers and keep no node for them. Two runs of the narrow copy of
    `trace_names`, random weights, on inputs of lengths 3 and 4."""
    narrow = cfg.replace(d_model=2 * cfg.num_heads, d_ff=4, vocab_size=8, max_positions=8, weight_quantization="none")
    w = weights_lib.initialize(narrow, seed=0)
    model = build("numpy", narrow, w, dtype="float64")
    as_fed = lambda v: v if np.issubdtype(np.asarray(v).dtype, np.floating) else np.asarray(v).astype(np.int64)  # noqa: E731
    runs = [model.trace(**{k: as_fed(v) for k, v in families.get(cfg.kind).inputs(narrow, 1, length, seed=length).items()})[1]
            for length in (3, 4)]
    return frozenset(n for n, v in runs[0].items() if n in runs[1] and np.array_equal(v, runs[1][n]))


def module_calls(cfg: Config) -> dict:
    """{module path: number of calls} for every module whose output is traced (`P.output`, `P.output#k`)."""
    calls = Counter()
    for name in trace_names(cfg):
        m = re.fullmatch(r"(.+)\.output(#\d+)?", name)
        if m:
            calls[m.group(1)] += 1
    return dict(calls)


def module_paths(cfg: Config) -> list:
    """Every module path that appears in a trace name, with its ancestors, in trace order."""
    paths = {}
    for name in trace_names(cfg):
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            paths.setdefault(".".join(parts[:i]), None)
    return list(paths)


def node_scopes(proto, exporter: str, paths: set) -> list[list[tuple]]:
    """Per node, the (module path, call key) scopes it lies in, outermost first."""
    out = []
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" in meta:  # torch.onnx (dynamo): module paths, then the fx node name
            try:
                scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])[:-1]
            except (ValueError, SyntaxError):
                scopes = []
            out.append([(s, 0) for s in scopes if s in paths])
            continue
        parts = node.name.split("/")[:-1]
        if exporter in ("tf2onnx", "keras"):
            parts = parts[1:]  # the Keras model's own scope
        scopes, path = [], ""
        for part in parts:
            if not part:
                continue
            m = re.fullmatch(r"(.*?)_(\d+)", part)
            base, key = (m.group(1), int(m.group(2))) if m else (part, 0)
            candidate = f"{path}.{base}" if path else base
            if candidate not in paths:
                candidate, key = (f"{path}.{part}" if path else part), 0
                if candidate not in paths:
                    break
            path = candidate
            scopes.append((path, key))
        out.append(scopes)
    return out


def value_types(proto) -> dict:
    """value name -> onnx elem type, from the graph and shape inference."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        inferred = proto
    types = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(proto.graph.value_info):
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


def trace_map(proto, exporter: str, cfg: Config) -> dict:
    """{trace name: ONNX value name} for every module output and root tap the graph keeps."""
    calls = module_calls(cfg)
    scopes = node_scopes(proto, exporter, set(module_paths(cfg)))
    types = value_types(proto)
    nodes = list(proto.graph.node)
    graph_outputs = [o.name for o in proto.graph.output]
    consumers: dict = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    leaving: dict = {}  # path -> {call key: [values in graph order]}
    for i, node in enumerate(nodes):
        for scope in scopes[i]:
            for value in node.output:
                if types.get(value) not in FLOAT_TYPES:
                    continue
                used_outside = any(scope not in scopes[j] for j in consumers.get(value, ()))
                if used_outside or value in graph_outputs:
                    leaving.setdefault(scope[0], {}).setdefault(scope[1], []).append(value)
    mapping = {}
    for name in trace_names(cfg):  # root taps ("logits", "pooled"): the graph output of that name
        match = next((o for o in graph_outputs if o in (name, f"{name}_output")), None) if "." not in name else None
        if match:
            mapping[name] = match
    folded = input_free(cfg)
    for path, n in calls.items():
        groups = leaving.get(path, {})
        names = [f"{path}.output" + (f"#{k}" if k else "") for k in range(n)]
        if len(groups) != n and len(groups) == len([x for x in names if x not in folded]):
            names = [x for x in names if x not in folded]  # the calls on weights alone were folded away
        if len(groups) == len(names):
            values = [groups[key][-1] for key in sorted(groups)]
        elif len(groups) == 1 and len(next(iter(groups.values()))) >= len(names):
            values = next(iter(groups.values()))[-len(names):]
        else:
            continue
        mapping.update(zip(names, values))
    return mapping


# ------------------------------------------------------------------- initializers (planted bugs)

def initializer_for(exported: Exported, array: np.ndarray) -> tuple[str, bool]:
    """(initializer name, stored transposed?) of the initializer holding `array`, matched by value."""
    from onnx import numpy_helper
    array = np.asarray(array, np.float32)
    for init in exported.proto.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.shape == array.shape and np.array_equal(value, array):
            return init.name, False
        if array.ndim == 2 and value.shape == array.T.shape and np.array_equal(value, array.T):
            return init.name, True
    raise ValueError(f"no initializer of the {exported.exporter} graph holds that array (shape {array.shape})")


def with_initializer(exported: Exported, name: str, value: np.ndarray) -> Exported:
    """A copy of `exported` with initializer `name` replaced by `value`."""
    from onnx import numpy_helper
    proto = exported.proto
    for i, init in enumerate(proto.graph.initializer):
        if init.name == name:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))
            return replace(exported, model=proto.SerializeToString())
    raise ValueError(f"no initializer named {name!r}")
