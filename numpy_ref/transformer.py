"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017).

    src = E[src_ids] sqrt(D) + PE             tgt = E[tgt_ids] sqrt(D) + PE
    memory = Encoder(src)                     (post-norm layers, ReLU feed-forward)
    h = Decoder(tgt, memory)                  (causal self-attn, cross-attn, feed-forward)
    logits = h E^T                            (output projection tied to the embeddings)

Scaling the embeddings by sqrt(D) brings table entries initialised at about 1/sqrt(D)
to unit scale, comparable with the sinusoidal encoding they are added to. With
`share_embeddings` source and target use one table (a joint BPE vocabulary);
with `tie_embeddings` the output projection is that table transposed.

FLOPs: the embedding scale and position adds on both sides, L encoder layers on the S source
positions, L' decoder layers on the T target positions (cross-attention on T x S pairs), the
output projection's 2 B T D V.
"""
import math

import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import INDEX, PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout
from numpy_ref.blocks import DecoderLayer, EncoderLayer
from numpy_ref.embeddings import (PositionEmbedding, SinusoidalPositionalEncoding, TokenEmbedding,
                                  tied_logits_backward)
from numpy_ref.linear import Linear


class Transformer(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.source_embedding = TokenEmbedding(cfg)
        self.target_embedding = None if cfg.share_embeddings else TokenEmbedding(cfg)
        self.position = (SinusoidalPositionalEncoding(cfg) if cfg.position == "sinusoidal"
                         else PositionEmbedding(cfg))
        self.dropout = Dropout(cfg)
        self.encoder = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
        self.decoder = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)]
        self.output_projection = (None if cfg.tie_embeddings
                                  else Linear(cfg.d_model, cfg.vocab_size, use_bias=False))

    def embed(self, ids, table):
        x = table(ids)                                                        # (B, T, D)
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.cfg.d_model)
        positions = np.arange(ids.shape[1])[None, :]                          # (1, T)
        return self.dropout(x + self.position(positions).astype(x.dtype))     # (B, T, D)

    def embed_backward(self, grad, table):
        """`embed` in reverse. The scale is linear: x * sqrt(D) scales the table's gradient
        by sqrt(D) too. The position term gets the same gradient, summed over the batch;
        the sinusoidal encoding, a constant, takes nothing."""
        d_x = self.dropout.backward(grad)                                     # (B, T, D)
        self.position.backward(autograd.sum_to_shape(d_x, (1, *d_x.shape[1:])))  # (1, T, D)
        if self.cfg.scale_embeddings:
            d_x = d_x * math.sqrt(self.cfg.d_model)
        table.backward(d_x)

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None):
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
            logits = h @ target_table.table.T                                 # (B, T, V)
        else:
            logits = self.output_projection(h)                                # (B, T, V)
        return {"logits": tap("logits", logits), "last_hidden_state": h,
                "encoder_last_hidden_state": memory}

    def flops(self, input_ids, decoder_input_ids, **_):
        (B, S), T, D = input_ids, decoder_input_ids[1], self.cfg.d_model
        for side, n in (("source", S), ("target", T)):
            if self.cfg.scale_embeddings:
                yield Op(f"{side}.embedding_scale", "elementwise", B * n * D * PER_ELEMENT["embedding_scale"])
            yield Op(f"{side}.position_add", "elementwise", B * n * D * PER_ELEMENT["embedding_add"])
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.flops((B, S, D)))
        for i, layer in enumerate(self.decoder):
            yield from scoped(f"decoder.{i}", layer.flops((B, T, D), (B, S, D)))
        yield Op("logits", "projection", 2 * B * T * D * self.cfg.vocab_size)

    def saved(self, f, input_ids, decoder_input_ids, **_):
        (B, S), T, D = input_ids, decoder_input_ids[1], self.cfg.d_model
        yield Saved("", "source and target ids", B * (S + T) * INDEX)
        yield from scoped("dropout", self.dropout.saved(f, (B, S + T, D)))
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
                   + [layer.peak(f, live, (B, T, D), (B, S, D)) for layer in self.decoder] + [head])

    def backward(self, grad):
        """grad: {output key: dL/d output}. The encoder's output (memory) feeds every decoder
        layer's cross-attention: its gradient is the sum over decoder layers."""
        saved = autograd.saved(self)
        target_table = self.target_embedding or self.source_embedding
        h = saved.output["last_hidden_state"]                                 # (B, T, D)
        d_logits = saved.tap("logits", grad["logits"])                        # (B, T, V)
        if self.output_projection is None:
            d_h, d_table = tied_logits_backward(d_logits, h, target_table.table)
            autograd.accumulate(target_table, "table", d_table)
        else:
            d_h = self.output_projection.backward(d_logits)                   # (B, T, D)
        d_h = d_h + grad["last_hidden_state"]
        d_memory = grad["encoder_last_hidden_state"]                          # (B, S, D)
        for layer in reversed(self.decoder):
            d_h, d_layer_memory = layer.backward(d_h)
            d_memory = d_memory + d_layer_memory
        self.embed_backward(d_h, target_table)
        for layer in reversed(self.encoder):
            d_memory = layer.backward(d_memory)                               # (B, S, D)
        self.embed_backward(d_memory, self.source_embedding)
