"""Mixtral and its mixture of experts: the parameter count against transformers', the routing and the
load-balancing loss against MixtralForCausalLM, near-ties made to happen and a planted tie-break caught,
the costs' active experts, and bad input."""
import numpy as np
import pytest
import keras
import torch

import tf_impl.moe
import torch_impl.moe
from conformance import presets, weights
from conformance.backends import build
from conformance.compare import routing
from conformance.compare.tolerance import TOLERANCES, compare
from conformance.core.config import Config
from conformance.costs import flops, params
from conformance.oracles import transformers as hf
from conformance.spec import registry

MIXTRAL_8X7B = 46_702_792_704


def test_mixtral_8x7b_counts_46_7b_from_its_declared_shapes():
    assert params.count(presets.get("mixtral-8x7b"))["total"] == MIXTRAL_8X7B


@pytest.mark.full  # building 32 layers of 8 experts on the meta device takes ~10 s
def test_mixtral_8x7b_counts_as_transformers_without_allocating():
    """Counted from the declared shapes, and by MixtralForCausalLM built on the meta device: 46.7B, equal."""
    cfg = presets.get("mixtral-8x7b")
    assert params.count(cfg)["total"] == params.transformers_count(cfg)["total"] == MIXTRAL_8X7B


def test_flops_count_the_active_experts_and_params_all_of_them():
    """Per token and layer the experts cost 6 k D F (k of E run), while the parameters hold E experts:
    mixtral-8x7b's 2 of 8 leave 12.9B of its 46.7B parameters active a token."""
    cfg = presets.get("mixtral-8x7b")
    D, F, E, k, L = cfg.d_model, cfg.d_ff, cfg.num_experts, cfg.experts_per_token, cfg.num_layers
    ops = flops.collapse(registry.get("mixtral").reference(cfg).flops(input_ids=(1, 1)))
    experts = sum(op.flops * op.count for op in ops if ".experts." in op.name and op.category == "projection")
    assert experts == L * k * 6 * D * F
    count = params.count(cfg)
    assert count["total"] - L * (E - k) * 3 * D * F == 12_879_925_248


def test_top_k_above_the_expert_count_is_a_value_error():
    with pytest.raises(ValueError) as e:
        Config(kind="sparse_moe", feed_forward="moe", num_experts=4, experts_per_token=5)
    assert str(e.value) == ("Config.experts_per_token must be at most num_experts=4 (a token picks k distinct "
                            "experts); received experts_per_token=5")
    with pytest.raises(ValueError, match=r"Config.router_aux_loss_coef must be in \[0, inf\); received "
                                         r"router_aux_loss_coef=-0.1"):
        Config(kind="mixtral", router_aux_loss_coef=-0.1)


def test_a_wrongly_sized_expert_weight_is_named_in_every_framework():
    cfg = registry.get("sparse_moe").config()
    w = weights.initialize(cfg, seed=0)
    w["experts.3.up.kernel"] = w["experts.3.up.kernel"][:, :-1]
    messages = set()
    for framework in ("numpy", "torch", "tf"):
        with pytest.raises(weights.WeightsError) as e:
            build(framework, cfg, w)
        messages.add(str(e.value))
    assert len(messages) == 1 and "experts.3.up.kernel" in messages.pop()


# ------------------------------------------------------------------ transformers' MixtralForCausalLM

@pytest.fixture(scope="module")
def oracle():
    """The tiny Mixtral case with std-0.2 weights, a padded batch, and transformers' outputs on it, aux_loss
    included (output_router_logits=True): the weights go through to_hf and from_pretrained."""
    entry = registry.get("mixtral")
    cfg = entry.config()
    w = weights.initialize(cfg, seed=3, std=0.2)
    inputs = entry.inputs(cfg, seed=3, batch=3, length=9)
    model = hf.transformers_model(cfg, w, "eager", "float32")
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_router_logits=True)
    probs = [torch.softmax(r.float(), -1).numpy() for r in out.router_logits]  # (B T, E) per layer
    return cfg, w, inputs, {"logits": out.logits.numpy(), "aux_loss": out.aux_loss.numpy()}, probs


def test_logits_and_aux_loss_match_transformers(oracle, framework):
    cfg, w, inputs, expected, _ = oracle
    ours = build(framework, cfg, w, dtype="float32")(**inputs)
    mask = inputs["attention_mask"][..., None] > 0  # padded positions: their logits are transformers' own
    for key in ("logits", "aux_loss"):
        got, want = (np.where(mask, ours[key], 0), np.where(mask, expected[key], 0)) if key == "logits" else \
            (ours[key], expected[key])
        result = compare(f"{framework} mixtral.{key} vs MixtralForCausalLM", got, want, TOLERANCES["float32"])
        assert result.passed, str(result)


