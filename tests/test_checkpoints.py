"""Hugging Face import / export (`conformance.weights.checkpoints`): bit-exact round trips, files
`transformers` loads cleanly, config fields read, and every bad checkpoint named."""
import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conformance.weights import checkpoints
from conformance.spec import families, registry
from conformance import weights

import transformers  # noqa: E402
import torch  # noqa: E402

BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99,
            max_position_embeddings=64)
GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64, bos_token_id=None, eos_token_id=None)
CLASSES = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForQuestionAnswering",
           "GPT2Model", "GPT2LMHeadModel"]
AUTO = {"BertModel": "AutoModel", "BertForMaskedLM": "AutoModelForMaskedLM",
        "BertForSequenceClassification": "AutoModelForSequenceClassification",
        "BertForQuestionAnswering": "AutoModelForQuestionAnswering", "GPT2LMHeadModel": "AutoModelForCausalLM"}
CANONICAL = [("bert", "none"), ("bert", "mlm"), ("bert", "classification"), ("bert", "qa"), ("gpt2", "none")]


def save_hf(name, path, **overrides):
    """A randomly initialized HF model of class `name`, written by `save_pretrained`."""
    config = (transformers.GPT2Config(**{**GPT2, **overrides}) if name.startswith("GPT2")
              else transformers.BertConfig(**{**BERT, **overrides}))
    getattr(transformers, name)(config).save_pretrained(path)
    return path


def canonical(kind, head):
    cfg = registry.get(kind).tiny.replace(head=head)
    return cfg, weights.initialize(cfg, seed=1)


@pytest.mark.parametrize("kind,head", CANONICAL)
def test_canonical_round_trip_is_bit_exact(kind, head, tmp_path):
    cfg, w = canonical(kind, head)
    back_cfg, back = weights.from_hf(weights.to_hf(cfg, w, tmp_path))
    assert back_cfg == cfg
    assert sorted(back) == sorted(w)
    for name in w:
        assert back[name].dtype == w[name].dtype and np.array_equal(back[name], w[name]), name


