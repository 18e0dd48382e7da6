"""BERT (Devlin et al. 2018) and the descendants that keep its layer: a post-norm encoder over
token + position + segment embeddings, with a pooler and task heads.

    h0 = LN(E_token[ids] + E_position[positions] + E_segment[types])   (W_proj h0 if E != D)
    h_l = EncoderLayer_g(l)(h_{l-1}),  l = 1..L        (post-norm, exact GELU, eps 1e-12)
    pooled = tanh(h_L[:, 0] W_pool + b_pool)           (the [CLS] position)

What the descendants change is configuration, never another layer:

- RoBERTa (Liu et al. 2019, `pad_positions`): the positions are computed from the ids. Real
  tokens are numbered pad + 1, pad + 2, ... in order and every pad sits at `pad`, so a
  left-padded and a right-padded row give their real tokens the same positions; table rows
  0..pad are never a real token's (514 rows hold 512 positions). One segment type.
- DistilBERT (Sanh et al. 2019): 6 layers, no segment table (`type_vocab_size=0`), no pooler.
- ELECTRA (Clark et al. 2020, `embedding_size`): embeddings E wide (128 for D = 256) and a
  Linear(E, D) after their layer norm; no pooler. Its pretraining head, the discriminator,
  gives each position one logit: was this token replaced?
- ALBERT (Lan et al. 2019): the same factorized embeddings, and `num_layer_groups` G distinct
  layers for L steps: layer l runs group g(l) = int(l / (L / G)), so with G = 1 one layer's
  weights serve all 12 layers. The parameters shrink by L / G; the FLOPs do not change at all.

Heads (`cfg.head`): "none" returns last_hidden_state (and pooled_output with the pooler);
"mlm" maps every position back to the vocabulary through a dense + GELU + LN transform and the
token table transposed (tied decoder) plus a bias (with embeddings E wide the transform goes
D -> E, as ALBERT's); "classification" is a linear layer on the pooled output (RoBERTa's
classification head is the same dense + tanh on position 0, then a linear layer);
"qa" gives each position a start and an end logit; "token_classification" (named-entity
recognition) a linear layer on every position; "discriminator" ELECTRA's dense + GELU + a
one-unit linear layer on every position.

Parameters (BERT-base): embeddings (V + P + G) D + 2 D = 23,837,184, each layer
4 (D^2 + D) + 2 D F + F + D + 4 D = 7,087,872, the pooler D^2 + D = 590,592: 109,482,240
in all. FLOPs: L layers of attention and feed-forward on B T positions (ALBERT's shared layer
counts L times), the pooler on B rows, each head's projection.
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


def padding_positions(input_ids, pad):
    """RoBERTa's positions, from the ids alone: the real tokens of a row are numbered pad + 1,
    pad + 2, ... in order and every pad sits at `pad` (transformers' create_position_ids_from_input_ids)."""
    real = (input_ids != pad).astype(input_ids.dtype)                            # (B, T)
    return np.cumsum(real, axis=1) * real + pad                                  # (B, T)


class BertEmbeddings(Module):
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
            positions = np.arange(T)[None, :]                                    # (1, T)
        else:
            positions = padding_positions(input_ids, self.pad)                   # (B, T)
        x = self.token(input_ids) + self.position(positions)                     # (B, T, E)
        if self.segment is not None:
            x = x + self.segment(token_type_ids)                                 # (B, T, E)
        x = self.dropout(self.norm(x))                                           # (B, T, E)
        if self.projection is not None:
            x = self.projection(x)                                               # (B, T, D)
        return trace.tap_for(self)("output", x)                                  # (B, T, D)

    def flops(self, input_ids, **_):
        (B, T), E = input_ids, self.norm.d_model
        adds = 1 if self.segment is None else 2
        yield Op("sum", "elementwise", adds * B * T * E * PER_ELEMENT["embedding_add"])
        yield from scoped("norm", self.norm.flops((B, T, E)))
        if self.projection is not None:
            yield from scoped("projection", self.projection.flops((B, T, E)))

    def saved(self, f, input_ids, **_):
        (B, T), x = input_ids, (*input_ids, self.norm.d_model)
        ids = B * T + (T if self.pad is None else B * T) + (0 if self.segment is None else B * T)
        yield Saved("", "token, position, segment ids", ids * INDEX)
        yield from scoped("norm", self.norm.saved(f, x))
        yield from scoped("dropout", self.dropout.saved(f, x))
        if self.projection is not None:
            yield from scoped("projection", self.projection.saved(f, x))

    def backward(self, grad):
        """A sum of lookups: each table gets the same gradient, the position table's summed over B
        when the positions are one shared row (0..T-1), per row when computed from the ids."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                         # (B, T, D)
        if self.projection is not None:
            grad = self.projection.backward(grad)                                # (B, T, E)
        d_x = self.norm.backward(self.dropout.backward(grad))                    # (B, T, E)
        if self.segment is not None:
            self.segment.backward(d_x)
        if self.pad is None:
            self.position.backward(autograd.sum_to_shape(d_x, (1, *d_x.shape[1:])))  # (1, T, E)
        else:
            self.position.backward(d_x)
        self.token.backward(d_x)


class MaskedLMHead(Module):
    def __init__(self, cfg):
        super().__init__()
        E = cfg.embedding_size or cfg.d_model
        self.transform = Linear(cfg.d_model, E)
        self.activation = Activation(cfg.replace(activation=cfg.mlm_activation or cfg.activation))
        self.norm = LayerNorm(cfg, E)
        self.bias = self.param("bias", cfg.vocab_size)

    def forward(self, h, table):
        h = self.norm(self.activation(self.transform(h)))   # (B, T, E)
        return h @ table.T + self.bias                       # (B, T, V)

    def flops(self, h, **_):
        V, E = self.bias.shape[0], self.norm.d_model
        e = (*h[:-1], E)                                                   # (B, T, E)
        yield from scoped("transform", self.transform.flops(h))
        yield from scoped("activation", self.activation.flops(e))
        yield from scoped("norm", self.norm.flops(e))
        yield Op("decoder", "projection", 2 * h[0] * h[1] * E * V)  # the tied table, transposed
        yield Op("decoder.bias", "elementwise", h[0] * h[1] * V * PER_ELEMENT["bias"])

    def saved(self, f, h, **_):
        e = (*h[:-1], self.norm.d_model)                                   # (B, T, E)
        yield from scoped("activation", self.activation.saved(f, e))
        yield from scoped("norm", self.norm.saved(f, e))
        yield Saved("", "decoder input", h[0] * h[1] * e[2] * f)

    def backward(self, grad):
        """-> (dh, dtable): the table is the token embedding's, passed in (a tied decoder)."""
        saved = autograd.saved(self)
        h = autograd.last_output(self.norm)              # what the logits were computed from (B, T, E)
        d_h, d_table = tied_logits_backward(grad, h, saved.inputs["table"])               # (B, T, E), (V, E)
        autograd.accumulate(self, "bias", grad.reshape(-1, grad.shape[-1]).sum(axis=0))  # (V,)
        d_h = self.transform.backward(self.activation.backward(self.norm.backward(d_h)))  # (B, T, D)
        return d_h, d_table


class DiscriminatorHead(Module):
    """ELECTRA's replaced-token detector: one logit a position, act(h W1 + b1) w2 + b2."""

    def __init__(self, cfg):
        super().__init__()
        self.transform = Linear(cfg.d_model, cfg.d_model)
        self.activation = Activation(cfg)
        self.prediction = Linear(cfg.d_model, 1)

    def forward(self, h):
        h = self.activation(self.transform(h))               # (B, T, D)
        return self.prediction(h)[..., 0]                        # (B, T)

    def flops(self, h, **_):
        yield from scoped("transform", self.transform.flops(h))
        yield from scoped("activation", self.activation.flops(h))
        yield from scoped("prediction", self.prediction.flops(h))

    def saved(self, f, h, **_):
        yield from scoped("activation", self.activation.saved(f, h))
        yield from scoped("prediction", self.prediction.saved(f, h))

    def backward(self, grad):
        autograd.saved(self)
        d_h = self.prediction.backward(grad[..., None])                              # (B, T, D)
        return self.transform.backward(self.activation.backward(d_h))            # (B, T, D)


class Bert(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = [EncoderLayer(cfg) for _ in range(cfg.num_layer_groups or cfg.num_layers)]
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
        if cfg.pad_positions:
            checks.padding_at_the_ends("input_ids", input_ids, cfg.pad_token_id)
        if token_type_ids is None and cfg.type_vocab_size:
            token_type_ids = np.zeros_like(input_ids)
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
            out["pooled_output"] = tap("pooled", np.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.mlm is not None:
            out["logits"] = tap("logits", self.mlm(h, self.embeddings.token.table))  # (B, T, V)
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

    def flops(self, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.flops(input_ids))
        for i in range(self.cfg.num_layers):  # per step: a shared layer (ALBERT) costs at every step it runs
            yield from scoped(f"encoder.{i}", self.encoder[self.cfg.layer_group(i)].flops((B, T, D)))
        if self.pooler is not None:
            yield from scoped("pooler", self.pooler.flops((B, D)))          # the [CLS] row only
            yield Op("pooler.tanh", "elementwise", B * D * PER_ELEMENT["tanh"])
        labelled = (B, D) if self.cfg.head == "classification" else (B, T, D)
        for name, head, rows in (("classifier", self.classifier, labelled), ("qa", self.qa, (B, T, D)),
                                 ("mlm", self.mlm, (B, T, D)), ("discriminator", self.discriminator, (B, T, D))):
            if head is not None:
                yield from scoped(name, head.flops(rows))

    def saved(self, f, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.saved(f, input_ids))
        for i in range(self.cfg.num_layers):  # per step: each keeps its own activations, shared weights or not
            yield from scoped(f"encoder.{i}", self.encoder[self.cfg.layer_group(i)].saved(f, (B, T, D)))
        if any(head is not None for head in (self.pooler, self.mlm, self.classifier, self.qa, self.discriminator)):
            yield Saved("", "last hidden state (head input)", B * T * D * f)
        if self.pooler is not None:
            yield Saved("pooler", "tanh output", B * D * f)
        if self.mlm is not None:
            yield from scoped("mlm", self.mlm.saved(f, (B, T, D)))
        if self.discriminator is not None:
            yield from scoped("discriminator", self.discriminator.saved(f, (B, T, D)))

    def peak(self, f, live, input_ids, **_):
        """The largest layer stage, or the MLM head's logits (twice: the product, then + bias)."""
        (B, T), D, V = input_ids, self.cfg.d_model, self.cfg.vocab_size
        head = B * T * D * f + 2 * B * T * V * f if self.mlm is not None else 0
        return max([layer.peak(f, live, (B, T, D)) for layer in self.encoder] + [head])

    def backward(self, grad):
        """grad: {output key: dL/d output}. The inputs are ids and masks: nothing to return.

        Every head reads the last hidden state h, so dh is the sum of what each returns;
        the token table gets its lookup's gradient and, with the MLM head, the tied decoder's.
        A shared layer (ALBERT) is undone once per step it ran, latest first: its weights
        gather the gradient of every step.
        """
        saved = autograd.saved(self)
        tap, cfg = saved.tap, self.cfg
        d_h = grad["last_hidden_state"]                                               # (B, T, D)
        if self.qa is not None:
            d_span = np.stack([tap("start_logits", grad["start_logits"]),
                               tap("end_logits", grad["end_logits"])], axis=-1)        # (B, T, 2)
            d_h = d_h + self.qa.backward(d_span)                                      # (B, T, D)
        if self.mlm is not None:
            d_h_mlm, d_table = self.mlm.backward(tap("logits", grad["logits"]))       # (B, T, D), (V, E)
            d_h = d_h + d_h_mlm
            autograd.accumulate(self.embeddings.token, "table", d_table)
        if self.discriminator is not None:
            d_h = d_h + self.discriminator.backward(tap("logits", grad["logits"]))    # (B, T, D)
        if self.classifier is not None and cfg.head == "token_classification":
            d_h = d_h + self.classifier.backward(tap("logits", grad["logits"]))       # (B, T, D)
        if self.pooler is not None:
            d_pooled = grad["pooled_output"]                                          # (B, D)
            if self.classifier is not None:
                d_pooled = d_pooled + self.classifier.backward(tap("logits", grad["logits"]))
            d_cls = np.zeros_like(d_h)  # h[:, 0] in reverse: only the [CLS] position gets gradient
            d_cls[:, 0] = self.pooler.backward(tanh_backward(tap("pooled", d_pooled), saved.taps["pooled"]))
            d_h = d_h + d_cls                                                         # (B, T, D)
        for i in reversed(range(cfg.num_layers)):
            d_h = self.encoder[cfg.layer_group(i)].backward(d_h)                     # (B, T, D)
        self.embeddings.backward(d_h)
