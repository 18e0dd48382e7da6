"""Text generation from a built model of any framework: greedy, sampling and beam search, token for
token what `transformers` 5.24's `generate` returns, and the same tokens in every framework.

    tokens = generate(build("torch", cfg, w), prompt_ids, max_new_tokens=8)             # greedy
    tokens = generate(m, prompt_ids, 8, strategy="sample", temperature=0.8, top_p=0.9, seed=1)
    out = search(m, prompt_ids, 8, strategy="beam", num_beams=4, length_penalty=0.6, eos_token_id=3)
    out.sequences, out.scores, out.lengths                                             # a Generation

The model only supplies logits. Every choice after that happens here, in NumPy, on
float64 logits, with one seeded `numpy.random.Generator`: so NumPy, PyTorch and Keras
pick the same tokens from the same seed (their logits differ by float32 rounding,
~1e-6, which moves a choice only when two tokens tie to that precision).

Sampling filters in a fixed order: temperature divides the logits; top-k keeps the k
largest; top-p (nucleus) keeps the smallest set of most likely tokens whose probability
reaches p. Ties are broken by a stable sort, so the lower token id wins. Each step
draws one uniform number per row and inverts the cumulative distribution.

Stopping and processing, as `transformers` does it. `max_new_tokens` or `max_length` (the whole
sequence: prompt, or an encoder-decoder's start token, included) bounds the length. A sequence that
emits a token of `eos_token_id` (an int or a list) is finished: greedy and sampling fill its later
positions with `pad_token_id` (default: the first eos) and stop when every row is finished, so the
result can be shorter than the bound. `min_length` / `min_new_tokens` ban eos (-inf) until the
sequence / its new part is that long; `no_repeat_ngram_size` n bans any token that would repeat an
n-gram of the sequence (prompt included). These act on the logits before the choice.

Beam search (`transformers`' `_beam_search`) keeps `num_beams` running sequences per row, each with
its score, the sum of its tokens' log-probabilities (log-softmax, then the bans above). Each step:
every beam's V continuations are scored, and the best K = max(2, 1 + number of eos) x num_beams
candidates of the row are taken; of those, the best num_beams that did not just end run on. A
candidate that ends (an eos, or the length bound) and ranks among the first num_beams enters the
row's store of finished hypotheses with score sum / new_length ** length_penalty, where new_length
counts the tokens after the prompt (or start token), the eos included; the store keeps the best
num_beams. `early_stopping=True` closes a row once it holds num_beams hypotheses; False (the
default) when, in addition, the best running beam divided by its current length ** length_penalty
cannot beat the store's worst; "never" as False, but with the longest possible length when
length_penalty > 0. Scores that cannot win are -1e9 (`NEG`), as in `transformers`. The result is
each row's best `num_return_sequences` hypotheses, best first, padded after their end with
`pad_token_id`, except that `transformers` writes `pad_token_id or eos[0]`, so a pad id of 0 pads
with the eos (mirrored here). `Generation.scores` are then its `sequences_scores`.

With `use_cache` the prompt runs once and each later step feeds only the new token,
continuing from the key/value cache the model keeps (`Built.step`); beam search moves each beam's
cache rows to the beam it continues (`Built.reorder_cache`). Without it, every step reruns the
whole sequence. Both give the same tokens and scores (the tests check it).

Prompts: `attention_mask` (1 = token, 0 = pad) allows left padding for a model whose forward takes
`position_ids` (`conformance.spec.family.Decoding`): the mask grows by one each step and positions are
cumsum(mask) - 1, pads at 0, as `transformers` computes them. A model that numbers positions itself
(GPT-2 here) takes prompts of equal length: a left-padded prompt is refused. An encoder-decoder takes
the prompt (and its mask, any padding) as the encoder's input; its sequences start with
`decoder_start_token_id`. How each kind of model is called is `Decoding`'s docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from conformance.spec import families

STRATEGIES = ("greedy", "sample", "beam")
NEG = -1.0e9  # transformers' score for a beam that must not win: finite, so sums stay ordered
EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class Generation:
    """What `search` returns. N = batch x num_return_sequences, rows in batch order (a row's best first)."""
    sequences: np.ndarray  # (N, L) the prompt (or start token), the new tokens, then padding
    scores: np.ndarray     # (N,) float64: the model's log-probability of the new tokens, sum log p (a ban only
    #                        excludes tokens, it never renormalizes); beam search divides it by
    #                        length ** length_penalty (transformers' sequences_scores)
    lengths: np.ndarray    # (N,) new tokens up to and including the eos: the length the penalty divides by


@dataclass(frozen=True)
class BeamStep:
    """One step of beam search, kept for reading it (`search(..., steps=[])`). K candidates per row."""
    candidates: np.ndarray  # (B, K, t) int: the best continuations of the row's beams, best first
    scores: np.ndarray      # (B, K) their sums of log p
    ends: np.ndarray        # (B, K) bool: the new token is an eos, or the length bound is reached
    runs: np.ndarray        # (B, K) bool: among the num_beams that run on
    stored: np.ndarray      # (B, K) bool: entered the finished store (and is still there after this step)
    finished: np.ndarray    # (B, num_beams, max_length) int: the store after this step
    finished_scores: np.ndarray  # (B, num_beams): their sum / length ** length_penalty; NEG where empty


@dataclass(frozen=True)
class Settings:
    """The checked arguments of one `search`."""
    strategy: str
    start: int             # L0: the tokens every sequence starts with (prompt length, or 1: decoder start)
    max_length: int        # the longest sequence, L0 included
    min_length: int        # eos banned while the sequence is shorter
    min_new_tokens: int    # eos banned while fewer tokens were generated
    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    num_return_sequences: int
    no_repeat_ngram_size: int
    eos: tuple             # the eos token ids; () none
    pad: int | None        # what follows a finished sequence (greedy, sample)
    temperature: float
    top_k: int | None
    top_p: float | None


def generate(model, input_ids, max_new_tokens: int | None = None, strategy: str = "greedy", temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, use_cache: bool = True,
             **options) -> np.ndarray:
    """(B, T) prompt ids -> (B x num_return_sequences, T + new) ids: the prompt followed by the new tokens
    (`search(...).sequences`; `options` are `search`'s keyword arguments)."""
    return search(model, input_ids, max_new_tokens, strategy, temperature, top_k, top_p, seed, use_cache,
                  **options).sequences


def search(model, input_ids, max_new_tokens: int | None = None, strategy: str = "greedy", temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int = 0, use_cache: bool = True, *,
           attention_mask=None, max_length: int | None = None, min_length: int = 0, min_new_tokens: int = 0,
           num_beams: int = 1, length_penalty: float = 1.0, early_stopping: bool | str = False,
           num_return_sequences: int = 1, no_repeat_ngram_size: int = 0, eos_token_id: int | list | None = None,
           pad_token_id: int | None = None, decoder_start_token_id: int | None = None,
           steps: list | None = None) -> Generation:
    """Generate from `input_ids` (B, T) with `strategy`; the arguments are `transformers.generate`'s.
    `steps`, a list, receives one `BeamStep` per step of beam search."""
    ids = np.asarray(input_ids)
    decoding = _check_model(model, ids)
    mask = _check_mask(attention_mask, ids, decoding)
    s = _settings(model, ids, decoding, strategy, max_new_tokens, max_length, min_length, min_new_tokens,
                  num_beams, length_penalty, early_stopping, num_return_sequences, no_repeat_ngram_size,
                  eos_token_id, pad_token_id, decoder_start_token_id, temperature, top_k, top_p)
    if steps is not None and (s.strategy != "beam" or not isinstance(steps, list)):
        raise ValueError(f"steps must be a list, and records beam search: pass strategy='beam'; received "
                         f"steps={type(steps).__name__} with strategy={s.strategy!r}")
    if use_cache and not decoding.cache:
        raise ValueError(f"use_cache=True needs a model that keeps a key/value cache; the {model.cfg.kind} family "
                         f"declares none (Decoding.cache=False): pass use_cache=False")
    copies = s.num_beams if s.strategy == "beam" else s.num_return_sequences
    decoder = Decoder(model, decoding, ids, mask, copies, use_cache, decoder_start_token_id)
    if s.strategy == "beam":
        return beam_search(decoder, s, steps)
    return sample_search(decoder, s, np.random.default_rng(seed))


# -------------------------------------------------------------------------------- the model side

class Decoder:
    """What a search asks of a model: the next-token logits of N running sequences, and moving them.

    Each batch row is repeated `copies` times (its beams, or its samples). `logits(ids)` gets every
    running sequence so far (N, t) and feeds the model what it has not seen: everything without a
    cache, only the new tokens with one. `reorder(rows)` makes sequence i continue what sequence
    rows[i] was: the prompt mask, the source and the cache follow.
    """

    def __init__(self, model, decoding, ids, mask, copies: int, use_cache: bool, decoder_start: int | None):
        rows = np.repeat(np.arange(len(ids)), copies)                            # (N,)
        self.model, self.decoding = model, decoding
        self.cache = [] if use_cache else None
        self.seen = 0                                                            # tokens the cache holds
        self.mask = None if mask is None else mask[rows]                         # (N, T) prompt or source
        if decoding.encoder_decoder:
            self.source = ids[rows]                                              # (N, S)
            self.start = np.full((len(rows), 1), decoder_start, ids.dtype)       # (N, 1)
        else:
            self.start = ids[rows]                                               # (N, T)

    def logits(self, ids) -> np.ndarray:
        """(N, t) sequences -> (N, V) float64 logits of the next token."""
        inputs = self.encoder_decoder_inputs(ids) if self.decoding.encoder_decoder else self.causal_inputs(ids)
        if self.cache is None:
            out = self.model(**{k: v for k, v in inputs.items() if v is not None})
        else:
            out = self.model.step(cache=self.cache, **inputs)
            self.seen = ids.shape[1]
        return out["logits"][:, -1].astype(np.float64)                          # (N, V)

    def causal_inputs(self, ids) -> dict:
        N, t = ids.shape
        mask = np.ones((N, t), np.int64) if self.mask is None else np.concatenate(
            [self.mask, np.ones((N, t - self.mask.shape[1]), self.mask.dtype)], axis=1)  # (N, t) grows by 1
        new = slice(self.seen, t)                                                # all of it without a cache
        inputs = {"input_ids": ids[:, new], "attention_mask": None if self.mask is None else mask}
        if self.decoding.position_ids:
            inputs["position_ids"] = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)[:, new]  # (N, new)
        return inputs

    def encoder_decoder_inputs(self, ids) -> dict:
        if self.cache is not None and self.seen:                                 # the cache holds the source
            return {"decoder_input_ids": ids[:, self.seen:]}
        return {"input_ids": self.source, "attention_mask": self.mask, "decoder_input_ids": ids}

    def reorder(self, rows) -> None:
        if self.mask is not None:
            self.mask = self.mask[rows]
        if self.decoding.encoder_decoder:
            self.source = self.source[rows]
        if self.cache is not None:
            self.model.reorder_cache(self.cache, rows)


