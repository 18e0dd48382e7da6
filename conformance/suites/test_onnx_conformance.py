"""ONNX as a fourth framework: every model in the registry (each variant: BERT with its heads,
GPT-2, the Transformer), exported from PyTorch and from Keras, run in onnxruntime in float32
against the float64 NumPy reference at the float32 tolerance. The cases are generated from the
registry. Graphs are exported at batch 2, sequence 5 and run at the registry's batch 2,
sequence 7 (tests/test_onnx.py runs them at batch 3, sequence 17).

Exporters: torch.onnx with torch.export (`dynamo`), the TorchScript exporter (`torchscript`, its
fallback) and tf2onnx. torch.export takes 6 to 25 s per tiny model on a 2-core CPU, so the default
tier exports one model with it (GPT-2) and `--full` the others (and tf2onnx's second Transformer
variant, ~6 s); the base presets are `--full`. A
variant declared for some frameworks only (fused attention: torch) is exported from those.
`onnx_export.export` keeps each export for the session: the other ONNX tests reuse them.
"""
import numpy as np
import pytest

from conformance.backends import onnx_export
from conformance.spec import presets, registry
from conformance.spec import families
from conformance import weights
from conformance.backends.build import build
from conformance.spec.registry import case_id
from conformance.suites.cases import case_data, check_case, failure_message
from conformance.compare.tolerance import compare_outputs

MODEL_CASES = [(entry.name, variant) for entry in registry.ENTRIES.values() if entry.is_model
               for variant in entry.variants]
EXPORTS = [(source, exporter) for source, exporters in onnx_export.EXPORTERS.items() for exporter in exporters]
DYNAMO_DEFAULT_TIER = {("gpt2", "default")}  # torch.export's cheapest model (two inputs, one stack)
FULL_TIER = {("transformer", "learned_untied", "tf2onnx"),  # tf2onnx: ~6 s for the 4-layer Transformer,
             # 12 to 20 s for T5's and BART's five-layer stacks: their defaults stay in the default tier
             *((name, variant, "tf2onnx") for name in ("t5", "bart") for variant in registry.get(name).variants
               if variant != "default")}
PROTOBUF_LIMIT = 2 ** 31  # an ONNX file held in memory is one protobuf: at most 2 GiB


def float32_bytes(preset: str) -> int:
    return 4 * sum(int(np.prod(s)) for s in registry.param_shapes(presets.get(preset)).values())


def onnx_preset(family) -> str:
    """The family's base preset, or (llama3.2-1b is 4.9 GB in float32) its largest that fits one protobuf."""
    if float32_bytes(family.base_preset) < PROTOBUF_LIMIT:
        return family.base_preset
    return max((p for p in family.presets if float32_bytes(p) < PROTOBUF_LIMIT), key=float32_bytes)


def _params():
    for name, variant in MODEL_CASES:
        if registry.get(name).config(variant).attention_impl == "tiled":
            continue  # refused by `onnx_export.check_exportable` (tests/test_tiled_attention.py)
        about = registry.get(name).variants[variant].frameworks  # e.g. fused attention: torch only
        for source, exporter in EXPORTS:
            if about is not None and source not in about:
                continue  # the variant changes nothing in that source: its export is the default's
            slow = ((exporter == "dynamo" and (name, variant) not in DYNAMO_DEFAULT_TIER)
                    or (name, variant, exporter) in FULL_TIER)
            yield pytest.param((name, variant), source, exporter, id=f"{case_id((name, variant))}-{exporter}",
                               marks=[pytest.mark.full] if slow else [])


@pytest.mark.parametrize("case,source,exporter", list(_params()))
def test_onnx_matches_reference(case, source, exporter):
    _, cfg, w, _, _ = case_data(*case)
    m = build("onnx", cfg, w, source=source, exporter=exporter)
    assert m.module.exported.exporter == exporter
    results = check_case(*case, "onnx", "float32", built=m)
    assert all(r.passed for r in results), failure_message(results)


@pytest.mark.full
@pytest.mark.parametrize("preset", [onnx_preset(f) for f in families.FAMILIES.values()])
@pytest.mark.parametrize("source", onnx_export.SOURCES)
def test_onnx_base_preset_matches_reference(preset, source):
    """The published sizes, through each source's default exporter chain."""
    cfg = presets.get(preset)
    w = weights.initialize(cfg, seed=0)
    inputs = families.get(cfg.kind).inputs(cfg, batch=2, length=32)
    m = build("onnx", cfg, w, source=source)
    results = compare_outputs(f"onnx[{source}] {preset}", m(**inputs), build("numpy", cfg, w, dtype="float64")(**inputs),
                              "float32")
    assert all(r.passed for r in results), failure_message(results)
