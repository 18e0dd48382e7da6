"""Mirrors `numpy_ref.bart`.

Differs: `Bart` is a `keras.Model`; its stacks are lists; the tied head is `keras.ops.matmul` with the
token table transposed; the logits bias is a weight of the model (`add_weight`, name `logits_bias`).
`cache` reaches `call` as the caller's list and is filled in place.
"""
import math

from keras import ops

from conformance.core import trace
from tf_impl._layer import Model
from tf_impl.activations import Dropout
from tf_impl.blocks import DecoderLayer, EncoderLayer, cache_length, encoder_memory, norm_for
from tf_impl.embeddings import PositionEmbedding, TokenEmbedding
from tf_impl.linear import Linear


class Bart(Model):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.logits_bias = self.add_weight(shape=(cfg.vocab_size,), name="logits_bias") if cfg.logits_bias else None
        self.token_embedding = TokenEmbedding(cfg, name="token_embedding", dtype=dtype)
        self.dropout = Dropout(cfg, name="dropout", dtype=dtype)
        self.encoder_position = PositionEmbedding(cfg, name="encoder_position", dtype=dtype)
        self.encoder_embedding_norm = norm_for(cfg, name="encoder_embedding_norm", dtype=dtype)
        self.encoder = [EncoderLayer(cfg, name=f"encoder.{i}", dtype=dtype) for i in range(cfg.num_layers)]
        self.decoder_position = PositionEmbedding(cfg, name="decoder_position", dtype=dtype)
        self.decoder_embedding_norm = norm_for(cfg, name="decoder_embedding_norm", dtype=dtype)
        self.decoder = [DecoderLayer(cfg, name=f"decoder.{i}", dtype=dtype) for i in range(cfg.num_decoder_layers)]
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                                                              name="lm_head", dtype=dtype)

    def embed(self, ids, position, norm, past=0):
        """ids (B, T), the positions past .. past + T - 1 -> norm(E[ids] + P[position + offset]) (B, T, D)."""
        x = self.token_embedding(ids)                                               # (B, T, D)
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.cfg.d_model)
        positions = past + self.cfg.position_offset + ops.arange(ops.shape(ids)[1])[None, :]  # (1, T)
        return self.dropout(norm(x + position(positions)))                          # (B, T, D)

    def encode(self, input_ids, attention_mask=None):
        """input_ids, attention_mask: (B, S) -> memory (B, S, D), the last encoder layer's output."""
        h = self.embed(input_ids, self.encoder_position, self.encoder_embedding_norm)  # (B, S, D)
        for layer in self.encoder:
            h = layer(h, mask=attention_mask)                                       # (B, S, D)
        return h

    def decode(self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache=None):
        """decoder_input_ids: (B, T) after `past` cached ones; memory (B, S, D), None once the cache holds its
        keys and values -> (B, T, D)."""
        h = self.embed(decoder_input_ids, self.decoder_position, self.decoder_embedding_norm,
                       cache_length(cache))                                         # (B, T, D)
        for i, layer in enumerate(self.decoder):
            h = layer(h, memory, mask=decoder_attention_mask, memory_mask=attention_mask,
                      cache=None if cache is None else cache[i])                    # (B, T, D)
        return h

    def call(self, input_ids=None, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None,
             cache=None):
        """input_ids, attention_mask: (B, S) source; decoder_*: (B, T) target (mask: (B, past + T)).

        `cache`: a list, filled on the first call (which encodes the source) with one dict per decoder
        layer; later calls pass only `decoder_input_ids`, the new tokens.
        """
        tap = trace.tap_for(self)
        memory, attention_mask = encoder_memory(self, input_ids, attention_mask, decoder_input_ids,
                                                decoder_attention_mask, cache)     # (B, S, D) or None
        h = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask, cache)  # (B, T, D)
        logits = (ops.matmul(h, ops.transpose(self.token_embedding.table)) if self.lm_head is None
                  else self.lm_head(h))                                             # (B, T, V)
        if self.logits_bias is not None:
            logits = logits + self.logits_bias                                      # (B, T, V)
        out = {"logits": tap("logits", logits), "last_hidden_state": h}
        if memory is not None:
            out["encoder_last_hidden_state"] = memory
        return out