# -------------------------------------------------------------------------------- the choices

def sample_search(decoder: Decoder, s: Settings, rng: np.random.Generator) -> Generation:
    """Greedy (the most likely token) or sampling, one token a step for every row (`transformers`' `_sample`)."""
    ids = decoder.start                                                          # (N, L0)
    running = np.ones(len(ids), bool)                                            # (N,)
    total, lengths = np.zeros(len(ids)), np.zeros(len(ids), np.int64)
    while True:
        logits = decoder.logits(ids)                                             # (N, V)
        allowed = process(ids, logits, s)                                        # (N, V) bans at -inf
        if s.strategy == "greedy":
            token = allowed.argmax(axis=-1)                                      # (N,) first max wins
        else:
            token = sample(next_token_probs(allowed, s.temperature, s.top_k, s.top_p), rng)
        chosen = np.take_along_axis(log_softmax(logits), token[:, None], axis=-1)[:, 0]  # (N,) the model's log p
        total += np.where(running, chosen, 0.0)
        lengths += running
        token = np.where(running, token, s.pad if s.pad is not None else 0)      # finished rows: padding
        ids = np.concatenate([ids, token[:, None].astype(ids.dtype)], axis=1)    # (N, t + 1)
        running &= ~np.isin(token, s.eos)
        if ids.shape[1] >= s.max_length or not running.any():
            return Generation(ids, total, lengths)


