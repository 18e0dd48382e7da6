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
    albert, electra, deberta = (rows[k] for k in ("ALBERT-base-v2", "ELECTRA-base", "DeBERTa-v3-base"))
    assert roberta["parameters"] - bert["parameters"] == (50265 - 30522 + 514 - 512 + 1 - 2) * 768
    assert roberta["flops"] == bert["flops"]  # the vocabulary is a lookup: no FLOPs
    assert distil["layer_parameters"] * 2 == bert["layer_parameters"]
    assert distil["flops"] < 0.51 * bert["flops"]
    assert gpt2["layer_parameters"] == bert["layer_parameters"]
    # ALBERT: one layer's weights (BERT's layer exactly) run 12 times; the E = 128 projection adds FLOPs
    assert albert["layer_parameters"] * 12 == bert["layer_parameters"] and albert["layers"] == 12
    assert albert["parameters"] < bert["parameters"] / 9 and albert["flops"] > bert["flops"]
    assert electra["parameters"] == bert["parameters"] - (768 * 768 + 768)  # no pooler, same shapes
    # DeBERTa: BERT's layers; per layer its 512-row relative table through the key and query projections
    assert deberta["layer_parameters"] == bert["layer_parameters"]
    relative = 12 * (2 * 2 * 512 * 768 * 768 + 2 * 2 * 12 * 128 * 512 * 64)
    assert deberta["flops"] - bert["flops"] == pytest.approx(relative, rel=0.02)


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
                       "cost_vs_length.png", "softmax_scale.png", "pre_post_norm.png", "linear_attention_error.png"}
    assert all((tmp_path / "figures" / f).read_bytes()[:4] == b"\x89PNG" for f in figures)


def test_the_toy_model_learned_its_corpus():
    """The decoding answers need a model that ends its sentences: each continuation's log p within 0.05 of the
    log of its share of the corpus."""
    corpus = q.decoding_strategies()["corpus"]
    assert sum(share for share, _ in corpus.values()) == pytest.approx(1.0)
    for text, (share, logp) in corpus.items():
        assert logp == pytest.approx(np.log(share), abs=0.05), text


def test_greedy_is_myopic_beam_search_is_not_and_sampling_explores():
    r = q.decoding_strategies()
    rows = {d.strategy.split()[0]: d for d in r["strategies"]}
    greedy, beam = rows["greedy"], rows["beam"]
    corpus = r["corpus"]
    first = max({t.split()[0] for t in corpus}, key=lambda w: sum(s for t, (s, _) in corpus.items()
                                                                 if t.split()[0] == w))
    assert greedy.text.split()[0] == first                    # the likeliest first word ...
    assert beam.log_prob > greedy.log_prob + 0.1              # ... leads greedy to a sentence beam search beats
    assert beam.score == pytest.approx(beam.log_prob / beam.length)
    samples = [d for d in r["strategies"] if d.strategy.startswith("sample")]
    assert all(d.text.removesuffix(" [SEP]") in corpus for d in samples + [greedy, beam])
    assert len({d.text for d in samples}) >= 3
    assert [d.text for d in samples] == [d.text for d in q.decoding_strategies()["strategies"][2:]]  # seeded


def test_length_penalty_lengthens_the_chosen_hypothesis():
    r = q.decoding_strategies()
    rows = r["length_penalty"]
    lengths = [d.length for d in rows]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    for d, lp in zip(rows, (-1.0, 0.0, 0.5, 1.0, 2.0)):
        assert d.score == pytest.approx(d.log_prob / d.length ** lp)
    at_zero = next(d for d, lp in zip(rows, (-1.0, 0.0, 0.5, 1.0, 2.0)) if lp == 0.0)
    best = max(r["corpus"], key=lambda t: r["corpus"][t][1])
    assert at_zero.text == f"{best} [SEP]"                    # penalty 0: the most probable (and shortest) wins


