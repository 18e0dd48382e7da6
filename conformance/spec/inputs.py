"""Input makers: seeded NumPy inputs for registry entries, one function per input signature.

Each maker is `(cfg, rng, batch, length, **options) -> {argument name: np.ndarray}`; the
options are a registry variant's (`Variant.options`). Masks are True (or 1) = attend.
"""
from __future__ import annotations

import numpy as np


def padding_mask(rng, batch, length):
    """(B, S) bool, True = attend; row b keeps its first length - b positions, at least 1."""
    keep = np.maximum(length - np.arange(batch), 1)
    return np.arange(length)[None, :] < keep[:, None]


def hidden(cfg, rng, batch, length, **_):
    return {"x": rng.standard_normal((batch, length, cfg.d_model))}


def masked_hidden(cfg, rng, batch, length, mask="padding", cross=False, position_bias=False):
    source = length + 3 if cross else length
    inputs = {"x": rng.standard_normal((batch, length, cfg.d_model))}
    if cross:
        inputs["context"] = rng.standard_normal((batch, source, cfg.d_model))
    if mask == "padding":
        inputs["mask"] = padding_mask(rng, batch, source)
    if position_bias:  # an additive (1, H, T, S) bias on the scores, as T5's relative position bias
        inputs["position_bias"] = rng.standard_normal((1, cfg.num_heads, length, source))
    return inputs


def scores_and_mask(cfg, rng, batch, length, mask="padding", fill=None):
    H = cfg.num_heads
    scores = 4 * rng.standard_normal((batch, H, length, length))
    masks = {
        "none": None,
        "padding": padding_mask(rng, batch, length)[:, None, None, :].repeat(length, 2),
        "causal": np.tril(np.ones((length, length), bool))[None, None].repeat(batch, 0),
        "fully_masked": rng.random((batch, 1, length, length)) < 0.5,
    }
    m = masks[mask]
    if mask == "fully_masked":
        m[0, 0, 1, :] = False  # one row with nothing to attend to: defined as zeros
    return {"scores": scores} if m is None else {"scores": scores, "mask": m}


def qkv(cfg, rng, batch, length, mask="padding"):
    H, Dh = cfg.num_heads, cfg.head_dim
    S = length + 2
    inputs = {"q": rng.standard_normal((batch, H, length, Dh)),
              "k": rng.standard_normal((batch, H, S, Dh)),
              "v": rng.standard_normal((batch, H, S, Dh))}
    if mask == "padding":
        inputs["mask"] = padding_mask(rng, batch, S)[:, None, None, :].repeat(length, 2)
    if mask == "fully_masked":
        inputs["mask"] = padding_mask(rng, batch, S)[:, None, None, :].repeat(length, 2)
        inputs["mask"][0, 0, 0, :] = False
    return inputs


def qkv_keys(cfg, rng, batch, length, mask="padding"):
    """`qkv` with a (B, S) padding mask: attention through a feature map masks keys, never (query, key) pairs."""
    inputs = qkv(cfg, rng, batch, length, mask="none")
    if mask == "padding":
        inputs["mask"] = padding_mask(rng, batch, inputs["k"].shape[2])
    return inputs


def relative_hidden(cfg, rng, batch, length, mask="padding", **_):
    """Disentangled attention's inputs: x (B, T, D), the relative table rel (2k, D) (layer-normed, as the
    model hands it over), a padding mask (B, T)."""
    rel = rng.standard_normal((2 * cfg.relative_span, cfg.d_model))
    rel = (rel - rel.mean(-1, keepdims=True)) / rel.std(-1, keepdims=True)
    inputs = {"x": rng.standard_normal((batch, length, cfg.d_model)), "rel": rel}
    if mask == "padding":
        inputs["mask"] = padding_mask(rng, batch, length)
    return inputs


def dropout_inputs(cfg, rng, batch, length, **_):
    x = rng.standard_normal((batch, length, cfg.d_model))
    return {"x": x, "keep": rng.random(x.shape) >= cfg.dropout}


def ids(vocab):
    def make(cfg, rng, batch, length, **_):
        return {"ids": rng.integers(0, getattr(cfg, vocab), (batch, length))}
    return make


def positions(key):
    def make(cfg, rng, batch, length, **_):
        return {key: np.arange(length)[None, :].repeat(batch, 0) + rng.integers(0, 3, (batch, 1))}
    return make


def decoder_inputs(cfg, rng, batch, length, position_bias=False, **_):
    S = length + 2
    inputs = {"x": rng.standard_normal((batch, length, cfg.d_model)),
              "memory": rng.standard_normal((batch, S, cfg.d_model)),
              "mask": padding_mask(rng, batch, length),
              "memory_mask": padding_mask(rng, batch, S)}
    if position_bias:  # on the self-attention's (1, H, T, T) scores, as T5's decoder
        inputs["position_bias"] = rng.standard_normal((1, cfg.num_heads, length, length))
    return inputs


