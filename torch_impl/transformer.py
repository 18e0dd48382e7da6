"""Mirrors `numpy_ref.transformer`.

Differs: encoder and decoder are `nn.ModuleList`s; positions are created on the ids'
device; the tied projection reads the token `nn.Embedding.weight`.
"""
import math

import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Dropout
from torch_impl.blocks import DecoderLayer, EncoderLayer
from torch_impl.embeddings import PositionEmbedding, SinusoidalPositionalEncoding, TokenEmbedding
from torch_impl.linear import Linear


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.source_embedding = TokenEmbedding(cfg)
        self.target_embedding = None if cfg.share_embeddings else TokenEmbedding(cfg)
        self.position = (SinusoidalPositionalEncoding(cfg) if cfg.position == "sinusoidal"
                         else PositionEmbedding(cfg))
        self.dropout = Dropout(cfg)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.output_projection = (None if cfg.tie_embeddings
                                  else Linear(cfg.d_model, cfg.vocab_size, use_bias=False))

    def embed(self, ids, table):
        x = table(ids)                                                        # (B, T, D)
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.cfg.d_model)
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]    # (1, T)
        return self.dropout(x + self.position(positions).to(x.dtype))         # (B, T, D)

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
            logits = h @ target_table.weight.T                                # (B, T, V)
        else:
            logits = self.output_projection(h)                                # (B, T, V)
        return {"logits": tap("logits", logits), "last_hidden_state": h,
                "encoder_last_hidden_state": memory}
