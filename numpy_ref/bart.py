"""BART (Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training"): a post-norm
encoder-decoder, the 2017 Transformer's layout with GPT's learned positions and GELU.

    src = LN_emb(E[src_ids] + P_enc[2 .. S + 1])      tgt = LN_emb'(E[tgt_ids] + P_dec[2 .. T + 1])
    memory = Encoder(src)                             (post-norm: LN(x + Attention(x)), LN(x + FFN(x)))
    h = Decoder(tgt, memory)                          (causal self-attn, cross-attn, feed-forward)
    logits = h E^T + b                                (tied to the token table; b: final_logits_bias)

What is BART's own, each a config field:
- learned positions read from row p + 2 (`position_offset`): fairseq kept two rows for the padding
  index and counted from there; the table has 1026 rows for 1024 positions;
- a layer norm on the embeddings' sum in each stack (`encoder_embedding_norm`, `decoder_embedding_norm`,
  transformers' `layernorm_embedding`); no final norm after the stacks (post-norm ends normalized);
- exact GELU, epsilon 1e-5 (torch's LayerNorm default, fixed in transformers' BART), biases
  everywhere, the embeddings scaled by sqrt(D) only if `scale_embeddings` (mBART; not BART);
- `final_logits_bias`: transformers keeps a (1, V) buffer, zeros in bart-base and bart-large and
  never trained (a buffer takes no gradient), so `logits_bias` is off unless a checkpoint's is not zero.

With a cache (`conformance.spec.family.Decoding`) the first call runs the encoder once and each
decoder layer's dict keeps its growing self-attention keys and values, its cross-attention's
(computed once) and the source mask; later calls bring only the new decoder tokens, whose
positions continue at past + 2.

FLOPs: the position adds and embedding norms of both sides, L encoder layers on S positions, L'
decoder layers on T (cross-attention on T x S pairs), the head's 2 B T D V and its bias.
"""
import math

import numpy as np

from conformance.core import trace
from conformance.core.costs import INDEX, PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout
from numpy_ref.blocks import DecoderLayer, EncoderLayer, cache_length, encoder_memory, norm_for
from numpy_ref.embeddings import PositionEmbedding, TokenEmbedding, tied_logits_backward
from numpy_ref.linear import Linear


