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
import contextlib
from functools import lru_cache

import numpy as np
import pytest

from conformance import weights
from conformance.backends import build
from conformance.compare.tolerance import TOLERANCES, compare
from conformance.generate import search
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


@pytest.mark.parametrize("case_", HF_CASES, ids=[case_id(c) for c in HF_CASES])
def test_checkpoint_round_trip_is_bit_exact(case_, tmp_path):
    """to_hf then from_hf gives back the same Config (how it runs, attention_impl, its blocks and any field that is a
    forward argument of transformers (`Checkpoint.call`), is not a checkpoint's to say) and the same weights, bit
    for bit."""
    cfg, w, _, _ = case(*case_)
    weights.to_hf(cfg, w, tmp_path)
    cfg_back, w_back = weights.from_hf(tmp_path)
    runtime = {f: getattr(cfg_back, f) for f in ("checkpoint", "attention_impl", "attention_block_q", "attention_block_k",
                                                 *families.get(cfg.kind).checkpoint(cfg).call)}
    assert cfg_back == cfg.replace(**runtime)
    assert sorted(w_back) == sorted(w)
    for name in w:
        np.testing.assert_array_equal(w_back[name], w[name], err_msg=name)


# ------------------------------------------------------------------ generation, for every family that generates

GEN_CASES = [c for c in HF_CASES if families.get(c[0]).generates and registry.get(c[0]).config(c[1]).head == "none"]
DECODER_ONLY = [c for c in GEN_CASES if not families.get(c[0]).decoding.encoder_decoder]
ENCODER_DECODER = [c for c in GEN_CASES if families.get(c[0]).decoding.encoder_decoder]
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


@pytest.mark.parametrize("case_", DECODER_ONLY, ids=[case_id(c) for c in DECODER_ONLY])
def test_greedy_generation_with_the_cache_matches_transformers(case_, framework):
    """Token for token what `generate(do_sample=False)` returns: the KV cache (GQA: kv heads only), the
    sliding windows over it, and a left-padded batch's positions (cumsum(mask) - 1)."""
    from conformance.generate import generate
    cfg, w, inputs, _ = case(*case_)
    ids, mask = prompt_of(inputs)
    ours = generate(build(framework, cfg, w, dtype="float32"), ids, max_new_tokens=NEW_TOKENS, attention_mask=mask)
    np.testing.assert_array_equal(ours, hf_greedy(*case_), err_msg=f"{framework} {case_id(case_)}: tokens differ")


@pytest.mark.parametrize("case_", DECODER_ONLY, ids=[case_id(c) for c in DECODER_ONLY])
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


# ------------------------------------------------------------------ every layer's hidden states

HIDDEN_CASES = [c for c in HF_CASES if families.get(c[0]).checkpoint(registry.get(c[0]).config(c[1])).hidden_states]


@lru_cache(maxsize=None)
def hf_hidden(name, variant):
    cfg, w, inputs, _ = case(name, variant)
    return hf.hidden_states(cfg, w, inputs, "eager", "float32")


@pytest.mark.parametrize("case_", HIDDEN_CASES, ids=[case_id(c) for c in HIDDEN_CASES])
def test_every_hidden_state_matches_transformers(case_, framework):
    """Each entry of transformers' hidden-state tuples (the embeddings, every layer's output, the last after
    the stack's final norm where it has one) against the trace of ours, by the table's `hidden_states`."""
    cfg, w, inputs, _ = case(*case_)
    _, records = build(framework, cfg, w, dtype="float32").trace(**inputs)
    table = families.get(case_[0]).checkpoint(cfg).hidden_states
    compared = 0
    for field, states in hf_hidden(*case_).items():
        first, layer, last = table[field]
        names = [first] + [layer.format(i=i) for i in range(len(states) - 1)]
        names[-1] = last or names[-1]
        for name, value in zip(names, states):
            result = compare(f"{framework} {case_id(case_)} {field}[{names.index(name)}] vs {name}",
                             valid(records[name], inputs, cfg), valid(value, inputs, cfg), TOLERANCES["float32"])
            assert result.passed, str(result)
            compared += 1
    assert compared > cfg.num_layers, compared  # the embeddings and every layer, of each stack the model returns


# ------------------------------------------------------------------ encoder-decoder generation

