"""Generation (`conformance.generate`): seeded sampling reproducible and the same tokens in
every framework, the filters' rules, and bad arguments named. (Greedy against
`transformers.generate` lives in conformance/suites/test_transformers.py.)"""
import numpy as np
import pytest

from conformance.spec import registry
from conformance import weights
from conformance.backends.build import build
from conformance.generate import generate, next_token_probs

SAMPLING = dict(strategy="sample", temperature=0.8, top_k=40, top_p=0.9)
PROMPT = np.random.default_rng(0).integers(0, 97, (2, 5))


def gpt2(framework, dtype="float32"):
    """The registry's tiny GPT-2 with weights wide enough (std 0.2) that logits are far from uniform."""
    cfg = registry.get("gpt2").tiny
    return build(framework, cfg, weights.initialize(cfg, seed=0, std=0.2), dtype=dtype)


def test_sampling_is_reproducible_and_identical_across_frameworks(framework):
    reference = generate(gpt2("numpy"), PROMPT, 12, seed=3, **SAMPLING)
    m = gpt2(framework)
    tokens = generate(m, PROMPT, 12, seed=3, **SAMPLING)
    np.testing.assert_array_equal(tokens, reference, err_msg=f"{framework} sampled other tokens than numpy")
    np.testing.assert_array_equal(generate(m, PROMPT, 12, seed=3, use_cache=False, **SAMPLING), reference)
    np.testing.assert_array_equal(tokens[:, :5], PROMPT)
    assert not np.array_equal(generate(m, PROMPT, 12, seed=4, **SAMPLING), reference)


def test_top_k_1_is_greedy(framework):
    m = gpt2(framework)
    greedy = generate(m, PROMPT, 8)
    np.testing.assert_array_equal(generate(m, PROMPT, 8, strategy="sample", top_k=1, seed=7), greedy)


def test_filters_temperature_then_top_k_then_top_p():
    logits = np.log([[0.5, 0.125, 0.25, 0.125]])
    np.testing.assert_allclose(next_token_probs(logits), [[0.5, 0.125, 0.25, 0.125]])
    # top-p keeps the smallest most-likely set whose mass reaches p; the tie at 0.125 goes to the lower id
    np.testing.assert_allclose(next_token_probs(logits, top_p=0.75), [[2 / 3, 0, 1 / 3, 0]])
    np.testing.assert_allclose(next_token_probs(logits, top_p=0.8), [[4 / 7, 1 / 7, 2 / 7, 0]])
    np.testing.assert_allclose(next_token_probs(logits, top_p=0.1), [[1, 0, 0, 0]])
    np.testing.assert_allclose(next_token_probs(logits, top_k=3), [[4 / 7, 1 / 7, 2 / 7, 0]])
    np.testing.assert_allclose(next_token_probs(logits, temperature=0.5), [[16 / 22, 1 / 22, 4 / 22, 1 / 22]])
    # top-k before top-p: k=2 leaves {0.5, 0.25} -> {2/3, 1/3}, and p=0.5 then keeps only the first
    np.testing.assert_allclose(next_token_probs(logits, top_k=2, top_p=0.5), [[1, 0, 0, 0]])


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0), "temperature must be > 0; received temperature=0.0"),
    (dict(temperature=-1), "temperature must be > 0; received temperature=-1"),
    (dict(top_k=0), "top_k must be None or an int >= 1; received top_k=0"),
    (dict(top_p=0.0), r"top_p must be None or in \(0, 1\]; received top_p=0.0"),
    (dict(top_p=1.5), r"top_p must be None or in \(0, 1\]; received top_p=1.5"),
    (dict(max_new_tokens=60), r"max_new_tokens must be an int in \[1, 59\] \(max_positions 64 - prompt length 5\); "
                              r"received max_new_tokens=60"),
    (dict(max_new_tokens=0), r"max_new_tokens must be an int in \[1, 59\]"),
    (dict(strategy="beam"), r"strategy must be one of \['greedy', 'sample'\]; received strategy='beam'"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"max_new_tokens": 4, "strategy": "sample", **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(gpt2("numpy"), PROMPT, **args)


def test_generate_needs_a_gpt2_and_integer_ids():
    cfg = registry.get("bert").tiny
    with pytest.raises(ValueError, match=r"model must be a built causal LM of the families \['gpt2'\] .*received 'bert'"):
        generate(build("numpy", cfg, weights.initialize(cfg)), PROMPT, 4)
    with pytest.raises(ValueError, match=r"input_ids must be a \(B, T\) integer array; received shape \(5,\)"):
        generate(gpt2("numpy"), PROMPT[0], 4)
