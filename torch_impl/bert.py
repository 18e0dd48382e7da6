"""Mirrors `numpy_ref.bert`.

Differs: the encoder is an `nn.ModuleList`; positions and default token types are
created on `input_ids.device`; the tied MLM decoder reads the token `nn.Embedding.weight`.
"""
import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Activation, Dropout
from torch_impl.blocks import EncoderLayer
from torch_impl.embeddings import PositionEmbedding, SegmentEmbedding, TokenEmbedding
from torch_impl.linear import Linear
from torch_impl.normalization import LayerNorm


class BertEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.token = TokenEmbedding(cfg)
        self.position = PositionEmbedding(cfg)
        self.segment = SegmentEmbedding(cfg)
        self.norm = LayerNorm(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)[None, :]            # (1, T)
        x = self.token(input_ids) + self.position(positions) + self.segment(token_type_ids)  # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(self.norm(x)))         # (B, T, D)


class MaskedLMHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.transform = Linear(cfg.d_model, cfg.d_model)
        self.activation = Activation(cfg)
        self.norm = LayerNorm(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h, table):
        h = self.norm(self.activation(self.transform(h)))   # (B, T, D)
        return h @ table.T + self.bias                       # (B, T, V)


class Bert(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.pooler = Linear(cfg.d_model, cfg.d_model) if cfg.head in ("none", "classification") else None
        self.mlm = MaskedLMHead(cfg) if cfg.head == "mlm" else None
        self.classifier = Linear(cfg.d_model, cfg.num_labels) if cfg.head == "classification" else None
        self.qa = Linear(cfg.d_model, 2) if cfg.head == "qa" else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids, attention_mask (1 = attend), token_type_ids: (B, T)."""
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask), checks.spec(token_type_ids))
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids)             # (B, T, D)
        for layer in self.encoder:
            h = layer(h, mask=attention_mask)                      # (B, T, D)
        return self.head(h)

    def head(self, h):
        """After the last layer: the pooler and the task head. A streamed run calls it alone
        (`conformance.report.stream`)."""
        tap = trace.tap_for(self)
        out = {"last_hidden_state": h}
        if self.pooler is not None:
            out["pooled_output"] = tap("pooled", torch.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.mlm is not None:
            out["logits"] = tap("logits", self.mlm(h, self.embeddings.token.weight))  # (B, T, V)
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(out["pooled_output"]))  # (B, num_labels)
        if self.qa is not None:
            span = self.qa(h)                                                      # (B, T, 2)
            out["start_logits"] = tap("start_logits", span[..., 0])               # (B, T)
            out["end_logits"] = tap("end_logits", span[..., 1])                   # (B, T)
        return out