def test_beam_walkthrough_follows_the_rules():
    w = q.beam_walkthrough()
    for step in range(1, w["steps"] + 1):
        rows = [r for r in w["rows"] if r["step"] == step]
        assert [r["log_prob"] for r in rows] == sorted((r["log_prob"] for r in rows), reverse=True)
        assert sum(r["fate"] == "runs on" for r in rows) == w["num_beams"]
        assert all(r["ends"] for r in rows if r["fate"] == "stored")
        assert not any(r["ends"] for r in rows if r["fate"] == "runs on")
    chosen = q.decoding_strategies()["strategies"][1]
    assert w["result"].text == chosen.text and w["result"].score == pytest.approx(chosen.score)
    assert any(r["fate"] == "stored" and r["candidate"] == chosen.text for r in w["rows"])


# -------------------------------------------------------------------------------- the LLaMA family

def test_rotary_scores_depend_on_the_offset_only():
    """Both positions shifted by 37: rotary scores stay (rounding), an additive sinusoidal encoding's move by
    more than the scores' own size; dynamic NTK stays relative only within max_positions."""
    r = q.rotary_is_relative()
    for kind in ("none", "linear", "llama3", "yarn", "dynamic, within max_positions"):
        assert r["by_type"][kind] < 1e-12 * r["score_scale"], (kind, r["by_type"][kind])
    assert r["same_offset_spread"] < 1e-12 * r["score_scale"]  # each diagonal m - n = const is one number
    assert r["additive_sinusoidal"] > 0.1 * r["score_scale"]
    assert r["by_type"]["dynamic, past max_positions"] > 1e-2
    assert 1e-9 < r["float32_angles"] < 1e-5  # float32 angles: relative up to their rounding only


def test_rotary_relativity_test_fails_on_a_rotation_of_q_alone(monkeypatch):
    """The check can fail: a rotary that turns q but leaves k alone is no longer relative."""
    import numpy_ref.rotary as rotary
    original = rotary.apply_rotary
    calls = []

    def q_only(x, cos, sin, cfg):
        calls.append(1)
        return original(x, cos, sin, cfg) if len(calls) % 2 else x
    monkeypatch.setattr(rotary, "apply_rotary", q_only)
    r = q.rotary_is_relative()
    assert r["rotary"] > 0.1 * r["score_scale"]


def test_rms_norm_is_layer_norm_on_zero_mean_rows_and_saves_beta_and_flops():
    r = q.rms_vs_layer_norm()
    assert r["zero_mean_difference"] < 1e-12 and r["with_mean_difference"] > 0.1
    assert r["layer_norm"]["parameters"] == 2 * 768 and r["rms_norm"]["parameters"] == 768
    assert r["parameters_saved"] == 768
    assert r["layer_norm"]["flops"] == 128 * (7 * 768 + 4) and r["rms_norm"]["flops"] == 128 * (4 * 768 + 3)
    assert 0.42 < r["flops_saved"] < 0.43


def test_swiglu_width_at_equal_parameters_is_eight_thirds_d():
    r = q.swiglu_width()
    D = r["d_model"]
    assert r["gated_parameters_per_width"] == 3 * D
    assert r["equal_width"] == pytest.approx(8 * D / 3 + 5 / 3, abs=1e-9)  # 5/3: the standard MLP's biases
    assert r["llama_width"] == 11008
    assert 1 < r["llama_parameters_ratio"] < 1.01 and r["llama_flops_ratio"] == pytest.approx(11008 * 3 / (8 * D))


def test_gqa_cache_falls_by_the_group_factor():
    r = q.gqa_cache()
    by = {x["kv_heads"]: x for x in r["rows"]}
    assert by[8]["per_token"] == 128 * 1024 and by[8]["bytes"] == 2 ** 30                     # llama3-8b, bf16
    assert all(by[32]["bytes"] == x["groups"] * x["bytes"] for x in r["rows"])
    assert by[8]["parameters"] == 8_030_261_248 and by[32]["parameters"] > by[8]["parameters"] > by[1]["parameters"]
    held = [m["held"] for m in r["measured"]]
    assert all(m["held"] == m["declared"] for m in r["measured"]) and held[0] == 2 * held[1] == 4 * held[2]


