"""Mirrors `numpy_ref.gpt2`.

Differs: the blocks are an `nn.ModuleList`; positions are created on `input_ids.device`;
the tied head reads the token `nn.Embedding.weight`. The cache holds torch tensors.
"""
import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Dropout
from torch_impl.blocks import EncoderLayer, cache_length
from torch_impl.embeddings import PositionEmbedding, TokenEmbedding
from torch_impl.normalization import LayerNorm


class GPT2Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.token = TokenEmbedding(cfg)
        self.position = PositionEmbedding(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids, past):
        T = input_ids.shape[1]
        positions = past + torch.arange(T, device=input_ids.device)[None, :]  # (1, T)
        x = self.token(input_ids) + self.position(positions)                  # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(x))


class GPT2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = GPT2Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = LayerNorm(cfg)

    def forward(self, input_ids, attention_mask=None, cache=None):
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
        logits = h @ self.embeddings.token.weight.T                           # (B, T, V)
        return {"logits": trace.tap_for(self)("logits", logits), "last_hidden_state": h}
