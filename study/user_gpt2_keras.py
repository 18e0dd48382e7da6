"""The GPT-2 of study/user_gpt2.py written by hand in Keras 3: its own layer names (`blocks_0/attn/q`),
Keras's `Dense` ([in, out] kernels) and `LayerNormalization`. docs/harness/compare.md points the
harness at it:

    tmirror compare gpt2-tiny --a module:study/user_gpt2_keras.py:make_model

`MODULES` is its name map, paths joined by "/" as Keras joins them. `make_wrong_epsilon` plants the
bug a Keras port makes most easily: the second layer norm left at `LayerNormalization`'s default
epsilon, 1e-3, where GPT-2 uses 1e-5 (tests/test_compare.py pins it to `blocks_0/ln2`).
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from conformance.spec.leaves import KERAS_DENSE, KERAS_NORM, KERAS_TABLE, table_rows

MODULES = {
    "embeddings.token": ("wte", KERAS_TABLE),
    "embeddings.position": ("wpe", KERAS_TABLE),
    "layers.{i}.attention_norm": ("blocks_{i}/ln1", KERAS_NORM),
    "layers.{i}.attention.query": ("blocks_{i}/attn/q", KERAS_DENSE),
    "layers.{i}.attention.key": ("blocks_{i}/attn/k", KERAS_DENSE),
    "layers.{i}.attention.value": ("blocks_{i}/attn/v", KERAS_DENSE),
    "layers.{i}.attention.output": ("blocks_{i}/attn/proj", KERAS_DENSE),
    "layers.{i}.feed_forward_norm": ("blocks_{i}/ln2", KERAS_NORM),
    "layers.{i}.feed_forward.inner": ("blocks_{i}/fc", KERAS_DENSE),
    "layers.{i}.feed_forward.outer": ("blocks_{i}/out", KERAS_DENSE),
    "final_norm": ("ln_f", KERAS_NORM),
}


class Attention(keras.layers.Layer):
    def __init__(self, d, heads, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.q, self.k, self.v, self.proj = (keras.layers.Dense(d, name=n) for n in ("q", "k", "v", "proj"))

    def call(self, x, mask):                                          # x: (B, T, D), mask: (B, 1, T, T) bool
        B, T, D = ops.shape(x)
        split = lambda t: ops.transpose(ops.reshape(t, (B, T, self.heads, D // self.heads)), (0, 2, 1, 3))  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))  # (B, H, T, Dh)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(D // self.heads)  # (B, H, T, T)
        probs = ops.softmax(ops.where(mask, scores, -1e9), axis=-1)
        return self.proj(ops.reshape(ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3)), (B, T, D)))


class Block(keras.layers.Layer):
    def __init__(self, cfg, bug, **kwargs):
        super().__init__(**kwargs)
        self.ln1 = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name="ln1")
        self.attn = Attention(cfg.d_model, cfg.num_heads, name="attn")
        self.ln2 = keras.layers.LayerNormalization(name="ln2") if bug == "wrong_epsilon" else \
            keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name="ln2")
        self.fc = keras.layers.Dense(cfg.d_ff, name="fc")
        self.out = keras.layers.Dense(cfg.d_model, name="out")

    def call(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.out(keras.activations.gelu(self.fc(self.ln2(x)), approximate=True))


class MyGPT2(keras.Model):
    def __init__(self, cfg, bug=None):
        super().__init__(name="my_gpt2")
        self.wte = keras.layers.Embedding(cfg.vocab_size, cfg.d_model, name="wte")
        self.wpe = keras.layers.Embedding(cfg.max_positions, cfg.d_model, name="wpe")
        self.blocks = [Block(cfg, bug, name=f"blocks_{i}") for i in range(cfg.num_layers)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name="ln_f")

    def call(self, input_ids, attention_mask=None):
        T = ops.shape(input_ids)[1]
        keys = ops.ones_like(input_ids, dtype="bool") if attention_mask is None else ops.cast(attention_mask, "bool")
        causal = ops.tril(ops.ones((T, T), dtype="bool"))
        mask = ops.logical_and(causal[None, None], keys[:, None, None, :])
        x = self.wte(input_ids) + self.wpe(ops.arange(T))
        for block in self.blocks:
            x = block(x, mask)
        h = self.ln_f(x)
        return {"last_hidden_state": h, "logits": ops.matmul(h, ops.transpose(self.wte.embeddings))}


def make_model(cfg, weights, bug: str | None = None) -> keras.Model:
    """Built on a dummy batch, then each variable set from the shared weights through the name map."""
    if bug not in (None, "wrong_epsilon"):
        raise ValueError(f"bug must be 'wrong_epsilon' or None; received bug={bug!r}")
    model = MyGPT2(cfg, bug)
    model(np.zeros((1, 2), np.int32))
    variables = {v.path.removeprefix(f"{model.name}/"): v for v in model.weights}
    for name, path, leaf in table_rows(MODULES, {k: np.shape(v) for k, v in weights.items()}):
        variables[f"{path}/{leaf.external}"].assign(leaf.to_external(weights[name], cfg))
    return model


def make_wrong_epsilon(cfg, weights):
    return make_model(cfg, weights, "wrong_epsilon")
