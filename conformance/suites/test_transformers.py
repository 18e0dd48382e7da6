"""Conformance against Hugging Face `transformers`: our models, fed a real HF checkpoint
through `checkpoints.from_hf`, give HF's outputs in every framework.

Nothing is downloaded: each HF class is built from a tiny config, its weights perturbed
and saved with `save_pretrained`, and that directory is what we import. HF's own
initialization (layer-norm gains 1, biases 0, an MLM bias of 0) would hide a dropped
bias or an ignored gain, so every parameter is redrawn first, large enough (std 0.2)
that attention is far from uniform and a mask error shows.

Both sides run float32 and are compared with the suite's one float32 tolerance, on
inputs with padding masks and segment ids. HF fills masked scores with the dtype minimum
and we with -1e9: identical after the softmax unless a row is fully masked, which these
inputs never have. HF runs with its "eager" attention and with "sdpa" (its fused kernel).

Generation (greedy, beam search, left padding) is compared with `GPT2LMHeadModel.generate` under a
fresh `GenerationConfig()`: no default eos, pad or forced token, so the only logits processors HF
builds are the ones the arguments ask for (no_repeat_ngram_size, min_length, min_new_tokens), and
each case asserts that list (`hf_processors`). Beam scores are HF's `sequences_scores`, which HF
accumulates in float32: they are compared with the suite's float32 row (measured worst 1.1e-6
against an allowance of 1e-4 + 1e-4 |score|; an off-by-one length moves a score by 10% or more).
"""
import dataclasses

import numpy as np
import pytest

import transformers  # noqa: E402
import torch  # noqa: E402

from conformance.spec import inputs as spec_inputs
from conformance.weights import checkpoints  # noqa: E402
from conformance.spec import registry
from conformance.backends.build import build  # noqa: E402
from conformance.generate import generate, search  # noqa: E402
from conformance.backends import backend  # noqa: E402
from conformance.backends.base import Built  # noqa: E402
from conformance.spec import families  # noqa: E402
from conformance.spec.family import Decoding  # noqa: E402
import numpy_ref.gpt2  # noqa: E402
from conformance.compare.tolerance import TOLERANCES, compare  # noqa: E402

BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99,
            max_position_embeddings=64, type_vocab_size=2)
GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64, bos_token_id=None, eos_token_id=None)
OUTPUTS = {  # HF class -> the HF outputs compared
    "BertModel": ("last_hidden_state", "pooler_output"),
    "BertForMaskedLM": ("logits",),
    "BertForSequenceClassification": ("logits",),
    "BertForQuestionAnswering": ("start_logits", "end_logits"),
    "GPT2LMHeadModel": ("logits",),
}
OUR_KEY = {"pooler_output": "pooled_output"}
ATTENTION = ("eager", "sdpa")


