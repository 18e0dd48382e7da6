"""Generation (`conformance.generate`): the same tokens in every framework, the cache (reordered for beams)
equal to recomputing, the stopping and processing rules, the encoder-decoder seam, and bad arguments
named. (Greedy, beam search and left padding against `transformers.generate` live in
conformance/suites/test_transformers.py.)"""
import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_ref.transformer
from conformance import weights
from conformance.backends import backend
from conformance.backends.base import Built
from conformance.backends.build import build
from conformance.compare.tolerance import TOLERANCES, compare
from conformance.generate import ban_repeated_ngrams, generate, next_token_probs, search, top_k_sorted
from conformance.spec import families, registry
from conformance.spec.family import Decoding

SAMPLING = dict(strategy="sample", temperature=0.8, top_k=40, top_p=0.9)
PROMPT = np.random.default_rng(0).integers(0, 97, (2, 5))
BATCH = np.random.default_rng(5).integers(0, 97, (3, 4))


def gpt2(framework, dtype="float32"):
    """The registry's tiny GPT-2 with weights wide enough (std 0.3) that logits are far from uniform, and a
    seed whose greedy continuations vary (seed 0 repeats one token)."""
    cfg = registry.get("gpt2").tiny
    return build(framework, cfg, weights.initialize(cfg, seed=1, std=0.3), dtype=dtype)


def frequent_token(model, prompt, rank=0):
    """The token greedy generation emits `rank`-th most often on `prompt`: an eos that ends rows at different steps."""
    ids, counts = np.unique(generate(model, prompt, 10)[:, prompt.shape[1]:], return_counts=True)
    return int(ids[np.argsort(-counts, kind="stable")[rank]])


def beam_options(eos):
    return dict(strategy="beam", num_beams=3, num_return_sequences=2, length_penalty=1.3, eos_token_id=eos,
                no_repeat_ngram_size=2, max_new_tokens=9)


def assert_same_generation(label, ours, reference, dtype="float32"):
    np.testing.assert_array_equal(ours.sequences, reference.sequences, err_msg=f"{label}: tokens differ")
    np.testing.assert_array_equal(ours.lengths, reference.lengths, err_msg=f"{label}: lengths differ")
    result = compare(f"{label} scores", ours.scores, reference.scores, TOLERANCES[dtype])
    assert result.passed, str(result)


# -------------------------------------------------------------------------------- every framework

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


def test_beam_search_is_the_same_in_every_framework(framework):
    """Tokens identical to the float64 reference's; scores within the float32 row."""
    reference_model = gpt2("numpy", "float64")
    options = beam_options(frequent_token(reference_model, BATCH))
    reference = search(reference_model, BATCH, **options)
    ours = search(gpt2(framework), BATCH, **options)
    assert_same_generation(f"{framework} beam", ours, reference)
    assert len(set(reference.lengths.tolist())) > 1, f"every row ended at the same step: {reference.lengths}"


def test_beam_search_cached_equals_recomputed(framework):
    """Beams move their cache rows each step (`Built.reorder_cache`); rerunning every sequence whole each
    step gives the same tokens and scores."""
    m = gpt2(framework)
    options = beam_options(frequent_token(m, BATCH))
    assert_same_generation(f"{framework} cached beam", search(m, BATCH, **options),
                           search(m, BATCH, use_cache=False, **options))


def test_reorder_cache_gives_the_reordered_sequences_logits(framework):
    """After `reorder_cache(rows)` one more cached step gives the logits of a full pass over the sequences
    rows[i], each extended by its new token: rows may repeat and be dropped, as beams do."""
    m = gpt2(framework)
    ids = np.random.default_rng(2).integers(0, m.cfg.vocab_size, (4, 6))
    cache = []
    m.step(ids, cache)
    rows = np.array([2, 0, 0, 3])
    m.reorder_cache(cache, rows)
    new = np.array([[5], [6], [7], [8]])
    stepped = m.step(new, cache)["logits"][:, -1]
    full = m(input_ids=np.concatenate([ids[rows], new], axis=1))["logits"][:, -1]
    result = compare(f"{framework} reordered cache logits", stepped, full, TOLERANCES["float32"])
    assert result.passed, str(result)
    assert all(layer["key"].shape[0] == 4 and layer["value"].shape[2] == 7 for layer in cache)


