"""Every tf_impl layer and model is a Keras citizen, one generated test per registry entry (in the
spirit of keras-hub's `run_layer_test`): `get_config` / `from_config` rebuild the same layer; a
model's `.keras` file saved with `model.save` loads back with `keras.saving.load_model`, and a
layer's serialized JSON with `keras.saving.deserialize_keras_object` (no custom_objects: every class
is registered), computing the same outputs bit for bit; `count_params` is the registry's parameter
count and a model's `summary()` prints it; every model that has logits takes a `fit` step with a
compiled loss; every model builds on `keras.Input`s into a functional model, and exports to a
SavedModel whose serving signature agrees with the reference; a `.keras` file or a config saved from another class or Config is refused by name.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conformance import weights
from conformance.backends import backend, build
from conformance.backends.base import Built
from conformance.compare.tolerance import compare_outputs
from conformance.core import checks
from conformance.spec import registry
from conformance.suites.cases import case_data

ENTRIES = list(registry.ENTRIES)


def built_like(original: Built, module) -> Built:
    """`original`'s front door and conversions around another Keras module (a reloaded one)."""
    return Built(original.backend, original.entry, original.cfg, module, original.dtype, original.training)


@pytest.mark.parametrize("name", ENTRIES)
def test_from_config_rebuilds_the_same_layer(name):
    _, cfg, w, inputs, _ = case_data(name, "default")
    m = build("tf", cfg, w)
    config = m.module.get_config()
    again = type(m.module).from_config(config)
    assert again.get_config() == config
    backend("tf").load(again, w, "float32")
    for key, value in built_like(m, again)(**inputs).items():
        np.testing.assert_array_equal(value, m(**inputs)[key], err_msg=f"{name}.{key} after from_config")


@pytest.mark.parametrize("name", ENTRIES)
def test_saved_and_loaded_back_bit_exact(name, tmp_path):
    entry, cfg, w, inputs, _ = case_data(name, "default")
    m = build("tf", cfg, w)
    expected = m(**inputs)
    if entry.is_model:  # a whole model: the .keras file (config, weights) and load_model
        m.module.save(tmp_path / f"{name}.keras")
        loaded = keras.saving.load_model(tmp_path / f"{name}.keras")
    else:  # a layer has no .save: its serialized config as JSON, then its weights
        text = json.dumps(keras.saving.serialize_keras_object(m.module))
        loaded = keras.saving.deserialize_keras_object(json.loads(text))
        loaded.set_weights(m.module.get_weights())
    assert type(loaded) is type(m.module)
    got = built_like(m, loaded)(**inputs)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}.{key} saved and loaded back")


@pytest.mark.parametrize("name", ENTRIES)
def test_count_params_and_summary_are_the_registrys(name):
    entry, cfg, w, _, _ = case_data(name, "default")
    m = build("tf", cfg, w)
    expected = sum(int(np.prod(s)) for s in registry.param_shapes(cfg).values())
    assert m.module.count_params() == expected
    if entry.is_model:
        lines = []
        m.module.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        assert f"Total params: {expected:,}" in "\n".join(lines)


def test_a_keras_file_of_another_class_or_config_is_refused_by_name(tmp_path):
    _, bert_cfg, bert_w, _, _ = case_data("bert", "default")
    _, gpt_cfg, gpt_w, _, _ = case_data("gpt2", "default")
    bert = build("tf", bert_cfg, bert_w).module
    path = tmp_path / "bert.keras"
    bert.save(path)
    with pytest.raises(ValueError, match=rf"^{path} holds a tf_impl.Bert; it cannot load into a tf_impl.GPT2 "):
        build("tf", gpt_cfg, gpt_w).module.load_weights(path)
    wider = bert_cfg.replace(d_ff=bert_cfg.d_ff * 2)
    other = build("tf", wider, weights.initialize(wider)).module
    with pytest.raises(ValueError, match=rf"^{path} was saved from another config of tf_impl.Bert; it holds "
                                         rf"d_ff={bert_cfg.d_ff} \(this model: {wider.d_ff}\)"):
        other.load_weights(path)
    with pytest.raises(ValueError, match=r"^the config holds a tf_impl.Bert; it cannot load into a tf_impl.GPT2"):
        type(build("tf", gpt_cfg, gpt_w).module).from_config(bert.get_config())