def beam_search(decoder: Decoder, s: Settings, steps: list | None = None) -> Generation:
    """`transformers`' beam search (the module docstring), batched: (B, num_beams) beams per step;
    `steps` receives a `BeamStep` per step."""
    nb, L0 = s.num_beams, s.start
    N = len(decoder.start)
    B = N // nb
    K = max(2, 1 + len(s.eos)) * nb                                              # candidates kept per row
    fill = (s.pad or s.eos[0]) if s.eos else -1                                  # transformers' `pad or eos[0]`
    seqs = np.full((B, nb, s.max_length), fill, decoder.start.dtype)             # (B, nb, max_length) running
    seqs[:, :, :L0] = decoder.start.reshape(B, nb, L0)
    scores = np.where(np.arange(nb) == 0, 0.0, NEG) * np.ones((B, 1))            # (B, nb): beam 0 alone starts
    done_seqs, done_scores = seqs.copy(), np.full((B, nb), NEG)                  # the finished store
    done, done_lengths = np.zeros((B, nb), bool), np.zeros((B, nb), np.int64)
    open_rows = np.ones((B, 1), bool)                                            # a row can still improve
    rows = np.arange(B)[:, None]
    cur = L0
    while True:
        flat = seqs[:, :, :cur].reshape(N, cur)                                  # (N, cur)
        logp = process(flat, log_softmax(decoder.logits(flat)), s)               # (N, V)
        V = logp.shape[-1]
        total = (logp.reshape(B, nb, V) + scores[:, :, None]).reshape(B, nb * V)  # (B, nb V)
        top, index = top_k_sorted(total, K)                                      # (B, K)
        source, token = index // V, index % V                                    # beam, token
        candidates = seqs[rows, source].copy()                                   # (B, K, max_length)
        candidates[:, :, cur] = token
        ends = np.isin(token, s.eos) | (cur + 1 >= s.max_length)                 # (B, K)
        # the best num_beams candidates that did not end run on
        alive = top + ends * NEG                                                 # (B, K)
        _, keep = top_k_sorted(alive, nb)                                        # (B, nb)
        seqs, scores = candidates[rows, keep], np.take_along_axis(alive, keep, axis=1)
        # candidates that ended among the first num_beams may enter the store
        entered = ends & (np.arange(K) < nb)                                     # (B, K)
        final = top / float(cur + 1 - L0) ** s.length_penalty                    # (B, K)
        final = final + (done.all(axis=1, keepdims=True) & (s.early_stopping is True)) * NEG
        final = final + (~open_rows) * NEG + (~entered) * NEG
        merged = np.concatenate([done_scores, final], axis=1)                    # (B, nb + K)
        _, best = top_k_sorted(merged, nb)                                       # (B, nb)
        done_seqs = np.concatenate([done_seqs, candidates], axis=1)[rows, best]
        done_scores = np.take_along_axis(merged, best, axis=1)
        done = np.take_along_axis(np.concatenate([done, entered], axis=1), best, axis=1)
        done_lengths = np.take_along_axis(np.concatenate(
            [done_lengths, np.full((B, K), cur + 1 - L0)], axis=1), best, axis=1)
        if steps is not None:
            runs, stored = np.zeros((B, K), bool), np.zeros((B, K + nb), bool)
            np.put_along_axis(runs, keep, True, axis=1)
            np.put_along_axis(stored, best, True, axis=1)
            steps.append(BeamStep(candidates[:, :, :cur + 1], top, ends, runs, stored[:, nb:] & entered,
                                  done_seqs, done_scores))
        decoder.reorder((rows * nb + np.take_along_axis(source, keep, axis=1)).reshape(N))
        cur += 1
        # can the best running beam still beat the worst finished one?
        longest = s.max_length - L0 if s.early_stopping == "never" and s.length_penalty > 0 else cur - L0
        best_running = scores[:, :1] / float(longest) ** s.length_penalty        # (B, 1)
        worst_done = np.where(done, done_scores.min(axis=1, keepdims=True), NEG)  # (B, nb)
        open_rows &= (best_running > worst_done).any(axis=1, keepdims=True)
        if not open_rows.any() or (done.all() and s.early_stopping is True) or ends.all():
            break
    n = s.num_return_sequences
    lengths = done_lengths[:, :n].reshape(B * n)
    sequences = done_seqs[:, :n].reshape(B * n, s.max_length)[:, :L0 + lengths.max()]
    return Generation(sequences, done_scores[:, :n].reshape(B * n), lengths)


