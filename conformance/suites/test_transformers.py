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
"""
import numpy as np
import pytest

import transformers  # noqa: E402
import torch  # noqa: E402

from conformance.spec import inputs as spec_inputs
from conformance.weights import checkpoints  # noqa: E402
from conformance.spec import registry
from conformance.backends.build import build  # noqa: E402
from conformance.generate import generate  # noqa: E402
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
