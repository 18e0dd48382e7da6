"""Each interview answer in docs/questions.md, asserted on small versions of `study.questions`' measurements."""
import numpy as np
import pytest

from study import docsrc
from study import questions as q


def test_bert_base_parameters_split():
    p = q.bert_base_parameters()
    assert p["total"] == 109_482_240
    assert p["embeddings_total"] + p["layers_total"] + p["pooler"] == p["total"]
    assert p["embeddings"]["token (V x D)"] == 30522 * 768
    assert p["per_layer"] == {"attention": 4 * (768 * 768 + 768), "feed_forward": 2 * 768 * 3072 + 3072 + 768,
                              "norms": 4 * 768}
    assert p["pooler"] == 768 * 768 + 768
    assert p["per_layer"]["feed_forward"] == 2 * p["per_layer"]["attention"] - 2304  # two thirds of a layer


def test_scores_variance_grows_with_head_width_and_the_scale_undoes_it():
    rows = q.why_scale(head_dims=(16, 256, 1024))
    for r in rows:
        assert r.score_var_unscaled == pytest.approx(r.head_dim, rel=0.1)
        assert r.score_var_scaled == pytest.approx(1.0, rel=0.1)
        assert r.entropy_scaled > 3.5  # near uniform over 64 keys: log 64 = 4.16
    unscaled = [r.entropy_unscaled for r in rows]
    assert unscaled == sorted(unscaled, reverse=True) and unscaled[-1] < 0.2  # collapses to one-hot
    assert rows[-1].max_prob_unscaled > 0.9 and rows[-1].max_prob_scaled < 0.2
    assert rows[-1].jacobian_unscaled < 0.5 * rows[-1].jacobian_scaled  # saturation: the gradient vanishes
    assert max(r.jacobian_scaled for r in rows) - min(r.jacobian_scaled for r in rows) < 0.02  # flat in Dh


def test_attention_score_memory_is_exactly_quadratic():
    c = q.attention_cost(lengths=(32, 64, 128, 256), repeats=1)
    rows = c["rows"]
    assert [r.score_bytes for r in rows] == [4 * T * T * 8 for T in (32, 64, 128, 256)]  # B H T T float64
    assert c["exponent_score_bytes"] == pytest.approx(2.0, abs=1e-9)
    assert c["exponent_flops"] == pytest.approx(2.0, abs=1e-9)
    ratios = [b.peak_bytes / a.peak_bytes for a, b in zip(rows, rows[1:])]
    assert 1.5 < c["exponent_peak_bytes"] < 2.05 and ratios[-1] > ratios[0]  # tends to 4 as O(T) terms fade
    assert all(r.seconds > 0 for r in rows)  # time is recorded, never asserted against a bound


def test_attention_cost_rejects_a_single_length():
    with pytest.raises(ValueError, match=r"lengths must hold at least 2 .* received \(128,\)"):
        q.attention_cost(lengths=(128,))


def test_without_positions_word_order_is_invisible():
    r = q.without_positions()
    assert r["without positions"]["pooled_difference"] < 1e-12            # 'dog bites man' == 'man bites dog'
    assert r["without positions"]["permuted_difference"] < 1e-12          # permutation-equivariant
    assert r["with positions"]["pooled_difference"] > 1e-2
    assert r["with positions"]["permuted_difference"] > 1e-2


def test_permutation_equivariance_for_any_permutation():
    from conformance import weights
    from conformance.backends.build import build
    cfg = q.small("bert")
    w = weights.initialize(cfg, seed=3, std=0.2)
    w["embeddings.position.table"] = np.zeros_like(w["embeddings.position.table"])
    m = build("numpy", cfg, w, dtype="float64")
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 9))
    perm = np.random.default_rng(1).permutation(9)
    out = m(input_ids=ids)["last_hidden_state"]
    np.testing.assert_allclose(m(input_ids=ids[:, perm])["last_hidden_state"], out[:, perm], atol=1e-12)