def test_sampling_with_eos_and_several_sequences_per_prompt(framework):
    """Sampling repeats each prompt num_return_sequences times; finished rows are padded, in every framework."""
    eos = frequent_token(gpt2("numpy"), PROMPT)
    options = dict(seed=1, num_return_sequences=3, eos_token_id=eos, pad_token_id=0, **SAMPLING)
    reference = search(gpt2("numpy"), PROMPT, 10, **options)
    assert reference.sequences.shape[0] == 6
    np.testing.assert_array_equal(reference.sequences[:3, :5], np.repeat(PROMPT[:1], 3, axis=0))
    assert_same_generation(f"{framework} sampling", search(gpt2(framework), PROMPT, 10, **options), reference)


# -------------------------------------------------------------------------------- the rules

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


def test_no_repeat_ngram_bans_what_would_repeat_an_ngram():
    ids = np.array([[1, 2, 3, 1, 2], [4, 4, 4, 4, 4]])
    banned = lambda n: np.isinf(ban_repeated_ngrams(ids, np.zeros((2, 6)), n))  # noqa: E731
    assert np.nonzero(banned(3)[0])[0].tolist() == [3]        # 1 2 -> 3 would repeat "1 2 3"
    assert np.nonzero(banned(2)[0])[0].tolist() == [3]        # 2 -> 3 would repeat "2 3"
    assert np.nonzero(banned(1)[0])[0].tolist() == [1, 2, 3]  # unigrams: every token seen
    assert np.nonzero(banned(2)[1])[0].tolist() == [4]
    assert not banned(6).any()                                # no 6-gram in 5 tokens yet


def test_generated_sequences_repeat_no_ngram():
    m = gpt2("numpy")
    for strategy, extra in (("greedy", {}), ("beam", dict(num_beams=3, num_return_sequences=3))):
        unbanned = generate(m, BATCH, 12, strategy, **extra)
        tokens = generate(m, BATCH, 12, strategy, no_repeat_ngram_size=2, **extra)
        bigrams = lambda row: list(zip(row[:-1], row[1:]))  # noqa: E731
        assert any(len(set(bigrams(r))) < len(bigrams(r)) for r in unbanned.tolist())   # the ban has work to do
        assert all(len(set(bigrams(r))) == len(bigrams(r)) for r in tokens.tolist()), strategy


def test_eos_ends_rows_pads_them_and_min_new_tokens_delays_it():
    m = gpt2("numpy")
    eos = frequent_token(m, BATCH)
    out = search(m, BATCH, 10, eos_token_id=eos, pad_token_id=0)
    new = out.sequences[:, 4:]
    assert len(set(out.lengths.tolist())) > 1 and new.shape[1] == out.lengths.max()  # cut when every row ended
    for row, n in zip(new, out.lengths):
        assert (row[n - 1] == eos or n == new.shape[1]) and (row[n:] == 0).all() and eos not in row[:n - 1]
    delayed = search(m, BATCH, 10, eos_token_id=eos, pad_token_id=0, min_new_tokens=4)
    assert delayed.lengths.min() >= 5 and eos not in delayed.sequences[:, 4:8]


def test_scores_are_the_models_log_probability():
    """Greedy scores are the sum of the chosen tokens' log-softmax, from one full pass; beam scores that
    sum divided by length ** length_penalty, and one beam with no eos is greedy."""
    m = gpt2("numpy", "float64")
    greedy = search(m, BATCH, 6)
    logits = m(input_ids=greedy.sequences)["logits"][:, 3:-1]                         # (B, 6, V)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    chosen = np.take_along_axis(logp, greedy.sequences[:, 4:, None], axis=-1)[..., 0].sum(-1)
    np.testing.assert_allclose(greedy.scores, chosen, rtol=1e-12)
    one_beam = search(m, BATCH, 6, "beam", length_penalty=0.5)
    np.testing.assert_array_equal(one_beam.sequences, greedy.sequences)
    np.testing.assert_allclose(one_beam.scores, greedy.scores / 6 ** 0.5, rtol=1e-12)