# -------------------------------------------------------------------------------- processing

def process(ids, scores, s: Settings) -> np.ndarray:
    """(N, t) sequences, (N, V) logits or log-probs -> the same with banned tokens at -inf."""
    scores = np.array(scores, np.float64)
    t = ids.shape[1]
    if s.no_repeat_ngram_size:
        scores = ban_repeated_ngrams(ids, scores, s.no_repeat_ngram_size)
    if s.eos and (t < s.min_length or t - s.start < s.min_new_tokens):
        scores[:, list(s.eos)] = -np.inf
    return scores


def ban_repeated_ngrams(ids, scores, n: int) -> np.ndarray:
    """Ban every token that would complete an n-gram already in the row: the windows whose first n - 1
    tokens equal the row's last n - 1 ban their last token (`transformers`' NoRepeatNGramLogitsProcessor)."""
    t = ids.shape[1]
    if t < n:
        return scores
    windows = np.lib.stride_tricks.sliding_window_view(ids, n, axis=1)           # (N, t - n + 1, n)
    suffix = ids[:, t + 1 - n:]                                                   # (N, n - 1)
    matches = (windows[:, :, :-1] == suffix[:, None, :]).all(axis=-1)             # (N, t - n + 1)
    row, window = np.nonzero(matches)
    scores[row, windows[row, window, -1]] = -np.inf
    return scores


