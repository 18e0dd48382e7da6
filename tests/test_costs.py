"""Parameters, FLOPs and memory (`conformance.costs`): every analytic figure against another count.

Full-size models appear only where nothing is allocated (declared shapes, the meta device) or
where one forward is cheap (torch_impl BERT-base at B = 1, T = 128 with uninitialized weights).
"""
import base64
import json
import math
import re

import numpy as np
import pytest

from conformance import costs
from conformance.spec import families, presets, registry
from conformance.report import runner
from conformance import weights as weights_lib
from conformance.backends import build, torch_backend
from conformance.core.costs import MATMUL
from conformance.costs import flops, measure, memory, params

import torch  # noqa: E402

BERT_BASE = {"embeddings": 23_837_184, "per_layer": 7_087_872, "pooler": 590_592, "total": 109_482_240}
TINY = ["bert-tiny", "gpt2-tiny", "transformer-tiny", "t5-tiny", "bart-tiny"]


@pytest.mark.parametrize("name", ["bert-base", "bert-large", "gpt2", "gpt2-medium", "gpt2-xl", "transformer-base",
                                  "t5-small", "flan-t5-small", "bart-base"])
def test_counts_compose_from_the_declaration(name):
    """The breakdown sums to the declared total, and each stack's layers are its first layer times L."""
    cfg = presets.get(name)
    c = params.count(cfg)
    assert c["total"] == sum(c["breakdown"].values()) == sum(math.prod(s) for s in registry.param_shapes(cfg).values())
    layered = sum(c["breakdown"][k] for k in params.PARTS)
    assert layered == sum(n * c["per_layer"][stack]["total"] for stack, n in c["layers"].items())


@pytest.mark.parametrize("overrides,delta", [({"head": "mlm"}, 128 * 128 + 128 + 2 * 128 + 30522 - 128 * 128 - 128),
                                             ({"use_bias": False}, -2 * (4 * 128 + 512 + 128))])
def test_counts_follow_heads_and_options(overrides, delta):
    """The MLM head adds its transform, norm and decoder bias and drops the pooler; dropping the
    biases (`use_bias`) removes the attention's 4 D and the feed-forward's F + D a layer."""
    cfg = presets.get("bert-tiny")
    assert params.count(cfg.replace(**overrides))["total"] - params.count(cfg)["total"] == delta


def test_bert_base_breakdown_is_the_published_one():
    a = params.count(presets.get("bert-base"))
    assert a["breakdown"]["embeddings"] == BERT_BASE["embeddings"]
    assert a["per_layer"]["encoder"]["total"] == BERT_BASE["per_layer"]
    assert a["breakdown"]["pooler"] == BERT_BASE["pooler"] and a["total"] == BERT_BASE["total"]


@pytest.mark.parametrize("name", TINY)
def test_each_framework_counts_the_same(name, framework):
    cfg = presets.get(name)
    m = build(framework, cfg, weights_lib.initialize(cfg))
    assert m.num_parameters() == params.count(cfg)["total"]


@pytest.mark.parametrize("name,head", [("bert-tiny", "none"), ("bert-tiny", "mlm"), ("bert-tiny", "classification"),
                                       ("bert-tiny", "qa"), ("gpt2-tiny", "none"), ("gpt2-xl", "none")])
def test_transformers_counts_the_same(name, head):
    cfg = presets.get(name).replace(head=head)
    assert params.transformers_count(cfg)["total"] == params.count(cfg)["total"]


PUBLISHED = {"llama2-7b": 6_738_415_616, "llama3-8b": 8_030_261_248, "llama3.2-1b": 1_235_814_400,
             "mistral-7b": 7_241_732_096, "qwen2.5-0.5b": 494_032_768, "gemma-2b": 2_506_172_416}


@pytest.mark.parametrize("name", [p for p in presets.names() if presets.get(p).kind == "llama"])
def test_llama_family_presets_count_as_transformers_and_as_published(name):
    """Every LLaMA-family preset, counted from its config, equals `num_parameters()` of the transformers
    class its checkpoint layout names (built on the meta device); the issue's published six, exactly."""
    cfg = presets.get(name)
    ours = params.count(cfg)["total"]
    assert params.transformers_count(cfg)["total"] == ours
    assert PUBLISHED.get(name, ours) == ours


DESCENDANTS = {"roberta-base": 124_645_632, "distilbert-base": 66_362_880, "electra-small": 13_483_008,
               "albert-base-v2": 11_683_584}


