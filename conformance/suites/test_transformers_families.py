"""Every model case against `transformers`, generated from the families' checkpoint tables.

For each registry case of a family that has a `transformers` class for its config: our weights
(std 0.2, large enough that attention is far from uniform and a mask error shows) are written with
`weights.to_hf`, read back by `transformers`' own `from_pretrained`, and its outputs compared with
ours in every framework, float32. This proves three things at once: the checkpoint table names
and lays out every tensor as transformers expects, the config.json it writes carries every
numerics field, and the numbers agree. A new family with a checkpoint table is tested here the
day it is declared.

Rows whose queries see no key at all (left padding: a pad query before the first real token;
every padded query of a layout that masks queries, `Checkpoint.masked_queries`: DeBERTa) are
defined as zeros here and are a uniform average in transformers' eager attention; such positions
are left out of the comparison (masked by the attention mask), never the rest.
"""
from functools import lru_cache

import numpy as np
import pytest

from conformance import weights
from conformance.backends import build
from conformance.compare.tolerance import TOLERANCES, compare
from conformance.oracles import transformers as hf
from conformance.spec import families, registry
from conformance.spec.registry import CASES, case_id

HF_CASES = [c for c in CASES if registry.get(c[0]).is_model and c[0] in families.FAMILIES
            and families.get(c[0]).transformers_class(registry.get(c[0]).config(c[1]))]


@lru_cache(maxsize=None)
def case(name, variant):
    entry = registry.get(name)
    cfg = entry.config(variant)
    w = weights.initialize(cfg, seed=3, std=0.2)
    inputs = entry.inputs(cfg, variant, seed=3, batch=3, length=9)
    return cfg, w, inputs, hf.run(cfg, w, inputs, "eager", "float32")


def valid(x, inputs, cfg):
    """`x` with the positions of queries that see no key (left padding; any padded query where the layout
    masks queries) zeroed, if it is (B, T, ...)."""
    mask = inputs.get("attention_mask")
    if mask is None or x.ndim < 2 or x.shape[:2] != mask.shape:
        return x
    sees = np.cumsum(mask, axis=1) > 0                                            # (B, T): a real key so far
    if families.get(cfg.kind).checkpoint(cfg).masked_queries:
        sees = mask > 0                                                           # (B, T): a real query
    return np.where(sees.reshape(*mask.shape, *([1] * (x.ndim - 2))), x, 0)


@pytest.mark.parametrize("case_", HF_CASES, ids=[case_id(c) for c in HF_CASES])
def test_matches_transformers_on_our_weights(case_, framework):
    cfg, w, inputs, expected = case(*case_)
    ours = build(framework, cfg, w, dtype="float32")(**inputs)
    keys = sorted(set(ours) & set(expected))
    assert keys, f"no output in common: ours {sorted(ours)}, transformers {sorted(expected)}"
    for key in keys:
        result = compare(f"{framework} {case_id(case_)}.{key} vs {hf.class_name(cfg)}", valid(ours[key], inputs, cfg),
                         valid(expected[key], inputs, cfg), TOLERANCES["float32"])
        assert result.passed, str(result)


HIDDEN_CASES = [c for c in HF_CASES if families.get(c[0]).checkpoint(registry.get(c[0]).config(c[1])).hidden_states]


def hidden_state_names(cfg) -> list[str]:
    """Our trace names of transformers' hidden_states[0], [1], ... (`Checkpoint.hidden_states`, "{i}" a layer)."""
    names = []
    for name in families.get(cfg.kind).checkpoint(cfg).hidden_states:
        names += [name.format(i=i) for i in range(cfg.num_layers)] if "{i}" in name else [name]
    return names


@pytest.mark.parametrize("case_", HIDDEN_CASES, ids=[case_id(c) for c in HIDDEN_CASES])
def test_every_hidden_state_matches_transformers(case_, framework):
    """Each of transformers' output_hidden_states against the traced tensor of ours it is, layer by layer."""
    cfg, w, inputs, expected = case(*case_)
    _, records = build(framework, cfg, w, dtype="float32").trace(**inputs)
    names = hidden_state_names(cfg)
    assert [k for k in expected if k.startswith("hidden_states.")] == [f"hidden_states.{k}" for k in range(len(names))]
    for k, name in enumerate(names):
        result = compare(f"{framework} {case_id(case_)} {name} vs {hf.class_name(cfg)}.hidden_states[{k}]",
                         valid(records[name], inputs, cfg), valid(expected[f"hidden_states.{k}"], inputs, cfg),
                         TOLERANCES["float32"])
        assert result.passed, str(result)


