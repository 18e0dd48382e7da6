"""Mirrors `numpy_ref.bert`.

Differs: the encoder is an `nn.ModuleList` (ALBERT's shared layer is one module called L times);
positions and default token types are created on `input_ids.device`; the tied MLM decoder reads
the token `nn.Embedding.weight`. The check that RoBERTa's padding sits at the ends of each row
reads the ids' values, so it is skipped while `torch.export` traces (as the ids' range check is).
"""
import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Activation, Dropout
from torch_impl.blocks import EncoderLayer
from torch_impl.embeddings import PositionEmbedding, SegmentEmbedding, TokenEmbedding
from torch_impl.linear import Linear
from torch_impl.normalization import LayerNorm


def padding_positions(input_ids, pad):
    """RoBERTa's positions, from the ids alone: the real tokens of a row are numbered pad + 1,
    pad + 2, ... in order and every pad sits at `pad` (transformers' create_position_ids_from_input_ids)."""
    real = (input_ids != pad).to(input_ids.dtype)                                # (B, T)
    return torch.cumsum(real, dim=1) * real + pad                                # (B, T)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        E = cfg.embedding_size or cfg.d_model
        self.pad = cfg.pad_token_id if cfg.pad_positions else None
        self.token = TokenEmbedding(cfg, E)
        self.position = PositionEmbedding(cfg, E)
        self.segment = SegmentEmbedding(cfg, E) if cfg.type_vocab_size else None
        self.norm = LayerNorm(cfg, E)
        self.dropout = Dropout(cfg)
        self.projection = Linear(E, cfg.d_model) if cfg.embedding_size else None

    def forward(self, input_ids, token_type_ids=None):
        T = input_ids.shape[1]
        if self.pad is None:
            positions = torch.arange(T, device=input_ids.device)[None, :]        # (1, T)
        else:
            positions = padding_positions(input_ids, self.pad)                   # (B, T)
        x = self.token(input_ids) + self.position(positions)                     # (B, T, E)
        if self.segment is not None:
            x = x + self.segment(token_type_ids)                                 # (B, T, E)
        x = self.dropout(self.norm(x))                                           # (B, T, E)
        if self.projection is not None:
            x = self.projection(x)                                               # (B, T, D)
        return trace.tap_for(self)("output", x)                                  # (B, T, D)


class MaskedLMHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        E = cfg.embedding_size or cfg.d_model
        self.transform = Linear(cfg.d_model, E)
        self.activation = Activation(cfg.replace(activation=cfg.mlm_activation or cfg.activation))
        self.norm = LayerNorm(cfg, E)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h, table):
        h = self.norm(self.activation(self.transform(h)))   # (B, T, E)
        return h @ table.T + self.bias                       # (B, T, V)


class DiscriminatorHead(nn.Module):
    """ELECTRA's replaced-token detector: one logit a position, act(h W1 + b1) w2 + b2."""

    def __init__(self, cfg):
        super().__init__()
        self.transform = Linear(cfg.d_model, cfg.d_model)
        self.activation = Activation(cfg)
        self.prediction = Linear(cfg.d_model, 1)

    def forward(self, h):
        h = self.activation(self.transform(h))               # (B, T, D)
        return self.prediction(h)[..., 0]                        # (B, T)


class Bert(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layer_groups or cfg.num_layers))
        pooled = cfg.head == "classification" or (cfg.head == "none" and cfg.pooler)
        self.pooler = Linear(cfg.d_model, cfg.d_model) if pooled else None
        self.mlm = MaskedLMHead(cfg) if cfg.head == "mlm" else None
        labels = cfg.head in ("classification", "token_classification")
        self.classifier = Linear(cfg.d_model, cfg.num_labels) if labels else None
        self.qa = Linear(cfg.d_model, 2) if cfg.head == "qa" else None
        self.discriminator = DiscriminatorHead(cfg) if cfg.head == "discriminator" else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids, attention_mask (1 = attend), token_type_ids: (B, T)."""
        cfg = self.cfg
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask), checks.spec(token_type_ids))
        if token_type_ids is not None and not cfg.type_vocab_size:
            checks.no_segments("token_type_ids")
        if cfg.pad_positions and not torch.compiler.is_exporting():  # a traced id has no value to check
            checks.padding_at_the_ends("input_ids", input_ids.detach().cpu().numpy(), cfg.pad_token_id)
        if token_type_ids is None and cfg.type_vocab_size:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids)             # (B, T, D)
        for i in range(cfg.num_layers):
            h = self.encoder[cfg.layer_group(i)](h, mask=attention_mask)  # (B, T, D)
        return self.head(h)

    def head(self, h):
        """After the last layer: the pooler and the task head. A streamed run calls it alone
        (`conformance.report.stream`)."""
        cfg = self.cfg
        tap = trace.tap_for(self)
        out = {"last_hidden_state": h}
        if self.pooler is not None:
            out["pooled_output"] = tap("pooled", torch.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.mlm is not None:
            out["logits"] = tap("logits", self.mlm(h, self.embeddings.token.weight))  # (B, T, V)
        if self.classifier is not None:
            labelled = out["pooled_output"] if cfg.head == "classification" else h   # (B, D) or (B, T, D)
            out["logits"] = tap("logits", self.classifier(labelled))  # (B, num_labels) or (B, T, num_labels)
        if self.qa is not None:
            span = self.qa(h)                                                      # (B, T, 2)
            out["start_logits"] = tap("start_logits", span[..., 0])               # (B, T)
            out["end_logits"] = tap("end_logits", span[..., 1])                   # (B, T)
        if self.discriminator is not None:
            out["logits"] = tap("logits", self.discriminator(h))                  # (B, T)
        return out