@pytest.mark.parametrize("name", CLASSES)
def test_hf_round_trip_gives_back_the_same_tensors(name, tmp_path):
    original = save_hf(name, tmp_path / "hf")
    cfg, w = checkpoints.from_hf(original)
    written = checkpoints.to_hf(cfg, w, tmp_path / "out", architecture=name)
    a, b = load_file(original / "model.safetensors"), load_file(written / "model.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert json.loads((written / "config.json").read_text())["architectures"] == [name]


@pytest.mark.parametrize("kind,head", CANONICAL)
def test_to_hf_output_loads_in_transformers_without_missing_or_unexpected_keys(kind, head, tmp_path):
    cfg, w = canonical(kind, head)
    path = weights.to_hf(cfg, w, tmp_path)
    name = json.loads((path / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, AUTO[name]).from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == name
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    table = state["bert.embeddings.word_embeddings.weight" if name.startswith("BertFor")
                  else "embeddings.word_embeddings.weight" if kind == "bert" else "transformer.wte.weight"]
    assert np.array_equal(table, w["embeddings.token.table"])


def test_config_fields_are_read_from_config_json(tmp_path):
    cfg, _ = checkpoints.from_hf(save_hf("BertForSequenceClassification", tmp_path / "bert", layer_norm_eps=1e-7,
                                         hidden_act="gelu_new", num_labels=5, type_vocab_size=3))
    assert (cfg.layer_norm_eps, cfg.activation, cfg.num_labels, cfg.type_vocab_size) == (1e-7, "gelu_tanh", 5, 3)
    assert (cfg.kind, cfg.head, cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.num_layers, cfg.max_positions) == \
        ("bert", "classification", 32, 4, 64, 2, 64)
    cfg, _ = checkpoints.from_hf(save_hf("GPT2LMHeadModel", tmp_path / "gpt2", layer_norm_epsilon=1e-6,
                                         activation_function="relu", n_inner=48))
    assert (cfg.layer_norm_eps, cfg.activation, cfg.d_ff, cfg.norm_first, cfg.causal) == (1e-6, "relu", 48, True, True)


@pytest.mark.parametrize("field,value", [("hidden_act", "mish"), ("position_embedding_type", "relative_key"),
                                         ("is_decoder", True)])
def test_unsupported_config_values_are_named(field, value, tmp_path):
    path = save_hf("BertModel", tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=f"{field}.*{value!r}"):
        checkpoints.from_hf(path)


def test_another_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaModel"]}))
    known = [c.model_type for f in families.FAMILIES.values() for c in f.checkpoints]
    assert {"bert", "gpt2", "llama", "mistral", "qwen2", "gemma", "gemma2"} <= set(known)
    with pytest.raises(ValueError, match=re.escape(f"model_type must be one of {known}") + ".*received model_type='mamba'"):
        checkpoints.from_hf(tmp_path)


def test_missing_directory_and_missing_weights_name_the_path(tmp_path):
    with pytest.raises(weights.WeightsError, match=f"directory not found: {tmp_path / 'nope'}"):
        weights.from_hf(tmp_path / "nope")
    path = save_hf("BertModel", tmp_path / "hf")
    (path / "model.safetensors").unlink()
    with pytest.raises(weights.WeightsError, match=f"no weights file in {path}: expected model.safetensors"):
        weights.from_hf(path)


def test_removed_renamed_and_misshaped_tensors_are_all_listed(tmp_path):
    path = save_hf("BertForMaskedLM", tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    key = "bert.encoder.layer.0.attention.self.key.weight"
    tensors[key.replace("key", "kee")] = tensors.pop(key)
    tensors["cls.predictions.transform.dense.weight"] = tensors["cls.predictions.transform.dense.weight"][:, :31]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(weights.WeightsError) as e:
        checkpoints.from_hf(path)
    message = str(e.value)
    assert "4 weight problem(s)" in message
    assert ("missing encoder.1.feed_forward.outer.bias (HF bert.encoder.layer.1.output.dense.bias): "
            "expected shape (32,)") in message
    assert "missing encoder.0.attention.key.kernel (HF bert.encoder.layer.0.attention.self.key.weight" in message
    assert "unexpected bert.encoder.layer.0.attention.self.kee.weight: shape (32, 32)" in message
    assert "mis-shaped mlm.transform.kernel (HF cls.predictions.transform.dense.weight, stored [out, in]): " \
           "expected (32, 32), received (31, 32)" in message


def test_untied_output_head_is_refused(tmp_path):
    path = save_hf("GPT2LMHeadModel", tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="lm_head.weight differs from the tensor it is tied to"):
        checkpoints.from_hf(path)


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    path = save_hf("GPT2LMHeadModel", tmp_path / "hf")
    expected_cfg, expected = checkpoints.from_hf(path)
    model = transformers.GPT2LMHeadModel.from_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # carries the tied lm_head.weight copy
    (path / "model.safetensors").unlink()
    cfg, w = checkpoints.from_hf(path)
    assert cfg == expected_cfg and all(np.array_equal(w[k], expected[k]) for k in expected)

    marker = tmp_path / "executed"
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path / "pytorch_model.bin")
    with pytest.raises(weights.WeightsError, match=r"cannot be loaded with torch.load\(weights_only=True\)"):
        checkpoints.from_hf(path)
    assert not marker.exists(), "unpickling ran code"


class Payload:
    """A pickle that would create a file if unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_to_hf_refuses_a_config_huggingface_cannot_express(tmp_path):
    cfg, w = canonical("bert", "none")
    with pytest.raises(ValueError, match="Config.use_bias must be True for a Hugging Face bert; received False"):
        checkpoints.to_hf(cfg.replace(use_bias=False), w, tmp_path)
    with pytest.raises(ValueError, match="architecture must be one of"):
        checkpoints.to_hf(cfg, w, tmp_path, architecture="BertForMaskedLM")


def test_pretraining_checkpoint_drops_other_heads_with_a_warning(tmp_path):
    """bert-base-uncased is a BertForPreTraining file: pooler and next-sentence head beside the
    masked-LM head. It imports as head "mlm" (or any head asked for); the tensors of heads the
    chosen one lacks are named in a warning, as transformers names them, and nothing else is lost."""
    path = save_hf("BertForPreTraining", tmp_path)
    with pytest.warns(UserWarning, match=r"4 tensors of other heads are not used by head='mlm': "
                                         r"bert.pooler.dense.bias, bert.pooler.dense.weight, "
                                         r"cls.seq_relationship.bias, cls.seq_relationship.weight"):
        cfg, w = checkpoints.from_hf(path)
    assert cfg.head == "mlm" and "mlm.transform.kernel" in w
    with pytest.warns(UserWarning, match=r"tensors of other heads are not used by head='none': "
                                         r"cls.predictions.bias, cls.predictions.transform"):
        cfg, w = checkpoints.from_hf(path, head="none")
    assert cfg.head == "none" and "pooler.kernel" in w and not any(k.startswith("mlm.") for k in w)
    hf = transformers.BertModel.from_pretrained(path).eval()
    ids = np.arange(12).reshape(2, 6) % 99
    from conformance.backends.build import build
    ours = build("torch", cfg, w, dtype="float32")(input_ids=ids)
    with torch.no_grad():
        theirs = hf(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    from conformance.compare.tolerance import TOLERANCES, compare
    result = compare("BertModel from a pretraining file", ours["last_hidden_state"], theirs, TOLERANCES["float32"])
    assert result.passed, str(result)
    with pytest.raises(ValueError, match=r"head must be one of \['classification', 'mlm', 'none', 'qa', 'token_classification'\]"):
        checkpoints.from_hf(path, head="ner")