START = 0  # the decoder start token both sides are given (T5's is its pad id 0; any id serves random weights)
EOS = "eos"  # resolved per case by `eos_for`: a token that ends rows of the batch at different steps
ENC_DEC_RUNS = {  # `search`'s arguments; transformers' generate gets the same ones
    "greedy": dict(max_new_tokens=8, eos_token_id=EOS, pad_token_id=0),
    "beam": dict(strategy="beam", num_beams=4, length_penalty=2.0, min_length=3, max_length=10,
                 no_repeat_ngram_size=2, eos_token_id=EOS, num_return_sequences=2),
    # length_penalty 2 favours long hypotheses (T5's rows all reach max_length): a run where the eos ends
    # them early, stopping each row at its first num_beams hypotheses; pad 0 pads with the eos (`pad or eos`)
    "beam_early": dict(strategy="beam", num_beams=3, length_penalty=0.5, early_stopping=True, max_new_tokens=8,
                       eos_token_id=EOS, pad_token_id=0, num_return_sequences=3),
    "sample": dict(strategy="sample", temperature=0.8, top_k=20, top_p=0.9, seed=2, max_new_tokens=8,
                   eos_token_id=EOS, num_return_sequences=2),
}
ENDING = ("greedy", "beam_early")  # the runs whose rows finish at different steps, by `eos_for`'s choice
MIRRORED = {"no_repeat_ngram_size": "NoRepeatNGramLogitsProcessor", "min_length": "MinLengthLogitsProcessor",
            "temperature": "TemperatureLogitsWarper", "top_k": "TopKLogitsWarper", "top_p": "TopPLogitsWarper"}


def hf_kwargs(run: dict, eos: int) -> dict:
    """`search`'s arguments as `generate`'s: the strategy becomes do_sample / num_beams; the seed is ours."""
    kwargs = {k: v for k, v in run.items() if k not in ("strategy", "seed")}
    kwargs["eos_token_id"] = eos
    return {**kwargs, "do_sample": run.get("strategy") == "sample"}


@contextlib.contextmanager
def numpy_draws(seed):
    """transformers' sampling draws with our generator: `torch.multinomial` replaced, for the call, by
    `conformance.generate.sample` on a `numpy.random.default_rng(seed)`, as `search` draws. What is then
    compared is everything before the draw (the logits, the processors, temperature, top-k, top-p)."""
    import torch
    from conformance.generate import sample
    rng, real = np.random.default_rng(seed), torch.multinomial
    torch.multinomial = lambda probs, num_samples=1, **_: torch.from_numpy(sample(probs.double().numpy(), rng))[:, None]
    try:
        yield
    finally:
        torch.multinomial = real


def hf_cache(cfg) -> bool:
    """transformers 5.24 sizes generate's cache by config.num_layers (the encoder's): a T5 with more decoder
    layers raises IndexError with it (`test_transformers_cache_is_sized_by_the_encoder`), so it runs uncached."""
    return cfg.num_decoder_layers <= cfg.num_layers


def first_eos(sequences, eos) -> np.ndarray:
    """(N,) the new tokens of each row up to its first eos (all of them where it has none)."""
    hits = sequences[:, 1:] == eos                                                   # (N, L - 1)
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, hits.shape[1])


@lru_cache(maxsize=None)
def hf_model(name, variant):
    cfg, w, _, _ = case(name, variant)
    return hf.transformers_model(cfg, w, "eager", "float32")


@lru_cache(maxsize=None)
def hf_encoder_decoder(name, variant, run, eos):
    """transformers' generate on the case's source, after checking it applies exactly the processors we mirror."""
    import torch
    import transformers
    cfg, w, inputs, _ = case(name, variant)
    model = hf_model(name, variant)
    model.generation_config = transformers.GenerationConfig()  # no default eos, pad or forced tokens
    kwargs = hf_kwargs(ENC_DEC_RUNS[run], eos)
    config, _ = model._prepare_generation_config(None, decoder_start_token_id=START, **kwargs)
    model._prepare_special_tokens(config, True, device="cpu")
    processors = sorted(type(p).__name__ for p in model._get_logits_processor(config, input_ids_seq_length=1,
                                                                               device="cpu"))
    assert processors == sorted(MIRRORED[k] for k in MIRRORED if k in kwargs), processors
    with torch.no_grad(), numpy_draws(ENC_DEC_RUNS[run].get("seed", 0)):
        return model.generate(torch.from_numpy(inputs["input_ids"]), attention_mask=torch.from_numpy(
            inputs["attention_mask"]), decoder_start_token_id=START, use_cache=hf_cache(cfg), output_scores=True,
            output_logits=True, return_dict_in_generate=True, **kwargs)


@lru_cache(maxsize=None)
def eos_for(name, variant):
    """The first of the tokens transformers' greedy search emits most (no eos) that, as the eos, ends the rows
    of the batch at different steps in greedy and beam search: rows that finish early and late are compared."""
    import torch
    import transformers
    cfg, w, inputs, _ = case(name, variant)
    model = hf_model(name, variant)
    model.generation_config = transformers.GenerationConfig()
    with torch.no_grad():
        free = model.generate(torch.from_numpy(inputs["input_ids"]), attention_mask=torch.from_numpy(
            inputs["attention_mask"]), decoder_start_token_id=START, max_new_tokens=10, do_sample=False,
            use_cache=hf_cache(cfg), eos_token_id=None, pad_token_id=0).numpy()
    ids, counts = np.unique(free[:, 1:], return_counts=True)
    for eos in ids[np.argsort(-counts, kind="stable")].tolist():
        if all(len(set(first_eos(hf_encoder_decoder(name, variant, run, eos).sequences.numpy(), eos))) > 1
               for run in ENDING):
            return eos
    raise AssertionError(f"{case_id((name, variant))}: no frequent token ends the rows at different steps")