def randomize(model, seed=0):
    """Redraw every parameter: weights ~ N(0, 0.2^2), layer-norm gains ~ 1 + N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = p.ndim == 1 and ("LayerNorm" in name or ".ln_" in name) and name.endswith("weight")
            p.copy_((1.0 if gain else 0.0) + (0.1 if gain else 0.2) * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """HF class name -> a directory written by `save_pretrained` (random weights)."""
    dirs = {}
    for i, name in enumerate(OUTPUTS):
        labels = 3 if name == "BertForSequenceClassification" else 2  # HF's QA head has num_labels = 2 outputs
        config = (transformers.GPT2Config(**GPT2) if name.startswith("GPT2")
                  else transformers.BertConfig(**BERT, num_labels=labels))
        dirs[name] = tmp_path_factory.mktemp(name)
        randomize(getattr(transformers, name)(config), seed=i).save_pretrained(dirs[name])
    return dirs


def load_hf(name, path, attn="eager"):
    return getattr(transformers, name).from_pretrained(path, attn_implementation=attn).eval()


def run_hf(model, inputs):
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def inputs_for(name, padding=True, batch=3, length=9):
    """Token ids, a right-padding mask (row b drops its last b positions) and, for BERT, segments."""
    cfg = registry.get("bert").tiny.replace(vocab_size=99)
    inputs = spec_inputs.token_inputs(cfg, np.random.default_rng(0), batch, length, segments=name.startswith("Bert"))
    if not padding:
        del inputs["attention_mask"]
    return inputs


def assert_matches(label, ours, hf_out, keys, dtype="float32"):
    for key in keys:
        result = compare(f"{label}.{key}", ours[OUR_KEY.get(key, key)], hf_out[key], TOLERANCES[dtype])
        assert result.passed, str(result)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("name", [n for n in OUTPUTS if n.startswith("Bert")])
def test_bert_matches_transformers(name, attn, framework, hf_dirs):
    cfg, w = checkpoints.from_hf(hf_dirs[name])
    inputs = inputs_for(name)
    expected = run_hf(load_hf(name, hf_dirs[name], attn), inputs)
    ours = build(framework, cfg, w, dtype="float32")(**inputs)
    assert_matches(f"{framework} {name} ({attn})", ours, expected, OUTPUTS[name])


@pytest.mark.parametrize("padding", [False, True], ids=["no_mask", "right_padding"])
@pytest.mark.parametrize("attn", ATTENTION)
def test_gpt2_logits_match_transformers(attn, padding, framework, hf_dirs):
    cfg, w = checkpoints.from_hf(hf_dirs["GPT2LMHeadModel"])
    inputs = inputs_for("GPT2LMHeadModel", padding)
    expected = run_hf(load_hf("GPT2LMHeadModel", hf_dirs["GPT2LMHeadModel"], attn), inputs)
    ours = build(framework, cfg, w, dtype="float32")(**inputs)
    assert_matches(f"{framework} GPT2LMHeadModel ({attn})", ours, expected, ("logits",))


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_gpt2_greedy_generation_matches_transformers(use_cache, framework, hf_dirs):
    """8 greedy tokens, token for token what `model.generate(do_sample=False)` returns."""
    path = hf_dirs["GPT2LMHeadModel"]
    prompt = np.random.default_rng(1).integers(0, GPT2["vocab_size"], (2, 5))
    hf = load_hf("GPT2LMHeadModel", path)
    expected = hf.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                           max_new_tokens=8, do_sample=False, pad_token_id=0).numpy()
    cfg, w = checkpoints.from_hf(path)
    ours = generate(build(framework, cfg, w, dtype="float32"), prompt, max_new_tokens=8, use_cache=use_cache)
    assert expected.shape == (2, 13)
    np.testing.assert_array_equal(ours, expected, err_msg=f"{framework} greedy tokens differ from transformers")


MIRRORED = {"no_repeat_ngram_size": "NoRepeatNGramLogitsProcessor", "min_length": "MinLengthLogitsProcessor",
            "min_new_tokens": "MinNewTokensLengthLogitsProcessor"}  # the processors conformance.generate mirrors
EOS, EOS2 = "the most frequent generated token", "the second most frequent"
BEAM_CASES = {
    "beams3": dict(num_beams=3, max_new_tokens=8, eos_token_id=EOS),
    "lp2_early_return2": dict(num_beams=4, length_penalty=2.0, early_stopping=True, max_new_tokens=9,
                              eos_token_id=EOS, num_return_sequences=2),
    "lp-0.5_never": dict(num_beams=3, length_penalty=-0.5, early_stopping="never", max_new_tokens=8, eos_token_id=EOS),
    "two_eos_ngram_min_new": dict(num_beams=3, length_penalty=0.7, max_new_tokens=10, eos_token_id=[EOS, EOS2],
                                  no_repeat_ngram_size=2, min_new_tokens=3),
    "early_min_length_pad": dict(num_beams=2, early_stopping=True, max_new_tokens=6, eos_token_id=EOS, min_length=7,
                                 pad_token_id=45),
    "pad0_return3": dict(num_beams=3, max_new_tokens=8, eos_token_id=EOS, pad_token_id=0, num_return_sequences=3),
    "no_eos": dict(num_beams=3, max_new_tokens=8, no_repeat_ngram_size=1),
}
GREEDY_CASES = {
    "eos": dict(max_new_tokens=10, eos_token_id=EOS),
    "two_eos_pad0": dict(max_new_tokens=10, eos_token_id=[EOS, EOS2], pad_token_id=0),
    "min_new_ngram": dict(max_new_tokens=10, eos_token_id=EOS, min_new_tokens=4, no_repeat_ngram_size=2),
    "min_length_unigram": dict(max_new_tokens=10, eos_token_id=EOS2, min_length=9, no_repeat_ngram_size=1),
}
PROMPT = np.random.default_rng(1).integers(0, GPT2["vocab_size"], (3, 5))


def load_generator(path):
    """GPT2LMHeadModel with a fresh GenerationConfig: no default eos, pad or forced tokens."""
    hf = load_hf("GPT2LMHeadModel", path)
    hf.generation_config = transformers.GenerationConfig()
    return hf


@pytest.fixture(scope="module")
def eos_ids(hf_dirs):
    """{EOS: id, EOS2: id}: the two tokens HF's beam search (no eos) generates most on PROMPT, so that
    an eos makes rows finish at different steps."""
    hf = load_generator(hf_dirs["GPT2LMHeadModel"])
    new = hf.generate(torch.from_numpy(PROMPT), max_new_tokens=10, num_beams=4, do_sample=False).numpy()[:, 5:]
    ids, counts = np.unique(new, return_counts=True)
    first, second = ids[np.argsort(-counts, kind="stable")[:2]]
    return {EOS: int(first), EOS2: int(second)}


def resolve(case, eos_ids):
    eos = case.get("eos_token_id")
    return {**case, "eos_token_id": [eos_ids[e] for e in eos] if isinstance(eos, list) else eos_ids.get(eos)}


def hf_processors(hf, length, **kwargs):
    """The logits processors HF's generate builds for these arguments (its own private helpers)."""
    config, _ = hf._prepare_generation_config(None, **kwargs)
    hf._prepare_special_tokens(config, True, device="cpu")
    return sorted(type(p).__name__ for p in hf._get_logits_processor(config, input_ids_seq_length=length, device="cpu"))