def log_softmax(logits) -> np.ndarray:
    """(N, V) -> (N, V) float64 log-probabilities."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_k_sorted(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row, largest first, and their indices; ties: the lower index first."""
    kth = -np.partition(-x, k - 1, axis=-1)[:, k - 1:k]                          # (B, 1) the k-th largest
    index = np.empty((x.shape[0], k), np.int64)
    for b, row in enumerate(x):  # only what reaches the k-th largest is sorted: O(V) a row, not O(V log V)
        near = np.flatnonzero(row >= kth[b])                                     # (>= k,) ties included
        index[b] = near[np.lexsort((near, -row[near]))][:k]                      # by value, then index
    return np.take_along_axis(x, index, axis=-1), index


def next_token_probs(logits, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> np.ndarray:
    """(B, V) logits -> (B, V) float64 probabilities after temperature, top-k, then top-p."""
    logits = np.asarray(logits, np.float64)
    with np.errstate(over="ignore"):
        scaled = logits / temperature
    if not np.isfinite(scaled).all():  # exp(scaled - max) would be NaN, and every draw token 0
        largest = float(np.abs(logits).max())
        raise ValueError(f"temperature must be large enough that logits / temperature stays finite (max |logit| "
                         f"{largest:.3g}: temperature > {largest / np.finfo(np.float64).max:.3g}); received "
                         f"temperature={temperature!r}: for its limit at 0, use strategy='greedy'")
    logits = scaled
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


# -------------------------------------------------------------------------------- bad input

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_model(model, ids):
    kind = getattr(getattr(model, "cfg", None), "kind", type(model).__name__)
    if kind not in families.FAMILIES or not families.get(kind).generates:
        names = sorted(f.name for f in families.FAMILIES.values() if f.generates)
        raise ValueError(f"model must be a built generating model of the families {names} (conformance.build); "
                         f"received {kind!r}")
    if model.cfg.head != "none":
        raise ValueError(f"model must have its LM head (Config.head='none') to generate; received head="
                         f"{model.cfg.head!r}, a {kind} without one")
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be a (B, T) integer array; received shape {ids.shape}, "
                         f"dtype {ids.dtype}")
    return families.get(kind).decoding