def test_efficient_attention_tiled_is_exact_and_its_memory_linear():
    """How can attention be made more efficient? Tiled attention gives the same output (float64
    rounding) with the same matmul FLOPs, and its peak grows ~T where the reference's grows ~T^2; a
    sliding window lets through T W pairs, linear too."""
    r = q.efficient_attention(lengths=(128, 256, 512), block=32, window=32)
    assert all(row["max_abs_difference"] < 1e-14 for row in r["rows"])
    assert r["matmul_flops"]["tiled"] == r["matmul_flops"]["reference"]
    assert r["exponent_reference_peak"] > 1.7 and r["exponent_tiled_peak"] < 1.15
    assert all(row["tiled_peak_bytes"] < row["reference_peak_bytes"] / 2 for row in r["rows"])
    assert [row["window_pairs"] for row in r["rows"]] == [32 * T - 32 * 31 // 2 for T in (128, 256, 512)]


def test_efficient_attention_rejects_a_single_length():
    with pytest.raises(ValueError, match=r"lengths must hold at least 2 .* received \(128,\)"):
        q.efficient_attention(lengths=(128,))


def test_lora_trains_r_times_in_plus_out_a_target_instead_of_in_times_out():
    r = q.lora_parameters()
    for kind in ("query", "value"):
        t = r["per_kind"][kind]
        assert (t["in"], t["out"], t["count"]) == (768, 768, 12)                # bert-base: 12 layers, D x D
        assert t["lora"] == 8 * (768 + 768) == 12_288 and t["full"] == 768 * 768
    assert r["lora"] == 294_912 and r["share_of_targets"] == pytest.approx(2 * 8 / 768)  # 2 r / D
    assert r["model"] == 109_482_240 and r["share_of_model"] < 0.003
    from conformance import build, weights
    from conformance.core import lora
    from conformance.spec import registry
    cfg = registry.get("bert").tiny  # the same count from the adapters a built model holds
    lcfg = lora.LoraConfig(rank=4, targets=("query", "value"))
    w = {**weights.initialize(cfg), **lora.initialize(lora.adapters(weights.shapes(cfg, lcfg)))}
    held = build("torch", cfg, w, lora=lcfg).weights()
    counted = lora.count(lora.linear_shapes(weights.shapes(cfg), lcfg), lcfg)["lora"]
    assert sum(a.size for n, a in held.items() if lora.is_adapter(n)) == counted == 2 * 2 * 4 * (2 * cfg.d_model)


def test_committed_lora_table_is_current():
    from study import docsrc, figures
    assert (docsrc.DOCS / "generated" / "lora_parameters.md").read_text() == figures.lora_parameters_md(
        q.lora_parameters())


def test_fine_tuning_methods_train_what_they_say_and_keep_state_for_it_only():
    from conformance.spec import registry
    cfg = registry.get("bert").tiny.replace(num_layers=2)
    f = q.fine_tuning_methods(cfg, batch=4, seq_len=16, methods=("full fine-tuning", "frozen features (head only)",
                                                                 "LoRA r=8 on query, value"))
    by = {r["method"]: r for r in f["rows"]}
    full, frozen, lora = (by["full fine-tuning"], by["frozen features (head only)"], by["LoRA r=8 on query, value"])
    D, L, C = cfg.d_model, cfg.num_layers, cfg.num_labels
    assert full["trainable"] == full["parameters"]
    assert frozen["trainable"] == (D * D + D) + (D * C + C)                     # pooler and classifier
    assert lora["trainable"] == 2 * L * 8 * (D + D) and lora["parameters"] == full["parameters"] + lora["trainable"]
    for r in f["rows"]:  # float32 gradients and two float32 AdamW moments for each trained parameter, no more
        assert r["gradients_bytes"] == 4 * r["trainable"] and r["adamw_state_bytes"] == 8 * r["trainable"], r
    assert lora["peak_step_bytes"] < full["peak_step_bytes"] and frozen["peak_step_bytes"] < full["peak_step_bytes"]
