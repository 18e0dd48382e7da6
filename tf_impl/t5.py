"""Mirrors `numpy_ref.t5`.

Differs: `T5` is a `keras.Model`; its stacks are lists (the decoder's empty for the encoder alone);
the tied head is `keras.ops.matmul` with the token table transposed. `cache` reaches `call` as the
caller's list and is filled in place.
"""
from keras import ops

from conformance.core import trace
from tf_impl._layer import Model
from tf_impl.activations import Dropout
from tf_impl.blocks import DecoderLayer, EncoderLayer, cache_length, encoder_memory, norm_for
from tf_impl.embeddings import TokenEmbedding
from tf_impl.linear import Linear
from tf_impl.relative_position import RelativePositionBias


class T5(Model):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        decoder = cfg.head != "encoder"
        self.token_embedding = TokenEmbedding(cfg, name="token_embedding", dtype=dtype)
        self.dropout = Dropout(cfg, name="dropout", dtype=dtype)
        self.encoder_position = RelativePositionBias(cfg, bidirectional=True, name="encoder_position", dtype=dtype)
        self.encoder = [EncoderLayer(cfg, name=f"encoder.{i}", dtype=dtype) for i in range(cfg.num_layers)]
        self.encoder_norm = norm_for(cfg, name="encoder_norm", dtype=dtype)
        self.decoder_position = (RelativePositionBias(cfg, bidirectional=False, name="decoder_position", dtype=dtype)
                                 if decoder else None)
        self.decoder = [DecoderLayer(cfg, name=f"decoder.{i}", dtype=dtype)
                        for i in range(cfg.num_decoder_layers) if decoder]
        self.decoder_norm = norm_for(cfg, name="decoder_norm", dtype=dtype) if decoder else None
        self.lm_head = (Linear(cfg.d_model, cfg.vocab_size, use_bias=False, name="lm_head", dtype=dtype)
                        if decoder and not cfg.tie_embeddings else None)

    def encode(self, input_ids, attention_mask=None):
        """input_ids, attention_mask: (B, S) -> memory (B, S, D), after the encoder's final norm."""
        positions = ops.arange(ops.shape(input_ids)[1])                             # (S,)
        bias = self.encoder_position(positions, positions)                          # (1, H, S, S)
        h = self.dropout(self.token_embedding(input_ids))                           # (B, S, D)
        for layer in self.encoder:
            h = layer(h, mask=attention_mask, position_bias=bias)                   # (B, S, D)
        return self.dropout(self.encoder_norm(h))                                   # (B, S, D)

    def decode(self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache=None):
        """decoder_input_ids: (B, T) after `past` cached ones; memory (B, S, D), None once the cache holds its
        keys and values -> (B, T, D), after the decoder's final norm."""
        past, T = cache_length(cache), ops.shape(decoder_input_ids)[1]
        bias = self.decoder_position(ops.arange(past, past + T), ops.arange(past + T))  # (1, H, T, past + T)
        h = self.dropout(self.token_embedding(decoder_input_ids))                   # (B, T, D)
        for i, layer in enumerate(self.decoder):
            h = layer(h, memory, mask=decoder_attention_mask, memory_mask=attention_mask,
                      cache=None if cache is None else cache[i], position_bias=bias)  # (B, T, D)
        return self.dropout(self.decoder_norm(h))                                   # (B, T, D)

    def call(self, input_ids=None, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None,
             cache=None):
        """input_ids, attention_mask: (B, S) source; decoder_*: (B, T) target (mask: (B, past + T)).

        `cache`: a list, filled on the first call (which encodes the source) with one dict per decoder
        layer; later calls pass only `decoder_input_ids`, the new tokens.
        """
        tap = trace.tap_for(self)
        memory, attention_mask = encoder_memory(self, input_ids, attention_mask, decoder_input_ids,
                                                decoder_attention_mask, cache)     # (B, S, D) or None
        if self.cfg.head == "encoder":
            return {"last_hidden_state": memory}
        h = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask, cache)  # (B, T, D)
        head_input = h * self.cfg.d_model ** -0.5 if self.cfg.scale_logits else h  # T5 1.0: the tied head rescaled
        logits = (ops.matmul(head_input, ops.transpose(self.token_embedding.table)) if self.lm_head is None
                  else self.lm_head(head_input))                                    # (B, T, V)
        out = {"logits": tap("logits", logits), "last_hidden_state": h}
        if memory is not None:
            out["encoder_last_hidden_state"] = memory
        return out