def hf_generate(hf, prompt, mask=None, **kwargs):
    """HF's `generate` output, after checking that it applies exactly the processors we mirror."""
    assert hf_processors(hf, prompt.shape[1], **kwargs) == sorted(MIRRORED[k] for k in MIRRORED if kwargs.get(k))
    mask = np.ones_like(prompt) if mask is None else mask
    with torch.no_grad():
        return hf.generate(torch.from_numpy(prompt), attention_mask=torch.from_numpy(mask), do_sample=False,
                           return_dict_in_generate=True, output_scores=True, **kwargs)


def assert_generation_matches(label, ours, expected):
    np.testing.assert_array_equal(ours.sequences, expected.sequences.numpy(), err_msg=f"{label}: tokens differ")
    if hasattr(expected, "sequences_scores"):
        result = compare(f"{label} sequences_scores", ours.scores, expected.sequences_scores.numpy(),
                         TOLERANCES["float32"])
        assert result.passed, str(result)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("case", BEAM_CASES)
def test_gpt2_beam_search_matches_transformers(case, use_cache, framework, hf_dirs, eos_ids):
    """Beam search: the tokens of `generate(num_beams=...)` and its `sequences_scores`; with an eos, the
    rows of the batch finish at different steps."""
    path = hf_dirs["GPT2LMHeadModel"]
    kwargs = resolve(BEAM_CASES[case], eos_ids)
    expected = hf_generate(load_generator(path), PROMPT, **kwargs)
    cfg, w = checkpoints.from_hf(path)
    ours = search(build(framework, cfg, w, dtype="float32"), PROMPT, strategy="beam", use_cache=use_cache, **kwargs)
    assert_generation_matches(f"{framework} beam {case}", ours, expected)
    if kwargs["eos_token_id"] is not None:
        assert len(set(ours.lengths.tolist())) > 1, f"every row ended at the same step: {ours.lengths}"


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("case", GREEDY_CASES)
def test_gpt2_greedy_stopping_matches_transformers(case, use_cache, framework, hf_dirs, eos_ids):
    """Greedy with eos, padding, min lengths and n-gram bans: finished rows padded, the result cut where
    every row has finished, as `generate(do_sample=False)`."""
    path = hf_dirs["GPT2LMHeadModel"]
    kwargs = resolve(GREEDY_CASES[case], eos_ids)
    expected = hf_generate(load_generator(path), PROMPT, **kwargs)
    cfg, w = checkpoints.from_hf(path)
    ours = search(build(framework, cfg, w, dtype="float32"), PROMPT, use_cache=use_cache, **kwargs)
    assert_generation_matches(f"{framework} greedy {case}", ours, expected)
    assert len(set(ours.lengths.tolist())) > 1, f"every row ended at the same step: {ours.lengths}"


