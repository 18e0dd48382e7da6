"""`tmirror export --format keras|savedmodel|litert|onnx [--quantize int8] [--load PATH]`: the artifact written,
reloaded, proven against the reference under its own row (exit 1 on a miss), and every bad input one line
with status 2: an unknown format, --quantize where it does not apply, a .keras file or SavedModel of
another preset. What TensorFlow and LiteRT print (converter logs, the XNNPACK line) never reaches the user."""
import numpy as np
import pytest

from conformance import cli, weights
from conformance.backends import keras_export
from conformance.backends.build import build
from conformance.spec import presets


def test_litert_int8_from_the_command_line_is_held_to_its_row_and_quiet(tmp_path, capfd):
    """In process, with file descriptors 1 and 2 captured: the converter's C++ log lines and LiteRT's
    XNNPACK line stay off both (TensorFlow's import lines: tests/test_cli.py)."""
    out = tmp_path / "g.tflite"
    assert cli.main(["export", "gpt2-tiny", "--format", "litert", "--quantize", "int8", "--out", str(out)]) == 0
    r = capfd.readouterr()
    assert out.stat().st_size > 0 and f"wrote {out}" in r.out
    assert "under the int8_dynamic row:" in r.out
    lines = [line for line in r.out.splitlines() if line.startswith("  ")]
    assert {line.split(":")[0].strip() for line in lines} == {"logits", "last_hidden_state"}
    assert all(" dB pass" in line for line in lines), lines
    assert r.err.splitlines() == ["writing gpt2-tiny as litert int8...",
                                  f"running {out} against the float64 reference..."], r.err
    assert cli.main(["export", "gpt2-tiny", "--format", "litert", "--load", str(out)]) == 1  # int8 is no float32
    r = capfd.readouterr().out
    assert "under the float32 row:" in r and r.count(" FAIL") == 2, r


def test_keras_and_savedmodel_round_trip_and_refuse_another_preset(tmp_path, capsys):
    """Written and reloaded for bert-tiny they pass the float32 row; reloaded as gpt2-tiny the .keras file is
    refused by class and the SavedModel by its signature (gpt2 feeds no token_type_ids), one line each."""
    keras_file, saved = tmp_path / "b.keras", tmp_path / "b-saved"
    assert cli.main(["export", "bert-tiny", "--format", "keras", "--out", str(keras_file)]) == 0
    assert cli.main(["export", "bert-tiny", "--format", "savedmodel", "--out", str(saved)]) == 0
    text = capsys.readouterr().out
    assert text.count("under the float32 row:") == 2 and "FAIL" not in text
    assert cli.main(["export", "gpt2-tiny", "--format", "keras", "--load", str(keras_file)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"tmirror export: error: {keras_file} holds a tf_impl.Bert; it cannot load "
                                       f"into a tf_impl.GPT2 (load it with keras.saving.load_model, or build a "
                                       f"tf_impl.Bert)")
    assert cli.main(["export", "gpt2-tiny", "--format", "savedmodel", "--load", str(saved)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"tmirror export: error: the SavedModel {saved} takes inputs ['attention_mask', "
                                       f"'input_ids', 'token_type_ids']; received ['attention_mask', 'input_ids'] "
                                       f"(missing ['token_type_ids'])")
    cfg = presets.get("bert-tiny")  # the mirror's own load_weights takes a file of its own config back
    w = weights.initialize(cfg, seed=0)
    again = build("tf", cfg, weights.initialize(cfg, seed=1))
    again.module.load_weights(keras_file)
    ids = np.arange(6).reshape(1, 6)
    np.testing.assert_array_equal(again(input_ids=ids)["last_hidden_state"],
                                  build("tf", cfg, w)(input_ids=ids)["last_hidden_state"])


@pytest.mark.parametrize("args,words", [
    (["--format", "tflite"], "argument --format: invalid choice: 'tflite' (choose from 'keras', 'savedmodel', 'litert', "
                                   "'onnx')"),
    (["--format", "savedmodel", "--quantize", "int8"], "quantize='int8' applies to format='litert' only; "
                                                       "received format='savedmodel'"),
    (["--framework", "tf", "--quantize", "int8"], "quantize='int8' applies to format='litert' only; received "
                                                  "format='onnx'"),
    (["--format", "litert", "--framework", "torch"], "--format litert writes the Keras twin (tf_impl): --framework "
                                                     "must be tf or left out; received --framework torch"),
    (["--format", "keras", "--exporter", "tf2onnx"], "--exporter goes with writing --format onnx; received "
                                                     "--exporter tf2onnx with --format keras"),
    ([], "--format onnx needs --framework torch or tf (the mirror to export from); received none"),
    (["--format", "litert", "--load", "/nonexistent/m.tflite"], "path must be an existing litert artifact; received "
                                                                "'/nonexistent/m.tflite', which does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, words, capsys):
    try:
        code = cli.main(["export", "bert-tiny", *args])
    except SystemExit as e:  # argparse's own refusals exit from the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1, err