def test_routing_agrees_with_transformers_and_near_ties_are_counted(oracle):
    """Our float64 reference's choice of experts against MixtralForCausalLM's (its router softmax is float32):
    the same at every token of every layer that is not a near-tie; the count (0 on this case) is reported."""
    cfg, w, inputs, _, hf_probs = oracle
    _, ref = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    for layer, p in enumerate(hf_probs):
        ours = ref[f"layers.{layer}.feed_forward.probs"]
        ties = routing.near_ties(ours, cfg.experts_per_token, "float32")
        theirs = np.zeros_like(p, bool)
        np.put_along_axis(theirs, torch.topk(torch.from_numpy(p), cfg.experts_per_token).indices.numpy(), True, -1)
        differ = (routing.selection(ref[f"layers.{layer}.feed_forward.routing"]) != theirs).any(-1)
        assert not (differ & ~ties).any(), f"layer {layer}: experts differ at tokens {np.nonzero(differ & ~ties)[0]}"
        assert ties.sum() == 0  # measured: no near-tie at float32's margin on this case


# ------------------------------------------------------------------ near-ties, made to happen

TIED_MIXTRAL = 10  # of its 2 layers x 14 tokens, with every router's experts 1 and 2 tied (measured)


def tied_router(w: dict) -> dict:
    """The weights with every router's expert 2 a copy of expert 1: the two tie on every token."""
    out = dict(w)
    for name in w:
        if name.endswith("router.kernel"):
            out[name] = w[name].copy()
            out[name][:, 2] = w[name][:, 1]
    return out


def run_tied(name, framework, dtype="float32", built=None):
    entry = registry.get(name)
    cfg = entry.config()
    w = tied_router(weights.initialize(cfg, seed=0, std=0.5 if not entry.is_model else 0.2))
    inputs = entry.inputs(cfg, seed=0, batch=2, length=7)
    reference, ref_trace = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    out, trace = (built(cfg, w) if built else build(framework, cfg, w, dtype=dtype)).trace(**inputs)
    agreement = routing.agreement(ref_trace, trace, cfg.experts_per_token, dtype, routing.token_shape(inputs),
                                  entry.is_model)
    return agreement, routing.compare_unambiguous(f"{framework} {name} tied", out, reference, dtype, agreement), \
        (out, reference)


@pytest.mark.parametrize("name", ["sparse_moe", "mixtral"])
def test_tied_experts_are_near_ties_counted_and_left_out(name, framework):
    """Experts 1 and 2 identical: wherever they compete for the k-th place the token is a near-tie (counted).
    NumPy's stable sort and tf.math.top_k take the lower index there, as the reference does; torch.topk
    promises no order and on CPU takes another (measured: 5 of the block's 9), as transformers does. No
    choice differs anywhere else, and the outputs match at every token no near-tie reaches."""
    agreement, results, _ = run_tied(name, framework)
    assert agreement.near_tie_count == {"sparse_moe": 9, "mixtral": TIED_MIXTRAL}[name], agreement.summary()
    assert not agreement.unambiguous_disagreements(), agreement.summary()
    if framework != "torch":
        assert agreement.differ_at_ties == 0, agreement.summary()
    assert all(r.passed for r in results), [str(r) for r in results if not r.passed]


def test_torch_topk_breaks_exact_ties_by_no_index_order():
    """Why near-ties must be left out even between correct implementations: torch.topk (transformers'
    router) on CPU, of three equal probabilities, does not return the lowest two indices."""
    assert torch.topk(torch.tensor([[0.1, 0.3, 0.3, 0.3]]), 2).indices.tolist() != [[1, 2]]


def higher_index_first(probs, k):
    """A planted tie-break: of equal probabilities, the higher expert index (top_k over the flipped experts)."""
    E = probs.shape[-1]
    return E - 1 - keras.ops.top_k(keras.ops.flip(probs, -1), k, sorted=True)[1]


def test_a_planted_tie_break_is_reported_and_left_out(monkeypatch):
    """tf made to break ties the other way: its choices differ at near-ties only, which the comparison
    reports and leaves out; compared everywhere, the same outputs fail."""
    monkeypatch.setattr(tf_impl.moe, "top_k", higher_index_first)
    agreement, results, (out, reference) = run_tied("sparse_moe", "tf")
    assert agreement.differ_at_ties > 0, agreement.summary()
    assert not agreement.unambiguous_disagreements(), agreement.summary()
    assert all(r.passed for r in results)
    assert not compare("everywhere", out["output"], reference["output"], TOLERANCES["float32"]).passed


def test_a_planted_biased_top_k_is_caught_and_pinned_to_its_layer(monkeypatch):
    """A top-k that favours high expert indices by 0.05 changes choices far from any tie: a routing
    disagreement at unambiguous tokens, named by layer and token."""
    monkeypatch.setattr(torch_impl.moe, "top_k",
                        lambda p, k: torch.topk(p + 0.05 * torch.arange(p.shape[-1], dtype=p.dtype), k, dim=-1).indices)
    agreement, _, _ = run_tied("mixtral", "torch")
    wrong = agreement.unambiguous_disagreements()
    assert wrong and wrong[0].startswith("layers.0.feed_forward.routing token "), agreement.summary()


