"""BERT (Devlin et al. 2018): a post-norm encoder over token + position + segment
embeddings, with a pooler and task heads.

    h0 = LN(E_token[ids] + E_position[0..T-1] + E_segment[types])
    h_l = EncoderLayer_l(h_{l-1}),  l = 1..L           (post-norm, exact GELU, eps 1e-12)
    pooled = tanh(h_L[:, 0] W_pool + b_pool)           (the [CLS] position)

Heads (`cfg.head`): "none" returns last_hidden_state and pooled_output; "mlm" maps
every position back to the vocabulary through a dense + GELU + LN transform and the
token table transposed (tied decoder) plus a bias; "classification" is a linear layer
on the pooled output; "qa" gives each position a start and an end logit.
"""
import numpy as np

from conformance import checks, trace
from numpy_ref._module import Module
from numpy_ref.activations import Activation, Dropout
from numpy_ref.blocks import EncoderLayer
from numpy_ref.embeddings import PositionEmbedding, SegmentEmbedding, TokenEmbedding
from numpy_ref.linear import Linear
from numpy_ref.normalization import LayerNorm


class BertEmbeddings(Module):
    def __init__(self, cfg):
        super().__init__()
        self.token = TokenEmbedding(cfg)
        self.position = PositionEmbedding(cfg)
        self.segment = SegmentEmbedding(cfg)
        self.norm = LayerNorm(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        positions = np.arange(T)[None, :]                                        # (1, T)
        x = self.token(input_ids) + self.position(positions) + self.segment(token_type_ids)  # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(self.norm(x)))         # (B, T, D)


class MaskedLMHead(Module):
    def __init__(self, cfg):
        super().__init__()
        self.transform = Linear(cfg.d_model, cfg.d_model)
        self.activation = Activation(cfg)
        self.norm = LayerNorm(cfg)
        self.bias = self.param("bias", cfg.vocab_size)

    def forward(self, h, table):
        h = self.norm(self.activation(self.transform(h)))   # (B, T, D)
        return h @ table.T + self.bias                       # (B, T, V)


class Bert(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
        self.pooler = Linear(cfg.d_model, cfg.d_model) if cfg.head in ("none", "classification") else None
        self.mlm = MaskedLMHead(cfg) if cfg.head == "mlm" else None
        self.classifier = Linear(cfg.d_model, cfg.num_labels) if cfg.head == "classification" else None
        self.qa = Linear(cfg.d_model, 2) if cfg.head == "qa" else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids, attention_mask (1 = attend), token_type_ids: (B, T)."""
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask), checks.spec(token_type_ids))
        tap = trace.tap_for(self)
        if token_type_ids is None:
            token_type_ids = np.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids)             # (B, T, D)
        for layer in self.encoder:
            h = layer(h, mask=attention_mask)                      # (B, T, D)
        out = {"last_hidden_state": h}
        if self.pooler is not None:
            out["pooled_output"] = tap("pooled", np.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.mlm is not None:
            out["logits"] = tap("logits", self.mlm(h, self.embeddings.token.table))  # (B, T, V)
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(out["pooled_output"]))  # (B, num_labels)
        if self.qa is not None:
            span = self.qa(h)                                                      # (B, T, 2)
            out["start_logits"] = tap("start_logits", span[..., 0])               # (B, T)
            out["end_logits"] = tap("end_logits", span[..., 1])                   # (B, T)
        return out
