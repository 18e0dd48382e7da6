"""onnxruntime as a backend: a graph exported from the PyTorch or Keras mirror
(`conformance.backends.onnx_export`), float32 on the CPU.

The module is an `onnx_export.Session`; it validates inputs with the mirrors' checks. Traced runs
record the module outputs the graph keeps, under the reference's trace names.
"""
from __future__ import annotations

from conformance.backends import onnx_export
from conformance.backends.base import Backend
from conformance.core import trace


class OnnxBackend(Backend):
    name = "onnx"
    dtypes = ("float32",)
    unsupported = {d: "the onnx framework runs float32 exports" for d in
                   ("float64", "tf32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")}

    def construct_exported(self, cfg, weights, source, exporter=None):
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

    def named_modules(self, module):
        return [("", module)]

    def num_parameters(self, module):
        return module.num_parameters()

    def export(self, module, shapes):
        raise ValueError("an ONNX graph does not give canonical weights back; use the weights it was exported from")
