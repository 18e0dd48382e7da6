"""Mirrors `numpy_ref.transformer`.

Differs: `Transformer` is a `keras.Model`; the tied output projection is `keras.ops.matmul`
with the target token table transposed (no extra variable).
"""
import math

from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Model
from tf_impl.activations import Dropout
from tf_impl.blocks import DecoderLayer, EncoderLayer
from tf_impl.embeddings import PositionEmbedding, SinusoidalPositionalEncoding, TokenEmbedding
from tf_impl.linear import Linear


class Transformer(Model):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.source_embedding = TokenEmbedding(cfg, name="source_embedding", dtype=dtype)
        self.target_embedding = (None if cfg.share_embeddings
                                 else TokenEmbedding(cfg, name="target_embedding", dtype=dtype))
        self.position = (SinusoidalPositionalEncoding(cfg, name="position", dtype=dtype)
                         if cfg.position == "sinusoidal" else PositionEmbedding(cfg, name="position", dtype=dtype))
        self.dropout = Dropout(cfg, name="dropout", dtype=dtype)
        self.encoder = [EncoderLayer(cfg, name=f"encoder.{i}", dtype=dtype) for i in range(cfg.num_layers)]
        self.decoder = [DecoderLayer(cfg, name=f"decoder.{i}", dtype=dtype)
                        for i in range(cfg.num_decoder_layers)]
        self.output_projection = (None if cfg.tie_embeddings
                                  else Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                                              name="output_projection", dtype=dtype))

    def embed(self, ids, table):
        x = table(ids)                                                        # (B, T, D)
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.cfg.d_model)
        positions = ops.arange(ops.shape(ids)[1])[None, :]                    # (1, T)
        return self.dropout(x + ops.cast(self.position(positions), x.dtype))  # (B, T, D)

    def call(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None):
        """input_ids, attention_mask: (B, S) source; decoder_*: (B, T) target."""
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask))
        checks.token_inputs(checks.spec(decoder_input_ids), checks.spec(decoder_attention_mask),
                            prefix="decoder_")
        tap = trace.tap_for(self)
        target_table = self.target_embedding or self.source_embedding
        memory = self.embed(input_ids, self.source_embedding)                 # (B, S, D)
        for layer in self.encoder:
            memory = layer(memory, mask=attention_mask)                       # (B, S, D)
        h = self.embed(decoder_input_ids, target_table)                       # (B, T, D)
        for layer in self.decoder:
            h = layer(h, memory, mask=decoder_attention_mask, memory_mask=attention_mask)
        if self.output_projection is None:
            logits = ops.matmul(h, ops.transpose(target_table.table))         # (B, T, V)
        else:
            logits = self.output_projection(h)                                # (B, T, V)
        return {"logits": tap("logits", logits), "last_hidden_state": h,
                "encoder_last_hidden_state": memory}
