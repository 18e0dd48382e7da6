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

from conformance.core import checks, trace
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Activation, Dropout
from numpy_ref.blocks import EncoderLayer
from numpy_ref.embeddings import PositionEmbedding, SegmentEmbedding, TokenEmbedding, tied_logits_backward
from numpy_ref.linear import Linear
from numpy_ref.normalization import LayerNorm


def tanh_backward(grad, y):
    """d tanh(u) / du = 1 - tanh(u)^2, written with the output y = tanh(u): nothing else is kept."""
    return grad * (1.0 - y**2)


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

    def backward(self, grad):
        """A sum of three lookups: each table gets the same gradient, the position table's summed over B."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                         # (B, T, D)
        d_x = self.norm.backward(self.dropout.backward(grad))                    # (B, T, D)
        self.segment.backward(d_x)
        self.position.backward(autograd.sum_to_shape(d_x, (1, *d_x.shape[1:])))  # (1, T, D)
        self.token.backward(d_x)


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

    def backward(self, grad):
        """-> (dh, dtable): the table is the token embedding's, passed in (a tied decoder)."""
        saved = autograd.saved(self)
        h = autograd.last_output(self.norm)              # what the logits were computed from (B, T, D)
        d_h, d_table = tied_logits_backward(grad, h, saved.inputs["table"])               # (B, T, D), (V, D)
        autograd.accumulate(self, "bias", grad.reshape(-1, grad.shape[-1]).sum(axis=0))  # (V,)
        d_h = self.transform.backward(self.activation.backward(self.norm.backward(d_h)))  # (B, T, D)
        return d_h, d_table


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

    def backward(self, grad):
        """grad: {output key: dL/d output}. The inputs are ids and masks: nothing to return.

        Every head reads the last hidden state h, so dh is the sum of what each returns;
        the token table gets its lookup's gradient and, with the MLM head, the tied decoder's.
        """
        saved = autograd.saved(self)
        tap = saved.tap
        d_h = grad["last_hidden_state"]                                               # (B, T, D)
        if self.qa is not None:
            d_span = np.stack([tap("start_logits", grad["start_logits"]),
                               tap("end_logits", grad["end_logits"])], axis=-1)        # (B, T, 2)
            d_h = d_h + self.qa.backward(d_span)                                      # (B, T, D)
        if self.mlm is not None:
            d_h_mlm, d_table = self.mlm.backward(tap("logits", grad["logits"]))       # (B, T, D), (V, D)
            d_h = d_h + d_h_mlm
            autograd.accumulate(self.embeddings.token, "table", d_table)
        if self.pooler is not None:
            d_pooled = grad["pooled_output"]                                          # (B, D)
            if self.classifier is not None:
                d_pooled = d_pooled + self.classifier.backward(tap("logits", grad["logits"]))
            d_cls = np.zeros_like(d_h)  # h[:, 0] in reverse: only the [CLS] position gets gradient
            d_cls[:, 0] = self.pooler.backward(tanh_backward(tap("pooled", d_pooled), saved.taps["pooled"]))
            d_h = d_h + d_cls                                                         # (B, T, D)
        for layer in reversed(self.encoder):
            d_h = layer.backward(d_h)                                                 # (B, T, D)
        self.embeddings.backward(d_h)