@pytest.mark.parametrize("name", [p for p in presets.names() if presets.get(p).kind in ("bert", "deberta")])
def test_bert_family_and_deberta_presets_count_as_transformers(name):
    """Every BERT-family and DeBERTa-v3 preset, counted by composition, equals `num_parameters()` of the
    transformers class of its layout (RobertaModel, DistilBertModel, ElectraModel, AlbertModel,
    DebertaV2Model), on the meta device; the issue's four, as published."""
    cfg = presets.get(name)
    ours = params.count(cfg)["total"]
    assert params.transformers_count(cfg)["total"] == ours
    assert DESCENDANTS.get(name, ours) == ours


def test_albert_shares_parameters_not_flops():
    """ALBERT-base: BERT-base's layer, one copy for 12 steps; its FLOPs are BERT-base's plus the E -> D projection."""
    bert, albert = presets.get("bert-base"), presets.get("albert-base-v2")
    p, q = params.count(bert), params.count(albert)
    assert q["layers"] == {"encoder": 1} and q["per_layer"]["encoder"]["total"] == p["per_layer"]["encoder"]["total"]
    f, g = (flops.totals(flops.ops(c, 1, 128))["all"] for c in (bert, albert))
    assert g >= f and q["total"] * 9 < p["total"]
    assert flops.totals(flops.ops(albert.replace(num_layer_groups=12), 1, 128))["all"] == g  # sharing: no FLOPs


def test_bert_base_matmul_flops_and_flop_counter():
    cfg = presets.get("bert-base")
    assert flops.totals(flops.ops(cfg, 1, 128))["matmul"] == 22_348_431_360
    import torch_impl
    with torch.device("meta"):
        model = torch_impl.Bert(cfg)
    model = model.to_empty(device="cpu").eval()  # counting needs shapes, not values: skip initialization
    for p in model.parameters():
        p.data.zero_()
    inputs = {k: torch.from_numpy(v) for k, v in runner.model_inputs(cfg, 1, 128).items()}
    counted = torch_backend.flop_count(model, inputs)
    assert counted["total"] == pytest.approx(22_348_431_360, rel=0.01)
    assert counted["by_op"]["aten.bmm"] == flops.totals(flops.ops(cfg, 1, 128))["by_category"]["attention"]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "transformer", "t5", "bart"])
def test_flop_counters_agree_with_analytic_matmuls(kind):
    cfg = registry.get(kind).tiny
    w = weights_lib.initialize(cfg)
    inputs = runner.model_inputs(cfg, 2, 9)
    expected = flops.totals(flops.ops(cfg, 2, 9))["matmul"]
    torch_model = build("torch", cfg, w)
    assert torch_model.backend.count_flops(torch_model, inputs)["total"] == expected
    tf_model = build("tf", cfg, w)
    counted = tf_model.backend.count_flops(tf_model, inputs)
    assert counted["matmul"] == expected
    assert "SelectV2" in counted["missed_elements"]  # TF's registry has no formula for the mask's where()


def test_sdpa_flops_are_missed_by_flop_counter_mode():
    cfg = presets.get("bert-tiny")
    measured = measure.transformers_sdpa(cfg, runner.model_inputs(cfg, 2, 16))
    base = flops.totals(flops.ops(cfg, 2, 16))  # BertModel: the same model as head "none"
    assert measured["eager"] == base["matmul"]
    assert measured["missed_by_sdpa"] == base["by_category"]["attention"] > 0
    assert "aten.bmm" in measured["by_op"]["eager"] and "aten.bmm" not in measured["by_op"]["sdpa"]


@pytest.mark.parametrize("name", ["bert-base", "gpt2-medium", "transformer-tiny"])
def test_crossover_matches_direct_evaluation(name):
    """The smallest T at which one layer's T^2 ops cost more than its T ops, found by evaluating the op list."""
    cfg = presets.get(name)
    c = flops.crossover(cfg)
    assert c["matmul"] == c["matmul_formula"] == 2 * cfg.d_model + cfg.d_ff

    def quadratic_wins(T, matmul_only):
        layer = registry.get("encoder_layer").reference(cfg.replace(kind="encoder_layer", causal=False))
        ops = [o for o in layer.flops((1, T, cfg.d_model)) if not matmul_only or o.category in MATMUL]
        return sum(o.total for o in ops if o.pairs) > sum(o.total for o in ops if not o.pairs)

    for key, matmul_only in (("matmul", True), ("all", False)):
        lo, hi = 1, 1 << 20
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if quadratic_wins(mid, matmul_only) else (mid + 1, hi)
        assert lo == math.floor(c[key]) + 1