def token_inputs(cfg, rng, batch, length, segments=False, left_pad=False, **_):
    """ids, a padding mask and, with `segments` and a model that has segments, segment ids (A then B;
    all zeros with one type).
    A model that numbers positions from its ids (`pad_positions`, RoBERTa) gets the padding id at its
    padded positions and nowhere else, as a tokenizer pads; `left_pad` puts row b's padding first."""
    inputs = {"input_ids": rng.integers(0, cfg.vocab_size, (batch, length)),
              "attention_mask": padding_mask(rng, batch, length).astype(np.int64)}
    if left_pad:
        inputs["attention_mask"] = inputs["attention_mask"][:, ::-1].copy()
    if cfg.pad_positions:
        real = rng.integers(0, cfg.vocab_size - 1, (batch, length))
        real = real + (real >= cfg.pad_token_id)                                    # every id but the pad's
        inputs["input_ids"] = np.where(inputs["attention_mask"] > 0, real, cfg.pad_token_id)
    if segments and cfg.type_vocab_size:  # one segment type (RoBERTa): all zeros
        inputs["token_type_ids"] = (np.arange(length)[None, :] >= length // 2).astype(np.int64).repeat(batch, 0)
        inputs["token_type_ids"] *= cfg.type_vocab_size > 1
    return inputs


def seq2seq_inputs(cfg, rng, batch, length, **_):
    """Source ids and mask (B, S), target ids and mask (B, S - 2); the encoder alone (head "encoder") takes
    the source only."""
    target = max(length - 2, 1)
    inputs = {"input_ids": rng.integers(0, cfg.vocab_size, (batch, length)),
              "decoder_input_ids": rng.integers(0, cfg.vocab_size, (batch, target)),
              "attention_mask": padding_mask(rng, batch, length).astype(np.int64),
              "decoder_attention_mask": padding_mask(rng, batch, target).astype(np.int64)}
    if cfg.head == "encoder":
        del inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
    return inputs


def relative_positions(cfg, rng, batch, length, **_):
    """Query positions (T,) 3 apart from a random start and key positions (T + 2,) 4 apart: offsets from
    about -4 T to 4 T, far enough to reach the logarithmic buckets and the last one."""
    return {"query_positions": 3 * np.arange(length) + rng.integers(0, 3),
            "key_positions": 4 * np.arange(length + 2)}


def causal_lm_inputs(cfg, rng, batch, length, left_pad=False, **_):
    """A rotary causal LM's inputs: ids, a padding mask and the position of every token. Right
    padding by default (positions 0..T-1); `left_pad`: row b starts with b pads, and its first real
    token is at position 0 (positions = cumsum(mask) - 1, pads at 0, as transformers' generate)."""
    inputs = token_inputs(cfg, rng, batch, length, left_pad=left_pad)
    mask = inputs["attention_mask"]
    if left_pad:
        positions = np.where(mask > 0, np.cumsum(mask, axis=1) - 1, 0)                   # (B, T)
    else:
        positions = np.arange(length)[None, :].repeat(batch, 0)                          # (B, T)
    inputs["position_ids"] = positions.astype(np.int64)
    return inputs


def rotary_qk(cfg, rng, batch, length, positions="default", **_):
    """q (B, H, T, Dh), k (B, KV, T, Dh) and position_ids (B, T). `positions`: "default" 0..T-1 in
    every row; "offset": row 0 after a key/value cache of 5 (5..T+4), every other row left-padded by
    2 (0, 0, 0, 1, ..., as transformers' generate places pads at 0)."""
    H, KV, Dh = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    ids = np.arange(length)[None, :].repeat(batch, 0)                                    # (B, T)
    if positions == "offset":
        ids[0] += 5
        ids[1:] = np.maximum(ids[1:] - 2, 0)
    return {"q": rng.standard_normal((batch, H, length, Dh)), "k": rng.standard_normal((batch, KV, length, Dh)),
            "position_ids": ids.astype(np.int64)}


def image_inputs(cfg, rng, batch, length, size=None, **_):
    """pixel_values (B, C, H, W), channels first, N(0, 1) pixels (as a normalized image); H x W is `size`, else
    image_size square, and for a config that interpolates (`interpolate_pos_encoding`) another size: S + 1.5 P
    by S - P + 1 (S = image_size), so the position grid grows by a row, shrinks by a column, and a remainder
    of fewer than P pixels is dropped on each side. `length` does not apply: an image's size sets its tokens."""
    S, P = cfg.image_size, cfg.patch_size
    if size is None:
        size = (S + P + P // 2, max(S - P + 1, P)) if cfg.interpolate_pos_encoding else (S, S)
    return {"pixel_values": rng.standard_normal((batch, cfg.num_channels, *size))}