def test_generate_returns_the_searched_sequences():
    m = gpt2("numpy")
    np.testing.assert_array_equal(generate(m, PROMPT, 6, "sample", 0.9, None, 0.95, 2),
                                  search(m, PROMPT, 6, "sample", temperature=0.9, top_p=0.95, seed=2).sequences)
    assert generate(m, PROMPT, max_length=9).shape == (2, 9)


# -------------------------------------------------------------------------------- prompts with a mask

class Recorded(Built):
    """A Built that records the inputs generation gives it; a GPT-2 takes no position_ids, so they are
    recorded and held back."""

    def __init__(self, built):
        super().__init__(built.backend, built.entry, built.cfg, built.module, built.dtype, built.training)
        self.calls = []

    def __call__(self, **inputs):
        self.calls.append(inputs)
        return super().__call__(**{k: v for k, v in inputs.items() if k != "position_ids"})

    def step(self, input_ids=None, cache=None, attention_mask=None, **inputs):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **inputs})
        return super().step(input_ids, cache, attention_mask)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_a_left_padded_prompt_grows_its_mask_and_counts_positions_from_its_first_token(use_cache, monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "gpt2", dataclasses.replace(families.get("gpt2"),
                                                                       decoding=Decoding(position_ids=True)))
    m = Recorded(gpt2("numpy"))
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    generate(m, BATCH[:2], 3, attention_mask=mask, use_cache=use_cache)
    assert len(m.calls) == 3
    for step, call in enumerate(m.calls):
        np.testing.assert_array_equal(call["attention_mask"], np.concatenate([mask, np.ones((2, step), int)], 1))
        positions = np.array([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])[:, :4 + step]
        expected = positions[:, -1:] if use_cache and step else positions
        np.testing.assert_array_equal(call["position_ids"], expected)
        assert call["input_ids"].shape == expected.shape


# -------------------------------------------------------------------------------- encoder-decoders

def transformer(framework, dtype="float32"):
    cfg = registry.get("transformer").tiny
    return build(framework, cfg, weights.initialize(cfg, seed=0, std=0.2), dtype=dtype)


SOURCE = np.random.default_rng(6).integers(0, 97, (2, 6))
SOURCE_MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # an encoder takes any padding


def test_encoder_decoder_generation_is_the_same_in_every_framework(framework):
    """The 2017 Transformer: sequences start at the decoder start token, the source (and its right padding)
    feeds the encoder; greedy and beam search, rerun whole each step (it keeps no cache)."""
    reference_model, m = transformer("numpy", "float64"), transformer(framework)
    options = dict(attention_mask=SOURCE_MASK, decoder_start_token_id=1, use_cache=False)
    greedy = search(reference_model, SOURCE, 8, **options)
    assert (greedy.sequences[:, 0] == 1).all() and greedy.sequences.shape == (2, 9)
    assert_same_generation(f"{framework} encoder-decoder greedy", search(m, SOURCE, 8, **options), greedy)
    beam = dict(strategy="beam", num_beams=3, num_return_sequences=2, eos_token_id=int(greedy.sequences[1, 2]),
                **options)
    assert_same_generation(f"{framework} encoder-decoder beam", search(m, SOURCE, 8, **beam),
                           search(reference_model, SOURCE, 8, **beam))