class PositionedGPT2(numpy_ref.gpt2.GPT2):
    """GPT-2 whose forward takes position_ids, as transformers' does (our GPT-2 numbers positions itself):
    the model a left-padded prompt needs, declared by `Decoding(position_ids=True)`."""

    def forward(self, input_ids, attention_mask=None, cache=None, position_ids=None):
        if cache is not None and not cache:
            cache.extend({} for _ in self.layers)
        h = self.embeddings.token(input_ids) + self.embeddings.position(position_ids)   # (B, T, D)
        for i, layer in enumerate(self.layers):
            h = layer(h, mask=attention_mask, cache=None if cache is None else cache[i])
        return {"logits": self.final_norm(h) @ self.embeddings.token.table.T}          # (B, T, V)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_left_padded_generation_matches_transformers(strategy, use_cache, hf_dirs, eos_ids, monkeypatch):
    """A left-padded batch: the mask grows by one a step and positions are cumsum(mask) - 1, as HF's generate
    feeds its GPT-2; tokens and scores as HF's."""
    monkeypatch.setitem(families.FAMILIES, "gpt2", dataclasses.replace(families.get("gpt2"),
                                                                       decoding=Decoding(position_ids=True)))
    path = hf_dirs["GPT2LMHeadModel"]
    cfg, w = checkpoints.from_hf(path)
    numpy = backend("numpy")
    module = PositionedGPT2(cfg)
    numpy.load(module, w, "float32")
    model = Built(numpy, registry.get("gpt2"), cfg, module, "float32", False)
    model.signature = {**model.signature, "position_ids": False}  # the front door reads the registry's GPT2
    prompt = np.random.default_rng(3).integers(0, GPT2["vocab_size"], (3, 7))
    mask = np.ones_like(prompt)
    mask[1, :2] = mask[2, :5] = 0
    kwargs = dict(max_new_tokens=8, eos_token_id=eos_ids[EOS])
    if strategy == "beam":
        kwargs.update(num_beams=3, num_return_sequences=2, length_penalty=1.5, no_repeat_ngram_size=2)
    expected = hf_generate(load_generator(path), prompt, mask, **kwargs)
    ours = search(model, prompt, strategy=strategy, attention_mask=mask, use_cache=use_cache, **kwargs)
    assert_generation_matches(f"left-padded {strategy}", ours, expected)


def test_gpt2_cache_equals_full_recompute(framework, hf_dirs):
    """A 4-token prompt then one token at a time through the cache gives the logits of one
    full pass over all 10 tokens."""
    cfg, w = checkpoints.from_hf(hf_dirs["GPT2LMHeadModel"])
    m = build(framework, cfg, w, dtype="float32")
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 10))
    full = m(input_ids=ids)["logits"]
    cache = []
    steps = [m.step(ids[:, :4], cache)["logits"]] + [m.step(ids[:, t:t + 1], cache)["logits"] for t in range(4, 10)]
    result = compare(f"{framework} cached logits", np.concatenate(steps, axis=1), full, TOLERANCES["float32"])
    assert result.passed, str(result)


@pytest.mark.parametrize("name", ["BertModel", "BertForMaskedLM", "GPT2LMHeadModel"])
def test_float64_reference_matches_transformers(name, hf_dirs):
    """HF in float64 (`.double()`) against the NumPy reference in float64: only summation
    order separates them, so the float64 tolerance holds."""
    cfg, w = checkpoints.from_hf(hf_dirs[name])
    inputs = inputs_for(name)
    expected = run_hf(load_hf(name, hf_dirs[name]).double(), inputs)
    ours = build("numpy", cfg, w, dtype="float64")(**inputs)
    assert_matches(f"numpy/float64 {name}", ours, expected, OUTPUTS[name], dtype="float64")
