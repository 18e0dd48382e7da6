"""The Keras twin's deployment artifacts (`conformance.backends.keras_export`), written, reloaded the way a
deployment reloads them and run, against the float64 reference: LiteRT in float32 under the float32 row,
LiteRT dynamic-range int8 under its own `int8_dynamic` row (and provably not under float32's), the ONNX
file of `keras.Model.export(format="onnx")` in onnxruntime at other shapes than exported, and a
SavedModel or LiteRT file called with the wrong signature refused by name. The default tier runs LiteRT
on the models of `DEFAULT_TIER` and each other format on one of them (a conversion costs ~3 s, tf2onnx
~5 s); `--full` runs every registry model in every format.

A model LiteRT cannot convert is declared in `LITERT_REFUSES` with the op that stops it, and that
refusal is itself checked: the day the converter (or the mirror) changes, the test says so.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from conformance.backends import keras_export, onnx_export
from conformance.backends.build import build
from conformance.compare.tolerance import DEPLOYMENT_TOLERANCES, TOLERANCES, compare_outputs, sqnr_db, tolerance
from conformance.spec import registry
from conformance.suites.cases import case_data

MODELS = [n for n, e in registry.ENTRIES.items() if e.is_model]
DEFAULT_TIER = ("bert", "gpt2")  # the two cheapest conversions, an encoder and a decoder
# model -> what the TFLite converter finds no builtin (nor, in ai-edge-litert, flex) kernel for
LITERT_REFUSES = {
    "llama": "'tf.Cos' on tensor<2x7x8xf64>",  # rotary angles in float64 (tf_impl.rotary): no float64 cos
    "mixtral": "'tf.Cos' on tensor<2x7x8xf64>",  # a Llama: the same rotary table
}


def tiered(names, default=DEFAULT_TIER):
    return [pytest.param(n, marks=[] if n in default else [pytest.mark.full]) for n in names]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """artifact(name, fmt, quantize) -> (Artifact, reloaded callable), written once per module."""
    folder, made = tmp_path_factory.mktemp("deployment"), {}

    def get(name, fmt, quantize=None):
        if (name, fmt, quantize) not in made:
            _, cfg, w, inputs, _ = case_data(name, "default")
            path = folder / f"{name}-{fmt}{'-' + quantize if quantize else ''}{keras_export.SUFFIX[fmt]}"
            written = keras_export.export(cfg, w, fmt, path, inputs, quantize=quantize)
            made[name, fmt, quantize] = written, keras_export.load(fmt, path, cfg)
        return made[name, fmt, quantize]
    return get


def served(artifact, name, quantize=None):
    _, _, _, inputs, reference = case_data(name, "default")
    written, run = artifact(name, "litert", quantize)
    return written, run(**inputs), reference


@pytest.mark.parametrize("name", tiered(n for n in MODELS if n not in LITERT_REFUSES))
def test_litert_float32_passes_the_float32_row(name, artifact):
    written, out, reference = served(artifact, name)
    assert written.row == "float32"
    results = compare_outputs(f"litert {name}", out, reference, "float32")
    assert results and all(r.passed for r in results), [str(r) for r in results]


@pytest.mark.parametrize("name", tiered(n for n in MODELS if n not in LITERT_REFUSES))
def test_litert_int8_passes_its_own_row(name, artifact):
    """Dynamic-range int8 under `int8_dynamic` (max-norm relative), with a real quantization error: an
    SQNR far below float32's ~135 dB, so the file is the quantized one and not a float32 copy."""
    written, out, reference = served(artifact, name, "int8")
    assert written.row == "int8_dynamic"
    results = compare_outputs(f"litert int8 {name}", out, reference, "int8_dynamic")
    assert results and all(r.passed for r in results), [str(r) for r in results]
    assert all(sqnr_db(out[k], reference[k]) < 80 for k in reference), {k: sqnr_db(out[k], reference[k]) for k in out}


def test_int8_is_not_float32_conformance(artifact):
    """The two rows are not one: every default-tier model's int8 output misses the float32 row, and the
    int8 row is no framework dtype (the suite and its evidence never see it)."""
    for name in DEFAULT_TIER:
        _, out, reference = served(artifact, name, "int8")
        assert not all(r.passed for r in compare_outputs(f"litert int8 {name}", out, reference, "float32")), name
    assert "int8_dynamic" in DEPLOYMENT_TOLERANCES and "int8_dynamic" not in TOLERANCES
    assert tolerance("int8_dynamic").scale_rtol > TOLERANCES["float32"].rtol
    with pytest.raises(ValueError, match=r"^row must be one of \['float64', .*'int8_dynamic'.*\]; received row='int4'$"):
        tolerance("int4")
    assert sqnr_db(np.full(100, 1.1), np.ones(100)) == pytest.approx(20.0) and sqnr_db(np.ones(3), np.ones(3)) == np.inf


