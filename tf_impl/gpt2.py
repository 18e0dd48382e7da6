"""Mirrors `numpy_ref.gpt2`.

Differs: `GPT2` is a `keras.Model` whose `layers` attribute shadows Keras's `Model.layers`
property (the model's top-level layers) to keep the canonical names `layers.0...`; so
`gpt2.layers` and `summary()` list the blocks only. The tied head is `keras.ops.matmul` with the
token table transposed. `cache` reaches `call` as the caller's list (see `tf_impl._layer`) and is
filled in place on the first call.
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Model, Shadow
from tf_impl.activations import Dropout
from tf_impl.blocks import EncoderLayer, cache_length
from tf_impl.embeddings import PositionEmbedding, TokenEmbedding
from tf_impl.normalization import LayerNorm


class GPT2Embeddings(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.token = TokenEmbedding(cfg, name="token", dtype=self.dtype_policy)
        self.position = PositionEmbedding(cfg, name="position", dtype=self.dtype_policy)
        self.dropout = Dropout(cfg, name="dropout", dtype=self.dtype_policy)

    def call(self, input_ids, past):
        T = ops.shape(input_ids)[1]  # an int, or a tensor for a dynamic axis under tf.function
        positions = past + ops.arange(T)[None, :]                             # (1, T)
        x = self.token(input_ids) + self.position(positions)                  # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(x))


class GPT2(Model):
    layers = Shadow()  # Keras's `Model.layers` property: here the list of blocks

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.embeddings = GPT2Embeddings(cfg, name="embeddings", dtype=dtype)
        self.layers = [EncoderLayer(cfg, name=f"layers.{i}", dtype=dtype) for i in range(cfg.num_layers)]
        self.final_norm = LayerNorm(cfg, name="final_norm", dtype=dtype)

    def call(self, input_ids, attention_mask=None, cache=None):
        """input_ids: (B, T)  attention_mask: (B, past + T), 1 = attend.

        `cache`: a list, filled on the first call with one dict per layer holding
        that layer's keys and values; pass it back to continue from where it ended.
        """
        past = cache_length(cache)
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask), past=past)
        if cache is not None and not cache:
            cache.extend({} for _ in self.layers)
        h = self.embeddings(input_ids, past)                                  # (B, T, D)
        for i, layer in enumerate(self.layers):
            h = layer(h, mask=attention_mask, cache=None if cache is None else cache[i])
        return self.head(h)

    def head(self, h):
        """After the last layer: the final layer norm and the tied logits. A streamed run calls it alone
        (`conformance.report.stream`)."""
        h = self.final_norm(h)                                                # (B, T, D)
        logits = ops.matmul(h, ops.transpose(self.embeddings.token.table))    # (B, T, V)
        return {"logits": trace.tap_for(self)("logits", logits), "last_hidden_state": h}