def hf_scores(out, eos) -> np.ndarray:
    """(N,) greedy's and sampling's score from transformers' raw logits: the sum of log p of each new token up
    to its row's eos, as `search` sums it."""
    logits = np.stack([x.double().numpy() for x in out.logits], axis=1)              # (N, steps, V)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    tokens = out.sequences.numpy()[:, 1:]                                            # (N, steps)
    chosen = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]           # (N, steps)
    alive = np.arange(tokens.shape[1])[None, :] < first_eos(out.sequences.numpy(), eos)[:, None]
    return (chosen * alive).sum(axis=1)


def tiered(cases, *more):
    """Each family's default case in the default tier; its other variants (a minute of generation in each
    framework on two cores) with --full."""
    for c in cases:
        for extra in (more or [()]):
            yield pytest.param(c, *extra, id="-".join([case_id(c), *map(str, extra)]),
                               marks=[] if c[1] == "default" else [pytest.mark.full])


@pytest.mark.parametrize("case_,run", list(tiered(ENCODER_DECODER, *[(r,) for r in ENC_DEC_RUNS])))
def test_encoder_decoder_generation_matches_transformers(case_, run, framework):
    """Greedy, beam search (4 beams, length_penalty 2.0, min_length, max_length, no_repeat_ngram_size, an eos,
    2 returned) and sampling (temperature, top-k, top-p, our draws) through the encoder-decoder cache and
    without it: the tokens of transformers' generate, its sequences_scores (beam) or its raw logits' log p
    of the chosen tokens (greedy, sampling), rows finishing at different steps."""
    cfg, w, inputs, _ = case(*case_)
    eos = eos_for(*case_)
    expected = hf_encoder_decoder(*case_, run, eos)
    sequences = expected.sequences.numpy()
    beam = ENC_DEC_RUNS[run].get("strategy") == "beam"
    scores = expected.sequences_scores.numpy() if beam else hf_scores(expected, eos)
    m = build(framework, cfg, w, dtype="float32")
    args = {**ENC_DEC_RUNS[run], "eos_token_id": eos}
    for use_cache in (True, False):
        ours = search(m, inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_start_token_id=START,
                      use_cache=use_cache, **args)
        label = f"{framework} {case_id(case_)} {run} use_cache={use_cache}"
        np.testing.assert_array_equal(ours.sequences, sequences, err_msg=f"{label}: tokens differ")
        result = compare(f"{label} scores", ours.scores, scores, TOLERANCES["float32"])
        assert result.passed, str(result)
    if run in ENDING:
        assert len(set(first_eos(sequences, eos).tolist())) > 1, f"every row ended at the same step: {sequences}"


@pytest.mark.parametrize("case_", list(tiered(ENCODER_DECODER)))
def test_encoder_decoder_cache_projects_the_source_once(case_, framework):
    """Through the cache the encoder runs once and each cross-attention projects its keys and values once,
    (N, KV, S, Dh), kept beside the self-attention's, which grow a token a step; each decoder self-attention
    projects only the new token. Counted on the modules' own calls, in every framework."""
    cfg, w, inputs, _ = case(*case_)
    m = build(framework, cfg, w, dtype="float32")
    calls = {path: 0 for path in ("encoder.0", "decoder.0.cross_attention.key", "decoder.0.self_attention.key")}
    rows = {}
    for path in calls:
        sub = m.submodule(path)
        name = "call" if hasattr(sub, "call") and framework == "tf" else "forward"
        real = getattr(sub, name)

        def counted(*args, _path=path, _real=real, **kwargs):
            calls[_path] += 1
            rows.setdefault(_path, []).append(np.shape(args[0])[1])
            return _real(*args, **kwargs)
        setattr(sub, name, counted)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    out = search(m, ids, 5, attention_mask=mask, decoder_start_token_id=START)
    assert out.sequences.shape == (len(ids), 6)
    assert calls == {"encoder.0": 1, "decoder.0.cross_attention.key": 1, "decoder.0.self_attention.key": 5}, calls
    assert rows["decoder.0.cross_attention.key"] == [ids.shape[1]] and rows["decoder.0.self_attention.key"] == [1] * 5
    cache = []
    for t in range(3):
        m.step(cache=cache, decoder_input_ids=out.sequences[:, t:t + 1], **({} if t else {"input_ids": ids,
                                                                                      "attention_mask": mask}))
    layer = cache[-1]
    KV, Dh, S = cfg.kv_heads, cfg.head_dim, ids.shape[1]
    assert np.shape(layer["cross_key"]) == np.shape(layer["cross_value"]) == (len(ids), KV, S, Dh)
    assert np.shape(layer["key"]) == (len(ids), KV, 3, Dh) and np.shape(layer["source_mask"]) == (len(ids), S)