@pytest.mark.full
def test_near_tie_counts_on_mixtral_tiny_are_the_documented_ones():
    """docs/techniques/mixture_of_experts.md's table: mixtral-tiny, 4 x 64 tokens, seed 0."""
    from conformance.spec import families
    cfg, family = presets.get("mixtral-tiny"), families.get("mixtral")
    inputs = family.inputs(cfg, batch=4, length=64, seed=0)
    for std, float32_ties in ((0.02, 0), (0.2, 2)):
        w = weights.initialize(cfg, seed=0, std=std)
        _, ref = build("numpy", cfg, w, dtype="float64").trace(**inputs)
        for framework in ("torch", "tf"):
            for dtype, ties in (("float64", 0), ("float32", float32_ties)):
                _, trace = build(framework, cfg, w, dtype=dtype).trace(**inputs)
                a = routing.agreement(ref, trace, 2, dtype, inputs["input_ids"].shape, True)
                assert (a.near_tie_count, a.differ_at_ties, len(a.unambiguous_disagreements())) == (ties, 0, 0)


@pytest.fixture(scope="module")
def trained():
    """The tiny Mixtral after 2 AdamW steps of causal-LM training with a large aux coefficient, in NumPy."""
    from conformance import training
    cfg = registry.get("mixtral").tiny.replace(router_aux_loss_coef=0.5)
    tcfg = training.TrainConfig(task="causal_lm", steps=2, seq_len=8)
    cfg, w, batches, tcfg = (*training.setup(cfg, "causal_lm", tcfg), tcfg)
    return cfg, w, batches, tcfg


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_training_adds_the_weighted_aux_loss_in_every_framework(trained, framework):
    """The training loss is the LM loss + router_aux_loss_coef x aux_loss (transformers' Mixtral with labels):
    after 2 steps each framework's weights equal the NumPy reference's, whose router moved differently
    from a run without the aux term."""
    from conformance import training
    cfg, w, batches, tcfg = trained
    ref = training.train("numpy", cfg, w, batches, training.for_framework(tcfg, framework))
    run = training.train(framework, cfg, w, batches, training.for_framework(tcfg, framework), dtype="float64")
    assert training.worst(training.weight_errors(run.weights, ref.weights))[1] < 1e-9
    plain = training.train("numpy", cfg.replace(router_aux_loss_coef=0.0), w, batches,
                           training.for_framework(tcfg, framework))
    router = "layers.0.feed_forward.router.kernel"
    assert np.abs(plain.weights[router] - ref.weights[router]).max() > 1e-6


def hf_written(tmp_path, **changes):
    """A MixtralForCausalLM directory written by transformers' own save_pretrained (random weights, never a
    download), with config.json fields that are not MixtralConfig's defaults."""
    import transformers
    config = transformers.MixtralConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=5,
                                        num_experts_per_tok=3, router_aux_loss_coef=0.02, rope_theta=5e5,
                                        max_position_embeddings=128, **changes)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    return model


def test_from_hf_reads_what_transformers_writes(tmp_path):
    """save_pretrained's layout (block_sparse_moe.experts.{e}.w1/w2/w3, the router `gate`) imports with every
    field, and the reference's logits and aux loss equal transformers' (the twins equal the reference: the
    generated suites)."""
    model = hf_written(tmp_path)
    cfg, w = weights.from_hf(tmp_path)
    assert (cfg.kind, cfg.num_experts, cfg.experts_per_token, cfg.router_aux_loss_coef, cfg.rope_theta) == \
        ("mixtral", 5, 3, 0.02, 5e5)
    ids = np.random.default_rng(0).integers(0, 61, (2, 6))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), output_router_logits=True)
    ours = build("numpy", cfg, w, dtype="float64")(input_ids=ids)
    for key, want in (("logits", expected.logits), ("aux_loss", expected.aux_loss)):
        result = compare(f"numpy {key}", ours[key], want.numpy(), TOLERANCES["float32"])
        assert result.passed, str(result)


def test_router_jitter_noise_is_refused_by_name(tmp_path):
    hf_written(tmp_path, router_jitter_noise=0.1)
    with pytest.raises(ValueError, match=r"config.json router_jitter_noise must be 0.0 to import as "
                                         r"MixtralForCausalLM; received 0.1"):
        weights.from_hf(tmp_path)


def test_a_checkpoint_routing_to_more_experts_than_it_has_is_refused_naming_the_key(tmp_path):
    import json
    hf_written(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_experts_per_tok": 6}))
    with pytest.raises(ValueError, match=r"Config.experts_per_token must be at most num_experts=5 .*received "
                                         r"experts_per_token=6 \(read from config.json num_experts_per_tok\)"):
        weights.from_hf(tmp_path)


def test_transformers_counts_the_same_active_expert_flops():
    """FlopCounterMode on MixtralForCausalLM (eager) counts the matmul FLOPs our reference declares: its
    experts, too, run on their routed rows only (k N in all)."""
    cfg = presets.get("mixtral-tiny")
    inputs = {"input_ids": np.zeros((1, 16), np.int64)}
    declared = flops.totals(flops.collapse(registry.get("mixtral").reference(cfg).flops(input_ids=(1, 16))))
    assert hf.flop_counts(cfg, inputs, ("eager",))["eager"]["total"] == declared["matmul"] == 18_546_688