def test_causal_halving_touches_only_causal_attention():
    bert, gpt2 = (flops.totals(flops.ops(presets.get(n), 1, 128)) for n in ("bert-base", "gpt2"))
    assert bert["all_causal_halved"] == bert["all"]
    assert gpt2["matmul"] - gpt2["matmul_causal_halved"] == gpt2["by_category"]["attention"] // 2


@pytest.mark.parametrize("kind,variant", [("bert", "default"), ("gpt2", "default"), ("transformer", "default"),
                                          ("bert", "albert"), ("bert", "roberta"), ("bert", "electra"),
                                          ("bert", "discriminator"), ("deberta", "default"), ("vit", "default"),
                                          ("t5", "default"), ("bart", "default")])
def test_training_activations_equal_what_autograd_saves(kind, variant):
    """ALBERT's shared layer keeps each step's activations; DeBERTa's layers share one relative table."""
    cfg = registry.get(kind).config(variant)
    model = build("torch", cfg, weights_lib.initialize(cfg))
    measured = model.backend.training_memory(model, runner.model_inputs(cfg, 2, 12))
    assert measured["saved_for_backward"] == memory.activations(cfg, 2, 12)["training"]["none"]
    assert sum(measured["state_per_parameter"].values()) == 16  # weights, gradients, two AdamW moments


def test_inference_peak_is_near_the_torch_allocator_peak():
    cfg = presets.get("gpt2-tiny")
    model = build("torch", cfg, weights_lib.initialize(cfg))
    peak = model.backend.allocator_peaks(model, runner.model_inputs(cfg, 2, 64))["allocator_peak"]
    ratio = peak / memory.activations(cfg, 2, 64)["inference_peak"]["torch"]
    assert 0.9 < ratio < 1.25


def test_recomputation_orders_and_weights_per_dtype():
    cfg = presets.get("bert-base")
    a = memory.activations(cfg, 1, 128)
    assert a["training"]["full"] < a["training"]["selective"] < a["training"]["none"]
    B, T, D, F, H = 1, 128, 768, 3072, 12  # floats 8BTD + 2BTF + 2BHT^2 + 4BT; bools 2BTD + BTF + BT + B
    floats, bools = 8 * B * T * D + 2 * B * T * F + 2 * B * H * T * T + 4 * B * T, 2 * B * T * D + B * T * F + B * T + B
    assert a["training_per_layer"]["encoder"] == 4 * floats + bools
    w = memory.section(cfg, 1, 128, BERT_BASE["total"])["weights"]
    assert w == {"float32": 4 * BERT_BASE["total"], "float16": 2 * BERT_BASE["total"],
                 "bfloat16": 2 * BERT_BASE["total"], "int8": BERT_BASE["total"]}


def test_costs_section_is_json_with_stable_keys_markdown_and_plots():
    cfg = registry.get("bert").tiny
    analytic = costs.costs(cfg, batch=2, seq_len=8, measure=False)
    measured = costs.costs(cfg, batch=2, seq_len=8, frameworks=["numpy", "torch", "tf"], repeats=1, peak_size=128)
    assert set(analytic) == set(measured) and set(analytic["flops"]) == set(measured["flops"])
    assert json.loads(json.dumps(measured))["parameters"]["agree"] is True
    assert measured["flops"]["measured"]["torch"]["total"] == measured["flops"]["totals"]["matmul"]
    assert set(measured["speed"]["forward"]) == {"numpy", "torch", "tf"}
    md = costs.markdown(measured)
    for heading in ("### Parameters", "### FLOPs", "### Scaling", "### Memory", "### Speed"):
        assert heading in md
    assert "no formula for CPU scaled_dot_product_attention" in md
    pngs = costs.plots(measured)
    assert set(pngs) == {"flops", "memory"}
    assert all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs.values())


def test_costs_refuses_a_component():
    with pytest.raises(ValueError, match=re.escape(f"costs cover whole models {list(families.FAMILIES)}; "
                                                   f"received kind='linear'")):
        costs.costs(registry.get("linear").tiny, measure=False)


def test_models_command_shows_flops_at_128(capsys):
    from conformance import cli
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "forward GFLOPs (B=1, T=128)" in out and "22.42" in out and "403.84" in out
    assert np.isclose(flops.totals(flops.ops(presets.get("gpt2-xl"), 1, 128))["all"] / 1e9, 403.84, atol=0.005)


