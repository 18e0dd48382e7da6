"""`conformance.compare(a, b)` and `tmirror compare --a --b`: two implementations op by op.

Real cases (each also a committed report under reports/compare/): keras-hub's BERT against
transformers' (the tanh GELU is the first divergence, at layer 0's feed-forward activation, and
is shown to be the cause by rebuilding the reference with it), the Keras mirror on Keras's torch
backend against itself on TensorFlow (agrees) and in float64 against the reference (float32 from the
first layer norm's ops.mean), keras-hub's GPT-2, Llama, Mistral and Gemma against transformers at the
tiny presets (and Llama at llama3.2-1b, --full), an ONNX export against its source (--full: an export
costs tens of seconds). A user's own model (study/user_gpt2.py) agrees with
the reference, and each of its three planted bugs is pinned to its op by the replay; so does its Keras
twin (study/user_gpt2_keras.py), whose Keras-default epsilon is pinned to its layer norm. Bad input:
an unmappable module path, weights not from the shared set, a factory that returns no module.
"""
import dataclasses

import pytest

import conformance
from conformance import cli, weights
from conformance.compare.crosscheck import Model, load_factory
from conformance.spec import presets, registry

USER = "study/user_gpt2.py"
USER_STD = 0.05  # large enough that Keras's epsilon (1e-3) moves a layer norm past float32 tolerance


