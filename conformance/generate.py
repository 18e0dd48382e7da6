"""Text generation from a built causal LM of any framework, token-identical across frameworks.

    tokens = generate(build("torch", cfg, w), prompt_ids, max_new_tokens=8)             # greedy
    tokens = generate(m, prompt_ids, 8, strategy="sample", temperature=0.8, top_p=0.9, seed=1)

The model only supplies logits. Every choice after that happens here, in NumPy, on
float64 logits, with one seeded `numpy.random.Generator`: so NumPy, PyTorch and Keras
pick the same tokens from the same seed (their logits differ by float32 rounding,
~1e-6, which moves a choice only when two tokens tie to that precision).

Sampling filters in a fixed order: temperature divides the logits; top-k keeps the k
largest; top-p (nucleus) keeps the smallest set of most likely tokens whose probability
reaches p. Ties are broken by a stable sort, so the lower token id wins. Each step
draws one uniform number per row and inverts the cumulative distribution.

With `use_cache` the prompt runs once and each later step feeds only the new token,
continuing from the key/value cache the model keeps (`Built.step`); without it, every
step reruns the whole sequence. Both give the same tokens (the suite checks it).
Prompts in a batch have equal length: there is no padding, so positions are 0..T-1.
"""
from __future__ import annotations

import numpy as np

from conformance.spec import families

STRATEGIES = ("greedy", "sample")


def generate(model, input_ids, max_new_tokens: int, strategy: str = "greedy", temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             use_cache: bool = True) -> np.ndarray:
    """(B, T) prompt ids -> (B, T + max_new_tokens): the prompt followed by the new tokens."""
    ids = np.asarray(input_ids)
    _check_args(model, ids, max_new_tokens, strategy, temperature, top_k, top_p)
    rng = np.random.default_rng(seed)
    cache = [] if use_cache else None
    new = ids
    for _ in range(max_new_tokens):
        logits = model.step(new, cache)["logits"] if use_cache else model(input_ids=ids)["logits"]
        last = logits[:, -1].astype(np.float64)                                    # (B, V)
        if strategy == "greedy":
            token = last.argmax(axis=-1)                                           # (B,) first max wins
        else:
            token = sample(next_token_probs(last, temperature, top_k, top_p), rng)
        new = token[:, None].astype(ids.dtype)                                     # (B, 1)
        ids = np.concatenate([ids, new], axis=1)                                   # (B, T + step)
    return ids


def next_token_probs(logits, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> np.ndarray:
    """(B, V) logits -> (B, V) float64 probabilities after temperature, top-k, then top-p."""
    logits = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-logits, axis=-1, kind="stable")                            # (B, V) most likely first
    rank = np.argsort(order, axis=-1, kind="stable")                               # (B, V) rank of each token
    if top_k is not None:
        logits = np.where(rank < top_k, logits, -np.inf)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)                                     # (B, V)
    if top_p is not None:
        sorted_probs = np.take_along_axis(probs, order, axis=-1)                   # (B, V)
        cumulative = np.cumsum(sorted_probs, axis=-1)                              # (B, V)
        before = np.concatenate([np.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], axis=-1)  # better ones' mass
        keep_sorted = before < top_p                                               # first one always kept
        probs = np.where(np.take_along_axis(keep_sorted, rank, axis=-1), probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def sample(probs, rng: np.random.Generator) -> np.ndarray:
    """One token per row: the first whose cumulative probability exceeds a uniform draw."""
    cdf = np.cumsum(probs, axis=-1)                                                # (B, V)
    u = rng.random(len(probs)) * cdf[:, -1]                                        # (B,)
    token = (cdf <= u[:, None]).sum(axis=-1)                                       # (B,)
    return np.minimum(token, probs.shape[-1] - 1)


def _check_args(model, ids, max_new_tokens, strategy, temperature, top_k, top_p):
    kind = getattr(getattr(model, "cfg", None), "kind", type(model).__name__)
    if kind not in families.FAMILIES or not families.get(kind).generates:
        causal = sorted(f.name for f in families.FAMILIES.values() if f.generates)
        raise ValueError(f"model must be a built causal LM of the families {causal} (conformance.build); "
                         f"received {kind!r}")
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be a (B, T) integer array; received shape {ids.shape}, "
                         f"dtype {ids.dtype}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}; received strategy={strategy!r}")
    room = model.cfg.max_positions - ids.shape[1]
    if not isinstance(max_new_tokens, (int, np.integer)) or not 1 <= max_new_tokens <= room:
        raise ValueError(f"max_new_tokens must be an int in [1, {room}] (max_positions {model.cfg.max_positions} "
                         f"- prompt length {ids.shape[1]}); received max_new_tokens={max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; received temperature={temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1; received top_k={top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1]; received top_p={top_p!r}")
