"""RoBERTa, DistilBERT, ELECTRA, ALBERT and DeBERTa-v3 checkpoints: transformers' own files in.

conformance/suites/test_transformers_families.py proves our weights written with `to_hf` run in
transformers, for the registry's cases. Here the files come from transformers itself
(`save_pretrained` of a model it initialized from a config it wrote, weights redrawn large enough
that a wrong field shows), for every class of every layout: each numerics-changing config.json
field set to a value that is not its default, one at a time, and `from_hf` must give a model with
transformers' outputs (the NumPy reference in float64 against transformers in float64: 1e-12,
except DeBERTa, whose scale is a float32 sqrt in every dtype). Every class round-trips bit for
bit, unsupported values are refused by name, and an ALBERT whose group count disagrees with its
tensors is one clear error.
"""
import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import TOLERANCES, compare
from conformance.oracles.transformers import OUR_NAMES
from conformance.spec import families
from conformance.spec.inputs import token_inputs
from conformance.weights import checkpoints

SMALL = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=40)
BASE = {"roberta": SMALL, "electra": dict(SMALL, embedding_size=16), "albert": dict(SMALL, embedding_size=16),
        "bert": SMALL,
        "distilbert": dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=40),
        "deberta-v2": dict(SMALL, relative_attention=True, position_biased_input=False, share_att_key=True,
                           norm_rel_ebd="layer_norm", pos_att_type=["p2c", "c2p"], position_buckets=4,
                           max_relative_positions=16, type_vocab_size=0)}
# (class, config.json values that are not transformers' defaults): each row changes the numbers
FIELDS = [
    ("RobertaModel", {}),
    ("RobertaModel", {"pad_token_id": 3}),            # the positions count from 4, pads sit at 3
    ("RobertaModel", {"layer_norm_eps": 0.3, "hidden_act": "gelu_new"}),
    ("RobertaModel", {"type_vocab_size": 2}),
    ("RobertaForMaskedLM", {"hidden_act": "relu"}),   # the LM head's GELU stays erf
    ("RobertaForSequenceClassification", {"num_labels": 5}),
    ("RobertaForTokenClassification", {"num_labels": 4}),
    ("RobertaForQuestionAnswering", {}),
    ("DistilBertModel", {}),
    ("DistilBertModel", {"activation": "relu"}),
    ("DistilBertModel", {"sinusoidal_pos_embds": True}),  # an initializer only: the file holds the table
    ("DistilBertForMaskedLM", {"activation": "gelu_new"}),
    ("DistilBertForTokenClassification", {"num_labels": 4}),
    ("DistilBertForQuestionAnswering", {}),
    ("ElectraModel", {}),
    ("ElectraModel", {"embedding_size": 32}),         # E = D: no embeddings_project
    ("ElectraModel", {"layer_norm_eps": 0.3, "type_vocab_size": 3}),
    ("ElectraForPreTraining", {}),
    ("ElectraForPreTraining", {"hidden_act": "gelu_new"}),
    ("ElectraForTokenClassification", {"num_labels": 4}),
    ("ElectraForQuestionAnswering", {}),
    ("AlbertModel", {}),
    ("AlbertModel", {"num_hidden_layers": 4, "num_hidden_groups": 2}),   # groups 0, 0, 1, 1
    ("AlbertModel", {"num_hidden_layers": 6, "num_hidden_groups": 4}),   # uneven: 0, 0, 1, 2, 2, 3
    ("AlbertModel", {"hidden_act": "gelu", "embedding_size": 32}),       # E = D: still mapped in
    ("AlbertForMaskedLM", {}),
    ("AlbertForTokenClassification", {"num_labels": 4}),
    ("AlbertForQuestionAnswering", {}),
    ("BertForTokenClassification", {"num_labels": 4}),
    ("DebertaV2Model", {}),
    ("DebertaV2Model", {"pos_att_type": ["c2p"]}),
    ("DebertaV2Model", {"pos_att_type": ["p2c"], "layer_norm_eps": 0.3}),
    ("DebertaV2Model", {"position_buckets": -1, "max_relative_positions": 3}),  # exact distances, clipped at 3
    ("DebertaV2Model", {"max_relative_positions": 8}),  # distance 7 = max - 1: the buckets' boundary
    ("DebertaV2ForTokenClassification", {"num_labels": 4}),
]
CLASSES = sorted({cls for cls, _ in FIELDS})
IDS = [f"{c}-{'-'.join(o) or 'defaults'}" for c, o in FIELDS]


def model_type(cls):
    return getattr(transformers, cls).config_class.model_type


def save_hf(cls, path, **overrides):
    """A transformers model of class `cls` from its own config, weights redrawn (std 0.3, norm gains near 1:
    transformers' std 0.02 is too gentle to show a wrong field), written by `save_pretrained`."""
    config = getattr(transformers, cls).config_class(**{**BASE[model_type(cls).replace("_", "-")], **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "LayerNorm.weight" in name or "layer_norm.weight" in name
                                                 else 0.0))
    model.save_pretrained(path)
    return model.double().eval()