def _check_mask(attention_mask, ids, decoding):
    """The prompt mask as int64, or None where it masks nothing."""
    if attention_mask is None:
        return None
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
        raise ValueError(f"attention_mask must be 0/1 of input_ids' shape {ids.shape}; received shape {mask.shape}, "
                         f"values {np.unique(mask)[:4].tolist()}")
    mask = mask.astype(np.int64)
    if mask.all():
        return None
    if not decoding.encoder_decoder:
        if (np.diff(mask, axis=1) < 0).any() or not mask[:, -1].all():
            row = int(np.nonzero((np.diff(mask, axis=1) < 0).any(axis=1) | (mask[:, -1] == 0))[0][0])
            raise ValueError(f"attention_mask must pad on the left (zeros, then ones, in each row) for generation; "
                             f"received row {row} = {mask[row].tolist()}")
        if not decoding.position_ids:
            row = int(np.nonzero(~mask.all(axis=1))[0][0])
            raise ValueError(f"attention_mask must be all ones: a left-padded prompt needs a model whose forward "
                             f"takes position_ids (Decoding.position_ids), and this one numbers positions 0.. "
                             f"itself; received row {row} = {mask[row].tolist()}")
    return mask


def _settings(model, ids, decoding, strategy, max_new_tokens, max_length, min_length, min_new_tokens, num_beams,
              length_penalty, early_stopping, num_return_sequences, no_repeat_ngram_size, eos_token_id,
              pad_token_id, decoder_start_token_id, temperature, top_k, top_p) -> Settings:
    cfg = model.cfg
    V, P = cfg.vocab_size, cfg.longest
    longest = (f"max_positions {P}" if not cfg.position_offset else
               f"{P} positions (max_positions {cfg.max_positions} less position_offset {cfg.position_offset})")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}; received strategy={strategy!r}")
    token = lambda x: _is_int(x) and 0 <= x < V  # noqa: E731  (a token id)
    if decoding.encoder_decoder:
        if not token(decoder_start_token_id):
            raise ValueError(f"decoder_start_token_id must be an int in [0, {V}) for an encoder-decoder; "
                             f"received decoder_start_token_id={decoder_start_token_id!r}")
        L0, what = 1, "decoder start 1"
    else:
        if decoder_start_token_id is not None:
            raise ValueError(f"decoder_start_token_id must be None for the decoder-only {cfg.kind} (the prompt "
                             f"starts the sequence); received decoder_start_token_id={decoder_start_token_id!r}")
        L0, what = ids.shape[1], f"prompt length {ids.shape[1]}"
    room = P - L0
    if max_new_tokens is not None and max_length is not None:
        raise ValueError(f"pass one of max_new_tokens and max_length; received max_new_tokens={max_new_tokens!r} "
                         f"and max_length={max_length!r}")
    if max_length is not None:
        if not _is_int(max_length) or not L0 + 1 <= max_length <= P:
            raise ValueError(f"max_length must be an int in [{L0 + 1}, {P}] ({what} + at least one new token, at "
                             f"most {longest}); received max_length={max_length!r}")
    elif not _is_int(max_new_tokens) or not 1 <= max_new_tokens <= room:
        raise ValueError(f"max_new_tokens must be an int in [1, {room}] ({longest} - {what}); "
                         f"received max_new_tokens={max_new_tokens!r}")
    else:
        max_length = L0 + max_new_tokens
    for name, value in (("min_length", min_length), ("min_new_tokens", min_new_tokens),
                        ("no_repeat_ngram_size", no_repeat_ngram_size)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be an int >= 0; received {name}={value!r}")
    if min_length > max_length:
        raise ValueError(f"min_length must be <= max_length {max_length}; received min_length={min_length}")
    if min_new_tokens > max_length - L0:
        raise ValueError(f"min_new_tokens must be <= max_new_tokens {max_length - L0}; "
                         f"received min_new_tokens={min_new_tokens}")
    eos = () if eos_token_id is None else tuple(np.atleast_1d(eos_token_id).tolist())
    if eos_token_id is not None and (not eos or not all(token(e) for e in eos)):
        raise ValueError(f"eos_token_id must be None, an int or a non-empty list of ints in [0, {V}); "
                         f"received eos_token_id={eos_token_id!r}")
    if pad_token_id is not None and not token(pad_token_id):
        raise ValueError(f"pad_token_id must be None or an int in [0, {V}); received pad_token_id={pad_token_id!r}")
    if (min_length or min_new_tokens) and not eos:
        raise ValueError(f"min_length and min_new_tokens ban eos_token_id until reached: pass eos_token_id; "
                         f"received eos_token_id=None with min_length={min_length}, min_new_tokens={min_new_tokens}")
    if not _is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1; received num_beams={num_beams!r}")
    if not _is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be an int >= 1; received num_return_sequences="
                         f"{num_return_sequences!r}")
    if not isinstance(length_penalty, (int, float, np.floating)) or not np.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number; received length_penalty={length_penalty!r}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be one of {list(EARLY_STOPPING)}; "
                         f"received early_stopping={early_stopping!r}")
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    if strategy == "beam":
        if num_return_sequences > num_beams:
            raise ValueError(f"num_return_sequences must be <= num_beams {num_beams} (each row returns its best "
                             f"hypotheses); received num_return_sequences={num_return_sequences}")
    else:
        beam = {"num_beams": (num_beams, num_beams != 1, 1),
                "length_penalty": (length_penalty, length_penalty != 1, 1.0),
                "early_stopping": (early_stopping, early_stopping is not False, False)}
        for name, (value, given, default) in beam.items():
            if given:
                raise ValueError(f"{name} is a beam-search option: pass strategy='beam' with it, or leave it at "
                                 f"{default!r}; received {name}={value!r} with strategy={strategy!r}")
        if strategy == "greedy" and num_return_sequences != 1:
            raise ValueError(f"num_return_sequences must be 1 for strategy='greedy' (every copy would be the same); "
                             f"received num_return_sequences={num_return_sequences}")
    if strategy != "sample":
        given = {k: v for k, v in sampling.items() if v != (1.0 if k == "temperature" else None)}
        if given:
            name, value = next(iter(given.items()))
            raise ValueError(f"{name} is a sampling option: strategy={strategy!r} chooses deterministically "
                             f"(pass strategy='sample'); received {name}={value!r}")
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and 0 < temperature < math.inf):
        raise ValueError(f"temperature must be a finite number > 0; received temperature={temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1; received top_k={top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1]; received top_p={top_p!r}")
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else None)
    return Settings(strategy, L0, max_length, min_length, min_new_tokens, num_beams, float(length_penalty),
                    early_stopping, num_return_sequences, no_repeat_ngram_size, eos, pad, float(temperature),
                    top_k, top_p)