class CachedTransformer(numpy_ref.transformer.Transformer):
    """The 2017 Transformer behind `Decoding(encoder_decoder=True)`'s cached contract: the first step encodes
    the source once and keeps it in the cache; later steps bring only the new decoder tokens. (Its decoder
    reruns over every target token kept in the cache: the seam is under test, not the saving.)"""
    encodings = 0  # how often an encoder ran

    def forward(self, input_ids=None, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None,
                cache=None):
        if cache is None:
            return super().forward(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask)
        if not cache:
            CachedTransformer.encodings += 1
            memory = self.embed(input_ids, self.source_embedding)                 # (B, S, D)
            for layer in self.encoder:
                memory = layer(memory, mask=attention_mask)
            cache.append({"memory": memory, "target": decoder_input_ids[:, :0]})
            if attention_mask is not None:
                cache[0]["source_mask"] = attention_mask
        state = cache[0]
        state["target"] = np.concatenate([state["target"], decoder_input_ids], axis=1)   # (B, t)
        table = self.target_embedding or self.source_embedding
        h = self.embed(state["target"], table)                                  # (B, t, D)
        for layer in self.decoder:
            h = layer(h, state["memory"], memory_mask=state.get("source_mask"))
        logits = h @ table.table.T if self.output_projection is None else self.output_projection(h)
        return {"logits": logits[:, -decoder_input_ids.shape[1]:]}              # (B, new, V)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_encoder_decoder_cache_runs_the_encoder_once_and_follows_the_beams(strategy, monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "transformer", dataclasses.replace(
        families.get("transformer"), decoding=Decoding(encoder_decoder=True, cache=True)))
    monkeypatch.setattr(CachedTransformer, "encodings", 0)
    cfg = registry.get("transformer").tiny
    numpy = backend("numpy")
    module = CachedTransformer(cfg)
    numpy.load(module, weights.initialize(cfg, seed=0, std=0.2), "float64")
    m = Built(numpy, registry.get("transformer"), cfg, module, "float64", False)
    options = dict(strategy=strategy, attention_mask=SOURCE_MASK, decoder_start_token_id=1)
    if strategy == "beam":
        options.update(num_beams=4, num_return_sequences=2, length_penalty=0.8, eos_token_id=[3, 69])
    cached = search(m, SOURCE, 8, **options)
    assert CachedTransformer.encodings == 1
    recomputed = search(m, SOURCE, 8, use_cache=False, **options)
    assert_same_generation(f"cached encoder-decoder {strategy}", cached, recomputed, "float64")


# -------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0), "temperature must be a finite number > 0; received temperature=0.0"),
    (dict(temperature=-1), "temperature must be a finite number > 0; received temperature=-1"),
    (dict(top_k=0), "top_k must be None or an int >= 1; received top_k=0"),
    (dict(top_p=0.0), r"top_p must be None or in \(0, 1\]; received top_p=0.0"),
    (dict(top_p=1.5), r"top_p must be None or in \(0, 1\]; received top_p=1.5"),
    (dict(max_new_tokens=60), r"max_new_tokens must be an int in \[1, 59\] \(max_positions 64 - prompt length 5\); "
                              r"received max_new_tokens=60"),
    (dict(max_new_tokens=0), r"max_new_tokens must be an int in \[1, 59\]"),
    (dict(max_new_tokens=None), r"max_new_tokens must be an int in \[1, 59\] .*received max_new_tokens=None"),
    (dict(max_length=9), r"pass one of max_new_tokens and max_length; received max_new_tokens=4 and max_length=9"),
    (dict(max_new_tokens=None, max_length=5),
     r"max_length must be an int in \[6, 64\] \(prompt length 5 \+ at least one new token, at most max_positions "
     r"64\); received max_length=5"),
    (dict(strategy="nucleus"), r"strategy must be one of \['greedy', 'sample', 'beam'\]; received strategy='nucleus'"),
    (dict(strategy="beam", num_beams=0), "num_beams must be an int >= 1; received num_beams=0"),
    (dict(strategy="beam", num_beams=2, num_return_sequences=3),
     r"num_return_sequences must be <= num_beams 2 \(each row returns its best hypotheses\); "
     r"received num_return_sequences=3"),
    (dict(strategy="beam", eos_token_id=1, min_length=10),
     "min_length must be <= max_length 9; received min_length=10"),
    (dict(strategy="beam", eos_token_id=1, min_new_tokens=5),
     "min_new_tokens must be <= max_new_tokens 4; received min_new_tokens=5"),
    (dict(min_new_tokens=2), "min_length and min_new_tokens ban eos_token_id until reached: pass eos_token_id; "
                             "received eos_token_id=None with min_length=0, min_new_tokens=2"),
    (dict(strategy="beam", temperature=0.7), "temperature is a sampling option: strategy='beam' chooses "
                                             r"deterministically \(pass strategy='sample'\); received temperature=0.7"),
    (dict(strategy="beam", top_k=5), "top_k is a sampling option: strategy='beam' .* received top_k=5"),
    (dict(strategy="greedy", top_p=0.9), "top_p is a sampling option: strategy='greedy' .* received top_p=0.9"),
    (dict(strategy="sample", num_beams=3), "num_beams is a beam-search option: pass strategy='beam' with it, or "
                                           "leave it at 1; received num_beams=3 with strategy='sample'"),
    (dict(length_penalty=2.0), "length_penalty is a beam-search option: .* received length_penalty=2.0"),
    (dict(strategy="greedy", num_return_sequences=2),
     r"num_return_sequences must be 1 for strategy='greedy' \(every copy would be the same\); "
     "received num_return_sequences=2"),
    (dict(strategy="beam", early_stopping="always"),
     r"early_stopping must be one of \[True, False, 'never'\]; received early_stopping='always'"),
    (dict(strategy="beam", length_penalty=float("nan")), "length_penalty must be a finite number; received "
                                                         "length_penalty=nan"),
    (dict(eos_token_id=97), r"eos_token_id must be None, an int or a non-empty list of ints in \[0, 97\); "
                            "received eos_token_id=97"),
    (dict(eos_token_id=[]), r"eos_token_id must be .* received eos_token_id=\[\]"),
    (dict(pad_token_id=-1), r"pad_token_id must be None or an int in \[0, 97\); received pad_token_id=-1"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be an int >= 0; received no_repeat_ngram_size=-1"),
    (dict(decoder_start_token_id=0), "decoder_start_token_id must be None for the decoder-only gpt2 .* received "
                                     "decoder_start_token_id=0"),
    (dict(attention_mask=np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])),
     r"attention_mask must be all ones: a left-padded prompt needs a model whose forward takes position_ids "
     r"\(Decoding.position_ids\), and this one numbers positions 0.. itself; received row 0 = \[0, 1, 1, 1, 1\]"),
    (dict(steps=[]), "steps must be a list, and records beam search: pass strategy='beam'; received steps=list "
                     "with strategy='sample'"),
    (dict(attention_mask=np.ones((2, 4))), r"attention_mask must be 0/1 of input_ids' shape \(2, 5\); received "
                                           r"shape \(2, 4\)"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"max_new_tokens": 4, "strategy": "sample", **kwargs}
    with pytest.raises(ValueError, match=message):
        search(gpt2("numpy"), PROMPT, **args)