def user_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("user_gpt2", USER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ keras-hub, transformers

def test_keras_hub_bert_diverges_from_transformers_at_the_tanh_gelu():
    r = conformance.compare("keras-hub", "transformers", preset="bert-tiny", std=0.2, batch=1, seq_len=8)
    assert r.first.name == "encoder.0.feed_forward.activation.output"
    assert all(c.passed for c in r.ops[:r.ops.index(r.first)])  # every op before it agrees
    v = r.verdicts[0]
    assert v.name == r.first.name and v.verdict == "introduces it"
    assert "feedforward_intermediate_dense" in v.says  # keras-hub's Dense, which applies the GELU itself
    # the cause, asserted the other way: the reference rebuilt with the tanh GELU agrees with keras-hub
    cfg = dataclasses.replace(presets.get("bert-tiny"), activation="gelu_tanh")
    same = conformance.compare("keras-hub", "reference", cfg=cfg, std=0.2, batch=1, seq_len=8)
    assert same.first is None and same.passed, same.summary()
    # the canonical op inside the fused Dense is reported, not dropped
    assert "encoder.0.feed_forward.inner.output" in r.only_b
    assert any(n.kind == "fused" and "feedforward_intermediate_dense" in n.path for n in r.a.notes)



@pytest.mark.full
def test_keras_hub_bert_base_diverges_at_the_tanh_gelu():
    """Full size, std 0.1 (at std 0.2 float32 round-off inside the 768-wide attention, inherited from no
    traced op, exceeds float32 tolerance one op earlier, against the float64 reference too)."""
    r = conformance.compare("keras-hub", "transformers", preset="bert-base", std=0.1, batch=1, seq_len=128)
    assert r.first.name == "encoder.0.feed_forward.activation.output", r.summary()
    assert r.verdicts[0].verdict == "introduces it"

@pytest.mark.parametrize("case", ["gpt2-tiny", "llama-tiny", "llama[mistral]", "llama[gemma]"])
def test_keras_hub_decoders_agree_with_transformers_op_by_op(case):
    kw = {"cfg": registry.get("llama").config(case[6:-1])} if "[" in case else {"preset": case}
    r = conformance.compare("keras-hub", "transformers", batch=1, seq_len=8, **kw)
    assert r.passed and r.first is None, r.summary()
    assert len(r.ops) >= 20  # every layer's projections, norms and outputs, not just the last hidden state
    assert all(any(c.name.startswith(f"layers.{i}.") for c in r.ops) for i in range(r.cfg.num_layers))


@pytest.mark.full
def test_keras_hub_llama_at_full_size_agrees_with_transformers_op_by_op():
    """llama3.2-1b (1.24 B parameters, 16 layers, tied head, llama3 rope scaling), 128 tokens: every op the
    two libraries both trace agrees in float32. Peak RSS 23 GiB (the float64 reference is freed once its
    names are read; keras-hub's model, transformers' and the shared weights stay): a 32 GB machine."""
    r = conformance.compare("keras-hub", "transformers", preset="llama3.2-1b", batch=1, seq_len=128)
    assert r.passed and r.first is None and len(r.ops) >= 160, r.summary()


@pytest.mark.parametrize("preset,first,module,transformers_too", [
    # both libraries' RMS norms cast their input to float32 whatever the dtype (written for half precision);
    # keras-hub's LlamaLayerNorm also multiplies by the scale in float32, transformers' in the input dtype
    ("llama-tiny", "layers.0.attention_norm.output", "transformer_layer_0/self_attention_layernorm", True),
    # keras-hub's tanh GELU converts its 0.044715 to a float32 constant (conformance.oracles.keras_hub)
    ("gpt2-tiny", "layers.0.feed_forward.activation.output", "transformer_layer_0/feedforward_intermediate_dense",
     False),
])
def test_keras_hub_in_float64_diverges_at_its_float32_step(preset, first, module, transformers_too):
    r = conformance.compare("keras-hub@float64", "transformers@float64", preset=preset, batch=1, seq_len=8)
    assert r.tolerance == "float64" and r.first.name == first, r.summary()
    assert r.verdicts[0].verdict == "introduces it" and module in r.verdicts[0].says
    assert 1e-12 < r.first.max_abs < 1e-5  # float32 rounding, not a wrong formula
    # against the float64 reference: transformers' RMS norm rounds to float32 at the same op; its GELU does not
    hf = conformance.compare("transformers@float64", preset=preset, batch=1, seq_len=8)
    if transformers_too:
        assert hf.first.name == first and 1e-12 < hf.first.max_abs < 1e-5, hf.summary()
        assert hf.verdicts[0].verdict == "introduces it" and "input_layernorm (LlamaRMSNorm)" in hf.verdicts[0].says
    else:
        assert hf.passed, hf.summary()

def test_gemma_scaled_embedding_is_compared_at_its_own_boundary():
    """transformers' Gemma multiplies by sqrt(D) inside `embed_tokens`: compared as embeddings.output."""
    r = conformance.compare("transformers", "reference", cfg=registry.get("llama").config("gemma"), batch=1, seq_len=8)
    assert any(n.kind == "boundary" and n.path == "model.embed_tokens" for n in r.a.notes)
    assert "embeddings.output" in [c.name for c in r.ops] and r.passed, r.summary()


@pytest.mark.full
@pytest.mark.parametrize("what,source", [("onnx", "torch mirror"), ("onnx-tf", "tf mirror")])
def test_onnx_export_against_its_source_op_by_op(what, source):
    r = conformance.compare(what, source.split()[0], preset="gpt2-tiny", batch=1, seq_len=8)
    assert r.passed and len(r.ops) >= 20, r.summary()
    assert r.b.label == source and "an ONNX graph has no module" in r.a.no_replay


# ------------------------------------------------------------------------------- Keras's torch and jax backends

def test_keras_on_torch_agrees_with_keras_on_tensorflow_op_by_op():
    r = conformance.compare("keras-torch", "tf", preset="bert-tiny", batch=1, seq_len=8)
    assert r.passed and r.a.label == "tf mirror on Keras's torch backend (cpu)", r.summary()
    assert len(r.ops) == len(r.b.records) and not r.only_a and not r.only_b  # every traced op, both sides


@pytest.mark.parametrize("side,source", [("keras-torch", "keras/src/backend/torch/numpy.py"),
                                         ("keras-jax", "keras/src/backend/jax/numpy.py")])
def test_keras_on_another_backend_in_float64_is_float32_from_the_first_layer_norm(side, source):
    """Keras's torch backend, and its jax backend even with x64, compute ops.mean in float32 whatever its
    input (`keras_backends.KNOWN`): the first op that shows it is the embeddings' layer norm, and replaying
    the reference's layer norm on that side's own input (Keras's modules cannot run outside its subprocess)
    says it introduces it."""
    r = conformance.compare(f"{side}@float64", "reference", preset="bert-tiny", batch=1, seq_len=8)
    assert r.first.name == "embeddings.norm.output" and 1e-9 < r.first.max_abs < 1e-6, r.summary()
    assert all(c.passed for c in r.ops[:r.ops.index(r.first)])  # the embedding gathers are exact
    v = r.verdicts[0]
    assert v.reversed and v.verdict == "introduces it" and "reference's embeddings.norm" in v.says
    assert any(n.kind == "known" and "ops.mean" in n.says and source in n.says for n in r.a.notes)


# ------------------------------------------------------------------------------------ a user's model

def test_user_model_agrees_with_the_reference():
    r = conformance.compare(f"module:{USER}:make_model", preset="gpt2-tiny", std=USER_STD, batch=1, seq_len=8)
    assert r.passed and r.first is None, r.summary()
    assert len(r.ops) >= 20
    # what no module of the user's computes alone is listed with the module it happens inside
    assert "layers.0.attention.scores" in r.only_b
    assert r.a.inside("layers.0.attention.scores") == "blocks.0.attn (Attention)"


@pytest.mark.parametrize("bug,first,module", [
    ("transposed_kernel", "layers.0.attention.query.output", "blocks.0.attn.q (Projection)"),
    ("wrong_epsilon", "layers.0.feed_forward_norm.output", "blocks.0.ln2 (LayerNorm)"),
    ("missing_scale", "layers.0.attention.output.output", "blocks.0.attn (Attention)"),
])
def test_user_model_planted_bug_is_pinned_to_its_op(bug, first, module):
    r = conformance.compare(f"module:{USER}:make_{bug}", preset="gpt2-tiny", std=USER_STD, batch=1, seq_len=8)
    assert r.first.name == first and all(c.passed for c in r.ops[:r.ops.index(r.first)]), r.summary()
    assert r.verdicts[0].verdict == "introduces it" and r.culprit is r.verdicts[0]
    assert module in r.verdicts[0].says



def test_user_keras_model_agrees_and_its_keras_epsilon_is_pinned():
    """study/user_gpt2_keras.py: the same GPT-2 in Keras 3, traced by intercepting each layer's call."""
    user = "study/user_gpt2_keras.py"
    good = conformance.compare(f"module:{user}:make_model", preset="gpt2-tiny", std=USER_STD, batch=1, seq_len=8)
    assert good.passed and len(good.ops) >= 20, good.summary()
    bad = conformance.compare(f"module:{user}:make_wrong_epsilon", preset="gpt2-tiny", std=USER_STD, batch=1,
                              seq_len=8)
    assert bad.first.name == "layers.0.feed_forward_norm.output", bad.summary()
    assert bad.verdicts[0].verdict == "introduces it" and "blocks_0/ln2 (LayerNormalization)" in bad.verdicts[0].says

def test_user_model_in_memory_with_its_own_name_map():
    user = user_module()
    cfg = presets.get("gpt2-tiny")
    w = weights.initialize(cfg, seed=0, std=USER_STD)
    r = conformance.compare(Model(user.make_model(cfg, w), user.MODULES, label="mine"), "torch", cfg=cfg, weights=w,
                            batch=1, seq_len=8)
    assert r.passed and r.a.label == "mine" and r.b.label == "torch mirror", r.summary()


def test_cli_compare_a_b_writes_the_report(tmp_path, capsys):
    out = tmp_path / "r.md"
    code = cli.main(["compare", "gpt2-tiny", "--a", f"module:{USER}:make_missing_scale", "--std", str(USER_STD),
                     "--batch", "1", "--seq-len", "8", "--out", str(out)])
    text = out.read_text()
    assert code == 1 and text.strip() == capsys.readouterr().out.strip()
    assert "first op out of tolerance: layers.0.attention.output.output" in text and "introduces it" in text
    assert cli.main(["compare", "gpt2-tiny", "--a", f"module:{USER}:make_model", "--b", "torch",
                     "--std", str(USER_STD), "--batch", "1", "--seq-len", "8"]) == 0


# ------------------------------------------------------------------------------------------ bad input

def test_unmappable_module_path_names_it_and_the_nearest():
    user = user_module()
    cfg = presets.get("gpt2-tiny")
    w = weights.initialize(cfg, seed=0)
    table = dict(user.MODULES, **{"layers.{i}.attention.query": ("blocks.{i}.attn.qq", user.MODULES[
        "layers.{i}.attention.query"][1])})
    with pytest.raises(ValueError) as e:
        conformance.compare(Model(user.make_model(cfg, w), table), cfg=cfg, weights=w)
    assert str(e.value).startswith("the table maps canonical module 'layers.0.attention.query' to "
                                   "'blocks.0.attn.qq', which user model does not have; nearest module paths "
                                   "there: ['blocks.0.attn.q',")


def test_weights_not_from_the_shared_set_are_detected_by_fingerprint():
    user = user_module()
    cfg = presets.get("gpt2-tiny")
    w = weights.initialize(cfg, seed=0)
    with pytest.raises(ValueError, match=r"^user model was not loaded from the shared weights: fingerprint "
                                         r"[0-9a-f]{16}, the shared set's " + weights.fingerprint(w)):
        conformance.compare(Model(user.MyGPT2(cfg), user.MODULES), cfg=cfg, weights=w)
    other = weights.initialize(cfg, seed=1)  # loaded, but from another set
    with pytest.raises(ValueError, match="not loaded from the shared weights"):
        conformance.compare(Model(user.make_model(cfg, other), user.MODULES), cfg=cfg, weights=w)


def test_factory_that_returns_no_module(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("MODULES = {}\n\ndef make(cfg, weights):\n    return {'not': 'a module'}\n")
    cfg = presets.get("gpt2-tiny")
    with pytest.raises(ValueError, match=r"^mine.py:make returned builtins.dict, not a torch.nn.Module or a "
                                         r"keras.Model$"):
        load_factory(f"module:{path}:make", cfg, weights.initialize(cfg, seed=0))


@pytest.mark.parametrize("spec,words", [
    ("bogus", "an implementation must be one of ['numpy', 'torch', 'tf', 'reference', 'keras-torch', "
              "'keras-jax', 'onnx', 'onnx-tf', 'transformers', 'keras-hub'], 'module:PATH.py:FACTORY' or a conformance.compare.Model; "
              "received 'bogus'"),
    (f"module:{USER}", f"a user's model is named 'module:PATH.py:FACTORY'; received 'module:{USER}'"),
    ("module:study/nothere.py:f", "no factory file 'study/nothere.py' (from 'module:study/nothere.py:f')"),
    (f"module:{USER}:nothere", f"{USER} has no function 'nothere'; it defines ["),
    ("torch@float8", "the dtype after '@' must be one of"),
    ("keras-torch@tf32", "tf does not support dtype='tf32'"),
])
def test_bad_names(spec, words):
    with pytest.raises(ValueError) as e:
        conformance.compare(spec, preset="gpt2-tiny")
    assert str(e.value).startswith(words)


def test_summary_mode_finds_the_same_first_divergence_without_replay():
    r = conformance.compare(f"module:{USER}:make_missing_scale", preset="gpt2-tiny", std=USER_STD, batch=1,
                            seq_len=8, summary=True)
    assert r.first.name == "layers.0.attention.output.output", r.summary()
    assert r.verdicts[0].verdict == "not replayed" and "traced in summary mode" in r.verdicts[0].says
