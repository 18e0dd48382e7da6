"""Mirrors `numpy_ref.llama`.

Differs: `Llama` is a `keras.Model` whose `layers` attribute shadows Keras's `Model.layers`
property to keep the canonical names `layers.0...` (as `GPT2`); the tied head is
`keras.ops.matmul` with the token table transposed; the embedding scale is cast to the
compute dtype. `cache` reaches `call` as the caller's list and is filled in place.
"""
import math

from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Model, Shadow
from tf_impl.activations import Dropout, softcap
from tf_impl.blocks import EncoderLayer, cache_length, norm_for
from tf_impl.embeddings import TokenEmbedding
from tf_impl.linear import Linear


class LlamaEmbeddings(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else None
        self.token = TokenEmbedding(cfg, name="token", dtype=self.dtype_policy)
        self.dropout = Dropout(cfg, name="dropout", dtype=self.dtype_policy)

    def call(self, input_ids):
        x = self.token(input_ids)                                                # (B, T, D)
        if self.scale is not None:
            x = x * ops.cast(ops.convert_to_tensor(self.scale, dtype="float64"), x.dtype)  # Gemma: rounded first
        return trace.tap_for(self)("output", self.dropout(x))                   # (B, T, D)


class Llama(Model):
    layers = Shadow()  # Keras's `Model.layers` property: here the list of blocks

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.embeddings = LlamaEmbeddings(cfg, name="embeddings", dtype=dtype)
        self.layers = [EncoderLayer(cfg, sliding=cfg.sliding(i), name=f"layers.{i}", dtype=dtype)
                       for i in range(cfg.num_layers)]
        self.final_norm = norm_for(cfg, name="final_norm", dtype=dtype)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                                                              name="lm_head", dtype=dtype)

    def call(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """input_ids: (B, T)  attention_mask: (B, past + T), 1 = attend  position_ids: (B, T).

        `cache`: a list, filled on the first call with one dict per layer holding that layer's
        keys and values (KV heads); pass it back to continue from where it ended.
        """
        past = cache_length(cache)
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask), past=past)
        if position_ids is not None:
            checks.position_ids("position_ids", checks.spec(position_ids), checks.shape_of(input_ids))
        if cache is not None and not cache:
            cache.extend({} for _ in self.layers)
        h = self.embeddings(input_ids)                                           # (B, T, D)
        for i, layer in enumerate(self.layers):
            h = layer(h, mask=attention_mask, cache=None if cache is None else cache[i], position_ids=position_ids)
        return self.head(h)

    def head(self, h):
        """After the last layer: the final norm and the logits, tied or not. A streamed run calls it alone
        (`conformance.report.stream`)."""
        tap = trace.tap_for(self)
        h = self.final_norm(h)                                                   # (B, T, D)
        logits = (ops.matmul(h, ops.transpose(self.embeddings.token.table)) if self.lm_head is None
                  else self.lm_head(h))                                          # (B, T, V)
        if self.cfg.final_logit_softcap is not None:
            logits = softcap(tap("uncapped_logits", logits), self.cfg.final_logit_softcap)   # (B, T, V)
        return {"logits": tap("logits", logits), "last_hidden_state": h}
