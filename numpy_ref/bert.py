"""BERT (Devlin et al. 2018): a post-norm encoder over token + position + segment
embeddings, with a pooler and task heads.

    h0 = LN(E_token[ids] + E_position[0..T-1] + E_segment[types])
    h_l = EncoderLayer_l(h_{l-1}),  l = 1..L           (post-norm, exact GELU, eps 1e-12)
    pooled = tanh(h_L[:, 0] W_pool + b_pool)           (the [CLS] position)

Heads (`cfg.head`): "none" returns last_hidden_state and pooled_output; "mlm" maps
every position back to the vocabulary through a dense + GELU + LN transform and the
token table transposed (tied decoder) plus a bias; "classification" is a linear layer
on the pooled output; "qa" gives each position a start and an end logit.

Parameters (BERT-base): embeddings (V + P + G) D + 2 D = 23,837,184, each layer
4 (D^2 + D) + 2 D F + F + D + 4 D = 7,087,872, the pooler D^2 + D = 590,592: 109,482,240
in all. FLOPs: L layers of attention and feed-forward on B T positions, the pooler on
B rows, each head's projection.
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import INDEX, PER_ELEMENT, Op, Saved, scoped
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

    def flops(self, input_ids, **_):
        B, T = input_ids
        yield Op("sum", "elementwise", 2 * B * T * self.norm.d_model * PER_ELEMENT["embedding_add"])
        yield from scoped("norm", self.norm.flops((B, T, self.norm.d_model)))

    def saved(self, f, input_ids, **_):
        (B, T), x = input_ids, (*input_ids, self.norm.d_model)
        yield Saved("", "token, position, segment ids", (2 * B * T + T) * INDEX)
        yield from scoped("norm", self.norm.saved(f, x))
        yield from scoped("dropout", self.dropout.saved(f, x))

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

    def flops(self, h, **_):
        V = self.bias.shape[0]
        yield from scoped("transform", self.transform.flops(h))
        yield from scoped("activation", self.activation.flops(h))
        yield from scoped("norm", self.norm.flops(h))
        yield Op("decoder", "projection", 2 * h[0] * h[1] * h[2] * V)  # the tied table, transposed
        yield Op("decoder.bias", "elementwise", h[0] * h[1] * V * PER_ELEMENT["bias"])

    def saved(self, f, h, **_):
        yield from scoped("activation", self.activation.saved(f, h))
        yield from scoped("norm", self.norm.saved(f, h))
        yield Saved("", "decoder input", h[0] * h[1] * h[2] * f)

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
        if token_type_ids is None:
            token_type_ids = np.zeros_like(input_ids)
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

    def flops(self, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.flops(input_ids))
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.flops((B, T, D)))
        if self.pooler is not None:
            yield from scoped("pooler", self.pooler.flops((B, D)))          # the [CLS] row only
            yield Op("pooler.tanh", "elementwise", B * D * PER_ELEMENT["tanh"])
        for name, head, rows in (("classifier", self.classifier, (B, D)), ("qa", self.qa, (B, T, D)),
                                 ("mlm", self.mlm, (B, T, D))):
            if head is not None:
                yield from scoped(name, head.flops(rows))

    def saved(self, f, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.saved(f, input_ids))
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.saved(f, (B, T, D)))
        yield Saved("", "last hidden state (head input)", B * T * D * f)
        if self.pooler is not None:
            yield Saved("pooler", "tanh output", B * D * f)
        if self.mlm is not None:
            yield from scoped("mlm", self.mlm.saved(f, (B, T, D)))

    def peak(self, f, live, input_ids, **_):
        """The largest layer stage, or the MLM head's logits (twice: the product, then + bias)."""
        (B, T), D, V = input_ids, self.cfg.d_model, self.cfg.vocab_size
        head = B * T * D * f + 2 * B * T * V * f if self.mlm is not None else 0
        return max([layer.peak(f, live, (B, T, D)) for layer in self.encoder] + [head])

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