TRAINS = [n for n in ENTRIES if registry.get(n).is_model and "logits" in case_data(n, "default")[4]]


@pytest.mark.parametrize("name", TRAINS)
def test_fit_step_with_a_compiled_loss(name):
    """`model.compile(loss=...)` and `model.fit` on a tiny dataset (the inputs, a next-token-like target):
    the first step's loss is the reference's cross-entropy of the same logits, and the weights move."""
    _, cfg, w, inputs, reference = case_data(name, "default")
    m = build("tf", cfg, w)
    logits = reference["logits"]                                                  # (B, [T,] V)
    target = np.arange(int(np.prod(logits.shape[:-1]))).reshape(logits.shape[:-1]) % logits.shape[-1]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, target[..., None], axis=-1).mean()
    m.module.compile(optimizer=keras.optimizers.SGD(0.1),
                     loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    before = [v.numpy().copy() for v in m.module.trainable_weights]
    x = {k: v for k, v in inputs.items() if v is not None}
    history = m.module.fit(x, {"logits": target}, epochs=1, batch_size=len(target), shuffle=False, verbose=0)
    assert abs(history.history["loss"][0] - expected) < 1e-4 * max(1.0, abs(expected)), (history.history, expected)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, m.module.trainable_weights))


MODELS = [n for n in ENTRIES if registry.get(n).is_model]


@pytest.mark.parametrize("name", MODELS)
def test_symbolic_build_and_predict(name):
    """Called on `keras.Input`s (ids any length, masks bool), a model builds a functional `keras.Model`
    whose `predict` (a compiled graph, so not bit-exact with eager) agrees with the float64 reference."""
    _, cfg, w, inputs, reference = case_data(name, "default")
    given = {k: np.asarray(v) for k, v in inputs.items() if v is not None}
    symbolic = {k: keras.Input(shape=(None,) * (v.ndim - 1) if v.dtype.kind in "iub" else v.shape[1:],
                               dtype="bool" if checks.input_kind(k) == "mask" else str(v.dtype), name=k)
                for k, v in given.items()}
    functional = keras.Model(symbolic, build("tf", cfg, w).module(**symbolic))
    got = functional.predict({k: v != 0 if checks.input_kind(k) == "mask" else v for k, v in given.items()},
                             verbose=0)
    results = compare_outputs(f"tf functional {name}", got, reference, "float32")
    assert results and all(r.passed for r in results), [str(r) for r in results]


@pytest.mark.parametrize("name", MODELS)
def test_export_to_a_saved_model_serves_the_reference(name, tmp_path):
    """`model.export(path)` with no signature of one's own: the first call's inputs, ids and masks of any
    batch and length. Reloaded with `tf.saved_model.load` (no tf_impl class needed) and served, it agrees
    with the float64 reference; ids are int64, masks bool, floats float32 (the first call's dtypes)."""
    import tensorflow as tf
    _, cfg, w, inputs, reference = case_data(name, "default")
    m = build("tf", cfg, w)
    m(**inputs)
    m.module.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    feed = {k: v != 0 if checks.input_kind(k) == "mask" else v.astype(np.float32) if v.dtype.kind == "f" else v
            for k, v in ((k, np.asarray(v)) for k, v in inputs.items() if v is not None)}
    got = {k: np.asarray(v) for k, v in served.serve({k: tf.constant(v) for k, v in feed.items()}).items()}
    results = compare_outputs(f"SavedModel {name}", got, reference, "float32")
    cut = {k: v[:1, :v.shape[1] - 1] if checks.input_kind(k) != "float" else v[:1] for k, v in feed.items()}
    shorter = build("numpy", cfg, w, dtype="float64")(**cut)  # another batch and length than the first call's
    got = {k: np.asarray(v) for k, v in served.serve({k: tf.constant(v) for k, v in cut.items()}).items()}
    results += compare_outputs(f"SavedModel {name}, batch 1, one token less", got, shorter, "float32")
    assert results and all(r.passed for r in results), [str(r) for r in results]