def test_pre_norm_keeps_the_bottom_gradient_flat_and_post_norm_shrinks_it():
    r = q.pre_vs_post_norm(depths=(1, 16), seeds=(0,))
    post, pre = r["post-norm"], r["pre-norm"]
    assert post[1]["input_grad"] < 0.7 * post[0]["input_grad"]
    assert post[1]["first_layer_grad"] < 0.7 * post[0]["first_layer_grad"]
    assert 0.75 < pre[1]["input_grad"] / pre[0]["input_grad"] < 1.33
    assert 0.75 < pre[1]["first_layer_grad"] / pre[0]["first_layer_grad"] < 1.33


def test_pre_vs_post_norm_rejects_depth_zero():
    with pytest.raises(ValueError, match=r"depths must be >= 1; received depths=\(0, 2\)"):
        q.pre_vs_post_norm(depths=(0, 2))


def test_bert_sees_later_tokens_and_gpt2_does_not():
    r = q.bert_vs_gpt_masks()
    T, real = len(r["tokens"]), r["tokens"].index("[PAD]")
    assert r["bert_mask"].tolist() == [[j < real for j in range(T)] for _ in range(T)]
    assert r["gpt2_mask"].tolist() == [[j <= i and j < real for j in range(T)] for i in range(T)]
    assert r["effect"]["bert"]["before"] > 1e-3          # a later word changes earlier outputs
    assert r["effect"]["gpt2"]["before"] == 0.0          # exactly: earlier positions never see it
    assert r["effect"]["gpt2"]["at_and_after"] > 1e-3


def test_tokenize_names_unknown_words_and_short_lengths():
    tokens, ids, mask = q.tokenize("the dog barks", 7)
    assert tokens[:5] == ["[CLS]", "the", "dog", "barks", "[SEP]"] and mask.tolist() == [[1] * 5 + [0] * 2]
    with pytest.raises(ValueError, match=r"received unknown \['zebra'\]"):
        q.tokenize("the zebra")
    with pytest.raises(ValueError, match=r"length must be >= 5 .* received length=3"):
        q.tokenize("the dog barks", 3)


def test_batch_norm_depends_on_the_batch_and_layer_norm_does_not():
    r = q.layer_vs_batch_norm()
    assert r["layer_norm"] == {"other_examples": 0.0, "padding": 0.0}
    assert r["batch_norm"]["other_examples"] > 0.1 and r["batch_norm"]["padding"] > 0.1


def test_study_batch_norm_is_torchs_training_mode_batch_norm():
    import torch
    x = np.random.default_rng(0).standard_normal((3, 5, 8))
    ours = q.batch_norm(x)
    theirs = torch.nn.functional.batch_norm(torch.from_numpy(x.reshape(-1, 8)), None, None, training=True, eps=1e-5)
    np.testing.assert_allclose(ours.reshape(-1, 8), theirs.numpy(), atol=1e-12)


def test_model_families_parameters_and_flops():
    rows = {r["model"]: r for r in q.model_families()}
    bert, roberta, distil, gpt2 = (rows[k] for k in ("BERT-base", "RoBERTa-base", "DistilBERT-base", "GPT-2 (124M)"))
    assert roberta["parameters"] - bert["parameters"] == (50265 - 30522 + 514 - 512 + 1 - 2) * 768
    assert roberta["flops"] == bert["flops"]  # the vocabulary is a lookup: no FLOPs
    assert distil["layer_parameters"] * 2 == bert["layer_parameters"]
    assert distil["flops"] < 0.51 * bert["flops"]
    assert gpt2["layer_parameters"] == bert["layer_parameters"]


@pytest.mark.parametrize("family", q.families(), ids=lambda f: f.name)
def test_family_parameter_counts_equal_transformers(family):
    counted = next(r["parameters"] for r in q.model_families() if r["model"] == family.name)
    assert counted == q.transformers_parameters(family)


@pytest.mark.full
def test_figures_command_writes_every_table_and_figure(tmp_path):
    from conformance.cli import main
    assert main(["figures", "--quick", "--out", str(tmp_path)]) == 0
    tables = {p.name for p in (tmp_path / "generated").glob("*.md")}
    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert tables == {p.name for p in (docsrc.DOCS / "generated").glob("*.md")}
    assert figures == {"positional_encoding.png", "attention_patterns.png", "error_by_depth.png",
                       "cost_vs_length.png", "softmax_scale.png", "pre_post_norm.png"}
    assert all((tmp_path / "figures" / f).read_bytes()[:4] == b"\x89PNG" for f in figures)