def test_right_padding_is_refused_even_with_position_ids(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "gpt2", dataclasses.replace(families.get("gpt2"),
                                                                       decoding=Decoding(position_ids=True)))
    with pytest.raises(ValueError, match=r"attention_mask must pad on the left \(zeros, then ones, in each row\) "
                                         r"for generation; received row 1 = \[1, 1, 1, 1, 0\]"):
        generate(gpt2("numpy"), PROMPT, 4, attention_mask=np.array([[1] * 5, [1, 1, 1, 1, 0]]))


def test_encoder_decoder_arguments_are_named():
    m = transformer("numpy")
    with pytest.raises(ValueError, match=r"decoder_start_token_id must be an int in \[0, 97\) for an "
                                         r"encoder-decoder; received decoder_start_token_id=None"):
        generate(m, SOURCE, 4, use_cache=False)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int in \[1, 63\] \(max_positions 64 - "
                                         r"decoder start 1\); received max_new_tokens=64"):
        generate(m, SOURCE, 64, use_cache=False, decoder_start_token_id=1)
    with pytest.raises(ValueError, match=r"use_cache=True needs a model that keeps a key/value cache; the "
                                         r"transformer family declares none \(Decoding.cache=False\): pass "
                                         r"use_cache=False"):
        generate(m, SOURCE, 4, decoder_start_token_id=1)


def test_generate_needs_a_generating_model_and_integer_ids():
    cfg = registry.get("bert").tiny
    names = sorted(f.name for f in families.FAMILIES.values() if f.generates)
    assert {"gpt2", "transformer"} <= set(names) and "bert" not in names
    with pytest.raises(ValueError, match=r"model must be a built generating model of the families "
                                         + re.escape(str(names)) + r" .*received 'bert'"):
        generate(build("numpy", cfg, weights.initialize(cfg)), PROMPT, 4)
    with pytest.raises(ValueError, match=r"input_ids must be a \(B, T\) integer array; received shape \(5,\)"):
        generate(gpt2("numpy"), PROMPT[0], 4)


