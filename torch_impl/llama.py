"""Mirrors `numpy_ref.llama`.

Differs: the layers are an `nn.ModuleList`; the tied head reads the token `nn.Embedding.weight`;
the embedding scale is a tensor of the weights' dtype. The cache holds torch tensors.
"""
import math

import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Dropout, softcap
from torch_impl.blocks import EncoderLayer, cache_length, norm_for
from torch_impl.embeddings import TokenEmbedding
from torch_impl.linear import Linear


class LlamaEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else None
        self.token = TokenEmbedding(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids):
        x = self.token(input_ids)                                                # (B, T, D)
        if self.scale is not None:
            x = x * torch.tensor(self.scale, dtype=x.dtype)  # Gemma: sqrt(D) rounded to the weights' dtype first
        return trace.tap_for(self)("output", self.dropout(x))                   # (B, T, D)


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = LlamaEmbeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg, sliding=cfg.sliding(i)) for i in range(cfg.num_layers))
        self.final_norm = norm_for(cfg)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, use_bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
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
        logits = h @ self.embeddings.token.weight.T if self.lm_head is None else self.lm_head(h)  # (B, T, V)
        if self.cfg.final_logit_softcap is not None:
            logits = softcap(tap("uncapped_logits", logits), self.cfg.final_logit_softcap)   # (B, T, V)
        return {"logits": tap("logits", logits), "last_hidden_state": h}