def inputs_for(cfg):
    """Two rows of 9 tokens, the second right-padded by 3; RoBERTa's pads carry its pad id."""
    inputs = token_inputs(cfg, np.random.default_rng(0), 2, 9)
    inputs["attention_mask"][1, 6:] = 0
    if cfg.pad_positions:
        inputs["input_ids"][1, 6:] = cfg.pad_token_id
    return inputs


def hf_outputs(model, inputs):
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {OUR_NAMES.get(k, k): v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def held(cfg, x, inputs):
    """Positions a masked-query layout (DeBERTa) leaves to each library: zeroed on both sides."""
    if not families.get(cfg.kind).checkpoint(cfg).masked_queries or x.ndim < 2:
        return x
    keep = inputs["attention_mask"] > 0
    return np.where(keep.reshape(*keep.shape, *([1] * (x.ndim - 2))), x, 0)


def check(cfg, ours, theirs, inputs, dtype, label):
    keys = sorted(set(ours) & set(theirs))
    assert keys, f"{label}: no output in common: ours {sorted(ours)}, transformers {sorted(theirs)}"
    for key in keys:
        result = compare(f"{label}.{key}", held(cfg, ours[key], inputs), held(cfg, theirs[key], inputs),
                         TOLERANCES[dtype])
        assert result.passed, str(result)


def row_dtype(cfg):
    """float64 both sides, except DeBERTa (transformers divides by a float32 sqrt(3 Dh): 3e-8 relative)."""
    return "float32" if cfg.kind == "deberta" else "float64"


@pytest.mark.parametrize("cls,overrides", FIELDS, ids=IDS)
def test_transformers_files_import_with_every_numerics_field(cls, overrides, tmp_path):
    model = save_hf(cls, tmp_path, **overrides)
    cfg, w = weights.from_hf(tmp_path)
    assert cfg.checkpoint in ("", model.config.model_type)
    inputs = inputs_for(cfg)
    ours = build("numpy", cfg, w, dtype="float64")(**inputs)
    check(cfg, ours, hf_outputs(model, inputs), inputs, row_dtype(cfg), f"numpy from_hf({cls} {overrides})")


TWIN_ROWS = ["RobertaForTokenClassification", "DistilBertForMaskedLM", "ElectraForPreTraining", "AlbertForMaskedLM",
             "DebertaV2ForTokenClassification"]


@pytest.mark.parametrize("cls", TWIN_ROWS)
def test_twins_run_transformers_files(cls, tmp_path):
    """The twins on the same files, float32: torch and Keras against transformers."""
    model = save_hf(cls, tmp_path)
    cfg, w = weights.from_hf(tmp_path)
    inputs = inputs_for(cfg)
    expected = hf_outputs(model, inputs)
    for framework in ("torch", "tf"):
        ours = build(framework, cfg, w, dtype="float32")(**inputs)
        check(cfg, ours, expected, inputs, "float32", f"{framework} from_hf({cls})")


@pytest.mark.parametrize("cls,overrides,wrong", [
    ("RobertaModel", {"pad_token_id": 3}, {"pad_token_id": 1}),
    ("AlbertModel", {"num_hidden_layers": 4, "num_hidden_groups": 2}, {"num_layers": 2}),
    ("ElectraForPreTraining", {"hidden_act": "gelu_new"}, {"activation": "gelu"}),
    ("RobertaForMaskedLM", {"hidden_act": "relu"}, {"mlm_activation": None}),
    ("DebertaV2Model", {}, {"relative_attention": ("c2p",)}),
])
def test_a_field_read_wrongly_changes_the_outputs(cls, overrides, wrong, tmp_path):
    """The tests above can fail: the same file read with one field wrong is far off."""
    model = save_hf(cls, tmp_path, **overrides)
    cfg, w = weights.from_hf(tmp_path)
    inputs = inputs_for(cfg)
    expected = hf_outputs(model, inputs)
    ours = build("numpy", cfg.replace(**wrong), w, dtype="float64")(**inputs)
    key = "logits" if "logits" in expected else "last_hidden_state"
    assert not compare("wrong field", held(cfg, ours[key], inputs), held(cfg, expected[key], inputs),
                       TOLERANCES["float32"]).passed


@pytest.mark.parametrize("cls", CLASSES)
def test_hf_round_trip_gives_back_the_same_tensors(cls, tmp_path):
    save_hf(cls, tmp_path / "hf")
    cfg, w = checkpoints.from_hf(tmp_path / "hf")
    written = checkpoints.to_hf(cfg, w, tmp_path / "out", architecture=cls)
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(written / "model.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    back, _ = checkpoints.from_hf(written)
    assert back == cfg


@pytest.mark.parametrize("cls,key,value,message", [
    ("AlbertModel", "inner_group_num", 2, r"config.json inner_group_num must be 1 to import as AlbertModel; received 2"),
    ("RobertaModel", "is_decoder", True, r"config.json is_decoder must be False"),
    ("RobertaModel", "position_embedding_type", "relative_key", r"position_embedding_type must be 'absolute'"),
    ("DebertaV2Model", "share_att_key", False, r"config.json share_att_key must be True .*received share_att_key=False"),
    ("DebertaV2Model", "position_biased_input", True, r"position_biased_input must be False"),
    ("DebertaV2Model", "relative_attention", False, r"relative_attention must be True"),
    ("DebertaV2Model", "conv_kernel_size", 3, r"conv_kernel_size must be 0"),
    ("DebertaV2Model", "norm_rel_ebd", "none", r"norm_rel_ebd must include 'layer_norm'"),
    ("DebertaV2Model", "pos_att_type", ["c2p", "p2p"], r"pos_att_type must name terms of \['c2p', 'p2c'\]; "
                                                      r"received \['p2p'\]"),
    ("DebertaV2Model", "embedding_size", 16, r"embedding_size must equal hidden_size"),
    ("ElectraModel", "hidden_act", "mish", r"hidden_act must be one of .*received hidden_act='mish'"),
])
def test_unsupported_values_are_named(cls, key, value, message, tmp_path):
    save_hf(cls, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=message):
        weights.from_hf(tmp_path)


@pytest.mark.parametrize("groups,written", [(2, 1), (2, 3)])
def test_albert_group_count_disagreeing_with_its_tensors_is_one_clear_error(groups, written, tmp_path):
    """A file of 2 layer groups whose config.json says 1 (or 3): one ValueError naming the field, the
    groups it implies and the groups the file holds; not a list of missing and unexpected tensors."""
    save_hf("AlbertModel", tmp_path, num_hidden_layers=4, num_hidden_groups=groups)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_groups": written}))
    with pytest.raises(ValueError) as err:
        weights.from_hf(tmp_path)
    assert str(err.value) == (f"{tmp_path}: config.json num_hidden_groups={written} (Config.num_layer_groups) needs the "
                              f"tensors of {written} layer block(s) {list(range(written))}; the file holds 2: [0, 1]")
    assert not isinstance(err.value, weights.WeightsError)  # not the generic missing/unexpected list


def test_albert_shares_one_layer_and_transformers_counts_the_same():
    """albert-base-v2: 12 layers of compute on one layer of weights. The parameters are BERT-base's
    minus 11 layers and most of the embedding table; the layers' matmul FLOPs are BERT-base's exactly
    (its tanh GELU costs 9 FLOPs an element to erf's 5: the one difference in the layers)."""
    from conformance.core.costs import MATMUL
    from conformance.costs import flops, params
    from conformance.spec import presets
    albert, bert = presets.get("albert-base-v2"), presets.get("bert-base")
    a, b = params.count(albert), params.count(bert)
    assert a["total"] == params.transformers_count(albert)["total"] == 11_683_584
    assert a["layers"] == {"encoder": 1} and b["layers"] == {"encoder": 12}
    assert a["per_layer"]["encoder"] == b["per_layer"]["encoder"]
    fa, fb = (flops.totals(flops.ops(c, 1, 128)) for c in (albert, bert))
    assert fa["by_category"]["attention"] == fb["by_category"]["attention"]
    layer_a, layer_b = (sum(o.total for o in flops.ops(c, 1, 128) if o.name.startswith("encoder.*")
                            and o.category in MATMUL) for c in (albert, bert))
    assert layer_a == layer_b and a["total"] < b["total"] / 9


def test_roberta_positions_skip_padding_as_transformers():
    """Right- and left-padded, the same real tokens get the same positions (pad + 1 ...) in every mirror
    and in transformers' create_position_ids_from_input_ids; pads sit at the pad id."""
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings
    import numpy_ref.bert as n
    import tf_impl.bert as k
    import torch_impl.bert as t
    from keras import ops
    ids = np.array([[5, 7, 9, 1, 1], [1, 1, 5, 7, 9]])
    expected = RobertaEmbeddings.create_position_ids_from_input_ids(torch.from_numpy(ids), 1).numpy()
    assert expected.tolist() == [[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]]
    np.testing.assert_array_equal(n.padding_positions(ids, 1), expected)
    np.testing.assert_array_equal(t.padding_positions(torch.from_numpy(ids), 1).numpy(), expected)
    np.testing.assert_array_equal(ops.convert_to_numpy(k.padding_positions(ops.convert_to_tensor(ids), 1)), expected)


def test_roberta_padding_inside_a_row_is_refused_where_transformers_accepts_it(tmp_path):
    """transformers numbers the tokens after a pad in the middle as if the pad were not there; here that
    row is refused with one ValueError (in every framework alike: tests/test_bad_input.py)."""
    model = save_hf("RobertaModel", tmp_path)
    cfg, w = weights.from_hf(tmp_path)
    ids = np.array([[5, 7, 1, 9, 6]])
    with torch.no_grad():
        model(input_ids=torch.from_numpy(ids))  # accepted
    with pytest.raises(ValueError, match=r"received 1 at row 0, position 2, between real tokens"):
        build("numpy", cfg, w)(input_ids=ids)