@pytest.mark.parametrize("variant", ["default", "multi_query", "gemma2"])
@pytest.mark.parametrize("framework", ["numpy", "torch", "tf"])
def test_kv_cache_bytes_are_what_the_cache_holds(framework, variant):
    """The declared bytes a token (2 L KV Dh f) equal the bytes of the k and v every layer's cache holds
    after a prompt of 7 tokens, float32: grouped-query attention stores only the kv heads."""
    entry = registry.get("llama")
    cfg = entry.config(variant)
    m = build(framework, cfg, weights_lib.initialize(cfg, seed=0), dtype="float32")
    cache = []
    m.step(np.arange(2 * 7).reshape(2, 7) % cfg.vocab_size, cache)
    held = sum(np.asarray(layer[k]).nbytes for layer in cache for k in ("key", "value"))
    assert held == 2 * 7 * memory.kv_cache_per_token(cfg, 4)
    ungrouped = memory.kv_cache_per_token(cfg.replace(num_kv_heads=None), 4)
    assert memory.kv_cache_per_token(cfg, 4) * cfg.num_heads == ungrouped * cfg.kv_heads


def test_kv_cache_of_llama3_8b_at_8192_tokens():
    """The issue's figure: 8 kv heads against 32, bfloat16, 8,192 tokens: 1 GiB against 4 GiB."""
    kv = memory.kv_cache(presets.get("llama3-8b"), 1, 8192)
    assert kv["per_token"]["bfloat16"] == 128 * 1024
    assert (kv["bytes"]["bfloat16"], kv["bytes_without_grouping"]["bfloat16"]) == (2 ** 30, 4 * 2 ** 30)
    assert memory.section(presets.get("bert-base"), 1, 128, 1)["kv_cache"] is None  # no causal self-attention


@pytest.mark.parametrize("kind", ["t5", "bart"])
@pytest.mark.parametrize("framework", ["numpy", "torch", "tf"])
def test_encoder_decoder_cache_bytes_are_what_the_cache_holds(framework, kind):
    """An encoder-decoder's cache: the self-attention keys and values grow by the declared bytes a target
    token; the cross-attention's hold the declared bytes a source token, computed on the first step and the
    same after; t5-small keeps 24 KiB a token of each in float32 (2 x 6 layers x 8 heads x 64 x 4 bytes)."""
    cfg = registry.get(kind).tiny
    m = build(framework, cfg, weights_lib.initialize(cfg, seed=0), dtype="float32")
    ids = np.arange(2 * 7).reshape(2, 7) % cfg.vocab_size
    held = lambda cache, names: sum(np.asarray(layer[k]).nbytes for layer in cache for k in names)  # noqa: E731
    cache = []
    m.step(cache=cache, input_ids=ids, decoder_input_ids=ids[:, :3])
    cross = held(cache, ("cross_key", "cross_value"))
    assert held(cache, ("key", "value")) == 2 * 3 * memory.kv_cache_per_token(cfg, 4)
    assert cross == 2 * 7 * memory.kv_cache_per_source_token(cfg, 4) > 0
    m.step(cache=cache, decoder_input_ids=ids[:, 3:4])
    assert held(cache, ("key", "value")) == 2 * 4 * memory.kv_cache_per_token(cfg, 4)
    assert held(cache, ("cross_key", "cross_value")) == cross
    small = presets.get("t5-small")
    assert memory.kv_cache_per_token(small, 4) == memory.kv_cache_per_source_token(small, 4) == 24 * 1024


def test_tensorflow_flop_count_of_a_moe_names_its_unsized_ops_and_prints_nothing(capfd):
    """A MoE's expert rows have data-dependent shapes that TensorFlow's profiler cannot count: they are
    returned as `unsized_ops` (the report names them), and the profiler's own native line about them
    ("N ops no flops stats due to incomplete shapes") stays off the user's terminal."""
    from conformance.spec.registry import CASES
    from conformance.suites.cases import case_data
    entry, cfg, w, inputs, _ = case_data(*next(c for c in CASES if c[0] == "sparse_moe"))
    m = build("tf", cfg, w, dtype="float32", training=False)
    capfd.readouterr()
    counted = m.backend.count_flops(m, inputs)
    assert counted["unsized_ops"].get("MatMul", 0) > 0, counted["unsized_ops"]
    assert capfd.readouterr() == ("", "")
