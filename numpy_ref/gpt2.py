"""GPT-2 (Radford et al. 2019): a pre-norm causal decoder-only stack.

    h0 = E_token[ids] + E_position[past .. past+T-1]
    h_l = h + Attention(LN(h)),  h + FFN(LN(h))        (causal, tanh GELU, eps 1e-5)
    logits = LN_final(h_L) E_token^T                   (the head is tied to the table)

The key/value cache: at step t only the new token's query is needed, but it attends
to the keys and values of every earlier position. Keeping those (one (B, H, S, Dh)
pair per layer) makes each generation step O(S) instead of recomputing O(S^2); the
cached result equals the full recomputation, which the conformance suite checks.

FLOPs: the embedding sum, L layers, the final norm and the tied head's 2 B T D V, which at
GPT-2's vocabulary of 50,257 costs as much as about two layers at T = 128.
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import INDEX, PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout
from numpy_ref.blocks import EncoderLayer, cache_length
from numpy_ref.embeddings import PositionEmbedding, TokenEmbedding, tied_logits_backward
from numpy_ref.normalization import LayerNorm


class GPT2Embeddings(Module):
    def __init__(self, cfg):
        super().__init__()
        self.token = TokenEmbedding(cfg)
        self.position = PositionEmbedding(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids, past):
        T = input_ids.shape[1]
        positions = past + np.arange(T)[None, :]                              # (1, T)
        x = self.token(input_ids) + self.position(positions)                  # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(x))

    def flops(self, input_ids, **_):
        B, T = input_ids
        yield Op("sum", "elementwise", B * T * self.token.table.shape[1] * PER_ELEMENT["embedding_add"])

    def saved(self, f, input_ids, **_):
        B, T = input_ids
        yield Saved("", "token and position ids", (B * T + T) * INDEX)
        yield from scoped("dropout", self.dropout.saved(f, (B, T, self.token.table.shape[1])))

    def backward(self, grad):
        grad = autograd.saved(self).tap("output", grad)                           # (B, T, D)
        d_x = self.dropout.backward(grad)                                         # (B, T, D)
        self.position.backward(autograd.sum_to_shape(d_x, (1, *d_x.shape[1:])))  # (1, T, D)
        self.token.backward(d_x)


class GPT2(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = GPT2Embeddings(cfg)
        self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
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
        logits = h @ self.embeddings.token.table.T                            # (B, T, V)
        return {"logits": trace.tap_for(self)("logits", logits), "last_hidden_state": h}

    def flops(self, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.flops(input_ids))
        for i, layer in enumerate(self.layers):
            yield from scoped(f"layers.{i}", layer.flops((B, T, D)))
        yield from scoped("final_norm", self.final_norm.flops((B, T, D)))
        yield Op("logits", "projection", 2 * B * T * D * self.cfg.vocab_size)  # the tied table, transposed

    def saved(self, f, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.saved(f, input_ids))
        for i, layer in enumerate(self.layers):
            yield from scoped(f"layers.{i}", layer.saved(f, (B, T, D)))
        yield from scoped("final_norm", self.final_norm.saved(f, (B, T, D)))
        yield Saved("", "logits input", B * T * D * f)

    def peak(self, f, live, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        head = B * T * D * f + B * T * self.cfg.vocab_size * f
        return max([layer.peak(f, live, (B, T, D)) for layer in self.layers] + [head])

    def backward(self, grad):
        """grad: {output key: dL/d output}. The token table gets two gradients: lookup and head."""
        saved = autograd.saved(self)
        table = self.embeddings.token.table
        d_h, d_table = tied_logits_backward(saved.tap("logits", grad["logits"]),
                                            saved.output["last_hidden_state"], table)  # (B, T, D), (V, D)
        autograd.accumulate(self.embeddings.token, "table", d_table)
        d_h = self.final_norm.backward(d_h + grad["last_hidden_state"])           # (B, T, D)
        for layer in reversed(self.layers):
            d_h = layer.backward(d_h)
        self.embeddings.backward(d_h)