class Bart(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.logits_bias = self.param("logits_bias", cfg.vocab_size) if cfg.logits_bias else None
        self.token_embedding = TokenEmbedding(cfg)
        self.dropout = Dropout(cfg)
        self.encoder_position = PositionEmbedding(cfg)
        self.encoder_embedding_norm = norm_for(cfg)
        self.encoder = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
        self.decoder_position = PositionEmbedding(cfg)
        self.decoder_embedding_norm = norm_for(cfg)
        self.decoder = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)]
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, use_bias=False)

    def embed(self, ids, position, norm, past=0):
        """ids (B, T), the positions past .. past + T - 1 -> norm(E[ids] + P[position + offset]) (B, T, D)."""
        x = self.token_embedding(ids)                                               # (B, T, D)
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.cfg.d_model)
        positions = past + self.cfg.position_offset + np.arange(ids.shape[1])[None, :]  # (1, T)
        return self.dropout(norm(x + position(positions)))                          # (B, T, D)

    def embed_backward(self, grad, position, norm):
        """`embed` in reverse: the norm, then the sum's two terms; the positions' gradient summed over B."""
        d_x = norm.backward(self.dropout.backward(grad))                            # (B, T, D)
        position.backward(autograd.sum_to_shape(d_x, (1, *d_x.shape[1:])))          # (1, T, D)
        self.token_embedding.backward(d_x * math.sqrt(self.cfg.d_model) if self.cfg.scale_embeddings else d_x)

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

    def forward(self, input_ids=None, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None,
                cache=None):
        """input_ids, attention_mask: (B, S) source; decoder_*: (B, T) target (mask: (B, past + T)).

        `cache`: a list, filled on the first call (which encodes the source) with one dict per decoder
        layer; later calls pass only `decoder_input_ids`, the new tokens.
        """
        tap = trace.tap_for(self)
        memory, attention_mask = encoder_memory(self, input_ids, attention_mask, decoder_input_ids,
                                                decoder_attention_mask, cache)     # (B, S, D) or None
        h = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask, cache)  # (B, T, D)
        logits = h @ self.token_embedding.table.T if self.lm_head is None else self.lm_head(h)  # (B, T, V)
        if self.logits_bias is not None:
            logits = logits + self.logits_bias                                      # (B, T, V)
        out = {"logits": tap("logits", logits), "last_hidden_state": h}
        if memory is not None:
            out["encoder_last_hidden_state"] = memory
        return out

    def flops(self, input_ids, decoder_input_ids, **_):
        (B, S), T, D = input_ids, decoder_input_ids[1], self.cfg.d_model
        for side, n in (("encoder", S), ("decoder", T)):
            if self.cfg.scale_embeddings:
                yield Op(f"{side}.embedding_scale", "elementwise", B * n * D * PER_ELEMENT["embedding_scale"])
            yield Op(f"{side}.position_add", "elementwise", B * n * D * PER_ELEMENT["embedding_add"])
            yield from scoped(f"{side}_embedding_norm", getattr(self, f"{side}_embedding_norm").flops((B, n, D)))
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.flops((B, S, D)))
        for i, layer in enumerate(self.decoder):
            yield from scoped(f"decoder.{i}", layer.flops((B, T, D), (B, S, D)))
        if self.lm_head is None:
            yield Op("logits", "projection", 2 * B * T * D * self.cfg.vocab_size)  # the tied table, transposed
        else:
            yield from scoped("lm_head", self.lm_head.flops((B, T, D)))
        if self.logits_bias is not None:
            yield Op("logits.bias", "elementwise", B * T * self.cfg.vocab_size * PER_ELEMENT["bias"])

    def saved(self, f, input_ids, decoder_input_ids, **_):
        (B, S), T, D = input_ids, decoder_input_ids[1], self.cfg.d_model
        yield Saved("", "source and target ids, and their positions", (B + 1) * (S + T) * INDEX)
        for side, n in (("encoder", S), ("decoder", T)):
            yield from scoped(f"{side}_embedding_norm", getattr(self, f"{side}_embedding_norm").saved(f, (B, n, D)))
            yield from scoped("dropout", self.dropout.saved(f, (B, n, D)))
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.saved(f, (B, S, D)))
        yield Saved("", "encoder output (every cross-attention's k/v input)", B * S * D * f)
        for i, layer in enumerate(self.decoder):
            yield from scoped(f"decoder.{i}", layer.saved(f, (B, T, D), (B, S, D)))
        yield Saved("", "logits input", B * T * D * f)

    def peak(self, f, live, input_ids, decoder_input_ids, **_):
        (B, S), T, D = input_ids, decoder_input_ids[1], self.cfg.d_model
        head = B * T * D * f + B * T * self.cfg.vocab_size * f
        return max([layer.peak(f, live, (B, S, D)) for layer in self.encoder]
                   + [layer.peak(f, live, (B, T, D), (B, S, D)) + B * S * D * f for layer in self.decoder] + [head])

    def backward(self, grad):
        """grad: {output key: dL/d output}. The encoder's output feeds every decoder layer's cross-attention:
        its gradient is the sum over them; the token table gets the lookups' and the tied head's."""
        saved = autograd.saved(self)
        h = saved.output["last_hidden_state"]                                       # (B, T, D)
        d_logits = saved.tap("logits", grad["logits"])                              # (B, T, V)
        if self.logits_bias is not None:
            autograd.accumulate(self, "logits_bias", d_logits.reshape(-1, d_logits.shape[-1]).sum(axis=0))
        if self.lm_head is None:
            d_h, d_table = tied_logits_backward(d_logits, h, self.token_embedding.table)
            autograd.accumulate(self.token_embedding, "table", d_table)
        else:
            d_h = self.lm_head.backward(d_logits)                                   # (B, T, D)
        d_h = d_h + grad["last_hidden_state"]
        d_memory = grad["encoder_last_hidden_state"]                                # (B, S, D)
        for layer in reversed(self.decoder):
            d_h, d_layer_memory = layer.backward(d_h)                               # (B, T, D), (B, S, D)
            d_memory = d_memory + d_layer_memory
        self.embed_backward(d_h, self.decoder_position, self.decoder_embedding_norm)
        for layer in reversed(self.encoder):
            d_memory = layer.backward(d_memory)                                     # (B, S, D)
        self.embed_backward(d_memory, self.encoder_position, self.encoder_embedding_norm)