def test_a_framework_that_cannot_reorder_a_cache_says_so():
    with pytest.raises(ValueError, match="the onnx framework cannot reorder a key/value cache; generate with "
                                         "use_cache=False"):
        backend("onnx").take_rows(np.zeros((2, 3)), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"rows must be a \(N,\) integer array; received shape \(2, 1\)"):
        gpt2("numpy").reorder_cache([], np.zeros((2, 1), int))
    with pytest.raises(ValueError, match="cache must be a list .*; received NoneType"):
        gpt2("numpy").step(PROMPT, None)


def encoder_decoder(kind, variant="default"):
    entry = registry.get(kind)
    cfg = entry.config(variant)
    return build("numpy", cfg, weights.initialize(cfg, seed=0, std=0.2))


@pytest.mark.parametrize("kind,kwargs,message", [
    ("t5", dict(strategy="beam", num_beams=0), "num_beams must be an int >= 1; received num_beams=0"),
    ("t5", dict(strategy="beam", num_beams=2.5), "num_beams must be an int >= 1; received num_beams=2.5"),
    ("t5", dict(strategy="beam", num_beams=2, num_return_sequences=3),
     r"num_return_sequences must be <= num_beams 2 \(each row returns its best hypotheses\); received "
     r"num_return_sequences=3"),
    ("t5", dict(strategy="beam", num_beams=2, eos_token_id=1, min_length=6),
     "min_length must be <= max_length 5; received min_length=6"),
    ("t5", dict(decoder_start_token_id=None), r"decoder_start_token_id must be an int in \[0, 97\) for an "
                                              r"encoder-decoder; received decoder_start_token_id=None"),
    ("bart", dict(max_new_tokens=64), r"max_new_tokens must be an int in \[1, 63\] \(64 positions \(max_positions 66 "
                                      r"less position_offset 2\) - decoder start 1\); received max_new_tokens=64"),
    ("bart", dict(max_new_tokens=None, max_length=65), r"max_length must be an int in \[2, 64\] \(decoder start 1 \+ "
                                                       r"at least one new token, at most 64 positions"),
])
def test_encoder_decoder_bad_arguments_are_named(kind, kwargs, message):
    args = {"max_new_tokens": 4, "decoder_start_token_id": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        search(encoder_decoder(kind), SOURCE, **args)


def test_an_encoder_alone_cannot_generate():
    with pytest.raises(ValueError, match=r"model must have its LM head \(Config.head='none'\) to generate; received "
                                         r"head='encoder', a t5 without one"):
        generate(encoder_decoder("t5", "encoder"), SOURCE, 4, decoder_start_token_id=0)


def test_encoder_decoder_cache_keeps_the_source_and_follows_the_beams(framework):
    """T5 through its cache: the first step encodes, later ones bring one token; cached beam search equals
    recomputing every step (rows finishing at different steps), in every framework."""
    cfg = registry.get("t5").config()
    m = build(framework, cfg, weights.initialize(cfg, seed=0, std=0.2), dtype="float32")
    options = dict(strategy="beam", num_beams=3, num_return_sequences=2, length_penalty=0.7, eos_token_id=[3, 69],
                   attention_mask=SOURCE_MASK, decoder_start_token_id=0)
    cached = search(m, SOURCE, 8, **options)
    assert_same_generation(f"{framework} t5 cached beam", cached, search(m, SOURCE, 8, use_cache=False, **options))
    assert len(set(cached.lengths.tolist())) > 1, f"every row ended at the same step: {cached.lengths}"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data(), rows=st.integers(1, 4), width=st.integers(1, 40))
def test_top_k_sorted_is_the_stable_sort_of_every_row(data, rows, width):
    """Beam search ranks candidates with `top_k_sorted`, which sorts only what reaches the k-th largest:
    its order must be the full stable sort's, ties (many, on a coarse grid) and -inf included."""
    values = st.one_of(st.integers(-3, 3).map(float), st.just(-np.inf), st.floats(-5, 5))
    x = np.array(data.draw(st.lists(st.lists(values, min_size=width, max_size=width), min_size=rows, max_size=rows)))
    k = data.draw(st.integers(1, width))
    top, index = top_k_sorted(x, k)
    expected = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(index, expected)  # a planted full argsort without kind="stable" fails here
    np.testing.assert_array_equal(top, np.take_along_axis(x, expected, axis=-1))