@pytest.mark.parametrize("name", tiered(LITERT_REFUSES))
def test_litert_refusal_is_declared_and_one_line(name, tmp_path):
    _, cfg, w, inputs, _ = case_data(name, "default")
    with pytest.raises(onnx_export.ExportError, match=rf"^LiteRT conversion failed: no TFLite builtin kernel for "
                                                      rf".*{re.escape(LITERT_REFUSES[name])}"):
        keras_export.export(cfg, w, "litert", tmp_path / "m.tflite", inputs)


@pytest.mark.parametrize("name", tiered(MODELS, default=("gpt2",)))
def test_keras_onnx_in_onnxruntime_at_other_shapes(name, artifact):
    """`keras.Model.export(format="onnx")`, exported at batch 2 and the suite's length, run at batch 3 and
    length 9 (a float input keeps its feature axes)."""
    entry, cfg, w, _, _ = case_data(name, "default")
    _, run = artifact(name, "onnx")
    inputs = entry.inputs(cfg, "default", seed=1, batch=3, length=9)
    results = compare_outputs(f"keras-onnx {name}", run(**inputs), build("numpy", cfg, w, dtype="float64")(**inputs),
                              "float32")
    assert results and all(r.passed for r in results), [str(r) for r in results]
    assert "keras.Model.export" in run.module.exported.metadata["exporter"]


@pytest.mark.parametrize("name", tiered(MODELS, default=("bert",)))
def test_saved_model_through_the_loader_serves_the_reference(name, artifact):
    entry, cfg, w, inputs, reference = case_data(name, "default")
    _, run = artifact(name, "savedmodel")
    results = compare_outputs(f"savedmodel {name}", run(**inputs), reference, "float32")
    assert results and all(r.passed for r in results), [str(r) for r in results]


def test_wrong_signature_is_refused_by_name(artifact):
    """Our check, before TensorFlow or LiteRT sees the call: the input, what the artifact takes, what came."""
    _, _, _, inputs, _ = case_data("bert", "default")
    _, saved = artifact("bert", "savedmodel")
    given = {k: np.asarray(v) for k, v in inputs.items() if v is not None}
    takes = sorted(saved.signature)
    without = {k: v for k, v in given.items() if k != "attention_mask"}
    with pytest.raises(ValueError, match=rf"^the SavedModel .* takes inputs {re.escape(str(takes))}; received "
                                         rf"{re.escape(str(sorted(without)))} \(missing \['attention_mask'\]\)$"):
        saved(**without)
    with pytest.raises(ValueError, match=r"takes inputs .*\(unexpected \['decoder_input_ids'\]\)$"):
        saved(**given, decoder_input_ids=given["input_ids"])
    with pytest.raises(ValueError, match=r"^input_ids must be an integer or bool array, fed as int64 \(the SavedModel "
                                         r".*'s signature\); received dtype float32$"):
        saved(**{**given, "input_ids": given["input_ids"].astype(np.float32)})
    with pytest.raises(ValueError, match=rf"^input_ids must have shape \(any, any\) .*; received shape \({given['input_ids'].size},\)$"):
        saved(**{**given, "input_ids": given["input_ids"].reshape(-1)})
    _, lite = artifact("bert", "litert")
    B, T = given["input_ids"].shape
    with pytest.raises(ValueError, match=rf"^input_ids must have shape \({B}, {T}\) \(the LiteRT file .*'s "
                                         rf"signature\); received shape \({B}, {T - 1}\)$"):
        lite(**{**given, "input_ids": given["input_ids"][:, :-1]})


def test_an_onnx_file_of_another_model_is_refused_by_name(artifact):
    """The file's metadata_props carry its config: loaded for another model it is refused as a .keras file is."""
    written, _ = artifact("gpt2", "onnx")
    bert = case_data("bert", "default")[1]
    with pytest.raises(ValueError, match=rf"^{re.escape(written.path)} holds a tf_impl.GPT2; it cannot load into a "
                                         rf"tf_impl.Bert "):
        keras_export.load("onnx", written.path, bert)
