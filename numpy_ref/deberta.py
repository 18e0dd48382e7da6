"""DeBERTa-v3 (He et al. 2021, 2023): BERT's post-norm encoder with disentangled attention, and no
absolute positions at all.

    h0 = LN(E_token[ids]) * mask                 (no position or segment rows; padded rows zeroed)
    R = LN_rel(E_rel[0..2k-1])                   (2k, D): one relative table, normalized once,
                                                 shared by every layer
    h_l = LN(h + DisentangledAttention(h, R)),   (`numpy_ref.disentangled`: content and relative
          LN(h + FFN(h))                          position, with their cross terms)

Why its own family and not a BERT variant: its attention takes an input BERT's has not (the
model's relative table), masks padded queries as well as keys, and the model adds no positions
to the embeddings; BERT's layer, embeddings and checkpoint layout stay as they are. The layer
around the attention is BERT's (`numpy_ref.blocks.residual`), and so is the feed-forward.

Heads (`cfg.head`): "none" returns last_hidden_state (no pooler); "token_classification" a linear
layer on every position.

Parameters (deberta-v3-base): the token table V D = 98,380,800 (V = 128,100), the relative table
2k D = 393,216 (k = 256), each layer BERT-base's 7,087,872: 183,831,552 in all. FLOPs: BERT's,
plus each layer's relative table through two projections and the two (B, H, T, 2k) products.
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import INDEX, PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout
from numpy_ref.blocks import residual, residual_backward, residual_flops, residual_saved
from numpy_ref.disentangled import DisentangledAttention
from numpy_ref.embeddings import RelativeEmbedding, TokenEmbedding
from numpy_ref.feed_forward import FeedForward
from numpy_ref.linear import Linear
from numpy_ref.normalization import LayerNorm


class DebertaEmbeddings(Module):
    def __init__(self, cfg):
        super().__init__()
        self.token = TokenEmbedding(cfg)
        self.norm = LayerNorm(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids, attention_mask=None):
        x = self.norm(self.token(input_ids))                                     # (B, T, D)
        if attention_mask is not None:
            x = x * attention_mask[..., None].astype(x.dtype)                    # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(x))                    # (B, T, D)

    def flops(self, input_ids, attention_mask=None, **_):
        (B, T), D = input_ids, self.norm.d_model
        yield from scoped("norm", self.norm.flops((B, T, D)))
        if attention_mask is not None:
            yield Op("mask", "elementwise", B * T * D)

    def saved(self, f, input_ids, attention_mask=None, **_):
        (B, T), x = input_ids, (*input_ids, self.norm.d_model)
        yield Saved("", "token ids", B * T * INDEX)
        yield from scoped("norm", self.norm.saved(f, x))
        if attention_mask is not None:
            yield Saved("", "padding mask as a factor", B * T * f)
        yield from scoped("dropout", self.dropout.saved(f, x))

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = self.dropout.backward(saved.tap("output", grad))                  # (B, T, D)
        mask = saved.inputs["attention_mask"]
        if mask is not None:
            grad = grad * mask[..., None].astype(grad.dtype)                     # (B, T, D)
        self.token.backward(self.norm.backward(grad))


class DebertaLayer(Module):
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

    def flops(self, x, rel, **_):
        yield from residual_flops("attention", self.attention.flops(x, rel), self.attention_norm, x)
        yield from residual_flops("feed_forward", self.feed_forward.flops(x), self.feed_forward_norm, x)

    def saved(self, f, x, rel, mask=None, **_):
        yield from residual_saved("attention", self.attention.saved(f, x, rel, mask), self.attention_dropout,
                                  self.attention_norm, f, x)
        yield from residual_saved("feed_forward", self.feed_forward.saved(f, x), self.feed_forward_dropout,
                                  self.feed_forward_norm, f, x)

    def peak(self, f, live, x, rel, **_):
        return max(self.attention.peak(f, live, x, rel), self.feed_forward.peak(f, live, x))

    def backward(self, grad):
        """-> (dx, drel): the relative table reaches the output only through the attention."""
        grad = autograd.saved(self).tap("output", grad)                                    # (B, T, D)
        d_rel = []

        def attention_backward(d):
            d_x, d_r = self.attention.backward(d)
            d_rel.append(d_r)                                                              # (2k, D)
            return d_x

        grad = residual_backward(grad, self.feed_forward.backward, self.feed_forward_norm,
                                 self.feed_forward_dropout, False)
        grad = residual_backward(grad, attention_backward, self.attention_norm, self.attention_dropout, False)
        return grad, d_rel[0]


class Deberta(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = DebertaEmbeddings(cfg)
        self.relative = RelativeEmbedding(cfg)
        self.relative_norm = LayerNorm(cfg)
        self.encoder = [DebertaLayer(cfg) for _ in range(cfg.num_layers)]
        self.classifier = Linear(cfg.d_model, cfg.num_labels) if cfg.head == "token_classification" else None

    def forward(self, input_ids, attention_mask=None):
        """input_ids, attention_mask (1 = attend): (B, T)."""
        cfg = self.cfg
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask))
        tap = trace.tap_for(self)
        h = self.embeddings(input_ids, attention_mask)             # (B, T, D)
        rows = np.arange(2 * cfg.relative_span)                    # (2k,) every row of the relative table
        rel = self.relative_norm(self.relative(rows))              # (2k, D), normed once for every layer
        for layer in self.encoder:
            h = layer(h, rel, mask=attention_mask)                 # (B, T, D)
        out = {"last_hidden_state": h}
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(h))      # (B, T, num_labels)
        return out

    def flops(self, input_ids, attention_mask=None, **_):
        (B, T), D = input_ids, self.cfg.d_model
        rel = (2 * self.cfg.relative_span, D)
        yield from scoped("embeddings", self.embeddings.flops(input_ids, attention_mask))
        yield from scoped("relative_norm", self.relative_norm.flops(rel))
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.flops((B, T, D), rel))
        if self.classifier is not None:
            yield from scoped("classifier", self.classifier.flops((B, T, D)))

    def saved(self, f, input_ids, attention_mask=None, **_):
        (B, T), D = input_ids, self.cfg.d_model
        rel = (2 * self.cfg.relative_span, D)
        yield from scoped("embeddings", self.embeddings.saved(f, input_ids, attention_mask))
        yield Saved("relative", "relative row ids", rel[0] * INDEX)
        yield from scoped("relative_norm", self.relative_norm.saved(f, rel))
        for i, layer in enumerate(self.encoder):  # every layer keeps the same relative table: one tensor
            records = layer.saved(f, (B, T, D), rel, attention_mask)
            yield from scoped(f"encoder.{i}", (r for r in records
                                               if i == 0 or not r.tensor.startswith("relative table")))
        if self.classifier is not None:
            yield Saved("", "last hidden state (head input)", B * T * D * f)

    def peak(self, f, live, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        rel = (2 * self.cfg.relative_span, D)
        return max(layer.peak(f, live, (B, T, D), rel) for layer in self.encoder)

    def backward(self, grad):
        """grad: {output key: dL/d output}. Every layer read the same relative table: its gradient is the
        sum of the layers'."""
        saved = autograd.saved(self)
        d_h = grad["last_hidden_state"]                                          # (B, T, D)
        if self.classifier is not None:
            d_h = d_h + self.classifier.backward(saved.tap("logits", grad["logits"]))  # (B, T, D)
        d_rel = 0.0
        for layer in reversed(self.encoder):
            d_h, d_r = layer.backward(d_h)                                       # (B, T, D), (2k, D)
            d_rel = d_rel + d_r
        self.relative.backward(self.relative_norm.backward(d_rel))
        self.embeddings.backward(d_h)