@pytest.mark.parametrize("case_", HF_CASES, ids=[case_id(c) for c in HF_CASES])
def test_checkpoint_round_trip_is_bit_exact(case_, tmp_path):
    """to_hf then from_hf gives back the same Config (how it runs, attention_impl and any field that is a forward
    argument of transformers (`Checkpoint.call`), is not a checkpoint's to say) and the same weights, bit for bit."""
    cfg, w, _, _ = case(*case_)
    weights.to_hf(cfg, w, tmp_path)
    cfg_back, w_back = weights.from_hf(tmp_path)
    runtime = {f: getattr(cfg_back, f) for f in ("checkpoint", "attention_impl", *families.get(cfg.kind).checkpoint(cfg).call)}
    assert cfg_back == cfg.replace(**runtime)
    assert sorted(w_back) == sorted(w)
    for name in w:
        np.testing.assert_array_equal(w_back[name], w[name], err_msg=name)


# ------------------------------------------------------------------ generation, for every family that generates

GEN_CASES = [c for c in HF_CASES if families.get(c[0]).generates]
NEW_TOKENS = 6


def prompt_of(inputs):
    """The case's ids, and its mask where it is a left-padded prompt (right padding does not generate)."""
    mask = inputs.get("attention_mask")
    left = mask is not None and mask[:, -1].all() and not mask.all()
    return inputs["input_ids"], (mask if left else None)


@lru_cache(maxsize=None)
def hf_greedy(name, variant):
    import torch
    import transformers
    cfg, w, inputs, _ = case(name, variant)
    ids, mask = prompt_of(inputs)
    model = hf.transformers_model(cfg, w, "eager", "float32")
    model.generation_config = transformers.GenerationConfig()  # no default eos, pad or forced tokens
    with torch.no_grad():
        return model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(np.ones_like(ids) if mask is None
                                                                                    else mask),
                              max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0).numpy()


@pytest.mark.parametrize("case_", GEN_CASES, ids=[case_id(c) for c in GEN_CASES])
def test_greedy_generation_with_the_cache_matches_transformers(case_, framework):
    """Token for token what `generate(do_sample=False)` returns: the KV cache (GQA: kv heads only), the
    sliding windows over it, and a left-padded batch's positions (cumsum(mask) - 1)."""
    from conformance.generate import generate
    cfg, w, inputs, _ = case(*case_)
    ids, mask = prompt_of(inputs)
    ours = generate(build(framework, cfg, w, dtype="float32"), ids, max_new_tokens=NEW_TOKENS, attention_mask=mask)
    np.testing.assert_array_equal(ours, hf_greedy(*case_), err_msg=f"{framework} {case_id(case_)}: tokens differ")


@pytest.mark.parametrize("case_", GEN_CASES, ids=[case_id(c) for c in GEN_CASES])
def test_cache_equals_full_recompute(case_, framework):
    """A 3-token prompt, then one token at a time through the cache, gives the logits of one full pass
    over all 9: past the sliding windows (3 here), with the cache holding only the kv heads."""
    cfg, w, inputs, _ = case(*case_)
    ids = inputs["input_ids"]
    m = build(framework, cfg, w, dtype="float32")
    cache = []
    steps = [m.step(ids[:, :3], cache)["logits"]] + [m.step(ids[:, t:t + 1], cache)["logits"]
                                                     for t in range(3, ids.shape[1])]
    result = compare(f"{framework} {case_id(case_)} cached logits", np.concatenate(steps, axis=1),
                     m(input_ids=ids)["logits"], TOLERANCES["float32"])
    assert result.passed, str(result)
    if cfg.kv_heads < cfg.num_heads:
        keys = np.asarray(cache[0]["key"])
        assert keys.shape[1] == cfg.kv_heads, f"the cache holds {keys.shape[1]} heads, not the {cfg.kv_heads} kv heads"
