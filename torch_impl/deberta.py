"""Mirrors `numpy_ref.deberta`.

Differs: the encoder is an `nn.ModuleList`; the relative table's rows and the padding factor are
made on `input_ids.device`.
"""
import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Dropout
from torch_impl.blocks import residual
from torch_impl.disentangled import DisentangledAttention
from torch_impl.embeddings import RelativeEmbedding, TokenEmbedding
from torch_impl.feed_forward import FeedForward
from torch_impl.linear import Linear
from torch_impl.normalization import LayerNorm


class DebertaEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.token = TokenEmbedding(cfg)
        self.norm = LayerNorm(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids, attention_mask=None):
        x = self.norm(self.token(input_ids))                                     # (B, T, D)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)                        # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(x))                    # (B, T, D)


class DebertaLayer(nn.Module):
    """BERT's post-norm layer around disentangled attention: LN(x + Attn(x, R)), LN(x + FFN(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.attention = DisentangledAttention(cfg)
        self.attention_norm = LayerNorm(cfg)
        self.attention_dropout = Dropout(cfg)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_norm = LayerNorm(cfg)
        self.feed_forward_dropout = Dropout(cfg)

    def forward(self, x, rel, mask=None):
        """x: (B, T, D)  rel: (2k, D)  mask: (B, T) padding, True = attend."""
        tap = trace.tap_for(self)
        x = residual(x, lambda h: self.attention(h, rel, mask=mask), self.attention_norm,
                     self.attention_dropout, False)                                          # (B, T, D)
        x = residual(x, self.feed_forward, self.feed_forward_norm, self.feed_forward_dropout, False)  # (B, T, D)
        return tap("output", x)


class Deberta(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = DebertaEmbeddings(cfg)
        self.relative = RelativeEmbedding(cfg)
        self.relative_norm = LayerNorm(cfg)
        self.encoder = nn.ModuleList(DebertaLayer(cfg) for _ in range(cfg.num_layers))
        self.classifier = Linear(cfg.d_model, cfg.num_labels) if cfg.head == "token_classification" else None

    def forward(self, input_ids, attention_mask=None):
        """input_ids, attention_mask (1 = attend): (B, T)."""
        cfg = self.cfg
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask))
        tap = trace.tap_for(self)
        h = self.embeddings(input_ids, attention_mask)             # (B, T, D)
        rows = torch.arange(2 * cfg.relative_span, device=input_ids.device)  # (2k,) every row of the relative table
        rel = self.relative_norm(self.relative(rows))              # (2k, D), normed once for every layer
        for layer in self.encoder:
            h = layer(h, rel, mask=attention_mask)                 # (B, T, D)
        out = {"last_hidden_state": h}
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(h))      # (B, T, num_labels)
        return out
