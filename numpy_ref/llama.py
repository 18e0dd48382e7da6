"""The LLaMA family: Llama 2 and 3 (Touvron et al. 2023; Llama 3, 2024), Mistral 7B (Jiang et al.
2023), Qwen2 / 2.5, Gemma and Gemma 2 (Gemma Team 2024). One pre-norm causal decoder:

    h0 = E[ids]                         (Gemma: x sqrt(D), the scale rounded to E's dtype)
    h_l = h + Attention(RMS(h)),        (rotary positions, grouped-query heads, an optional
          h + FFN(RMS(h))                sliding window; SwiGLU, or GeGLU for Gemma)
    logits = RMS_final(h_L) W           (W = E^T when tied; Gemma 2: cap tanh(logits / cap))

What separates the families is configuration, never code: RMSNorm's epsilon and Gemma's (1 + g)
form, the rotary base and its scaling (llama3, yarn, ...), the number of key/value heads and the
head width (Gemma's 256 is not D / H), Qwen2's q/k/v biases, Mistral's window on every layer and
Gemma 2's on every other one, Gemma 2's sandwich norms and soft-caps, a tied or an untied head.

The key/value cache: each layer keeps only its KV heads, so grouped-query attention shrinks the
cache by G = H / KV: for llama3-8b in bfloat16, 2 (k, v) x 32 layers x 8 heads x 128 x 2 bytes =
128 KiB a token, against 512 KiB with 32 key/value heads. With `position_ids` (B, T) a left-padded
batch puts each row's first real token at position 0, as `transformers`' generate does.
"""
import math

import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import INDEX, PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout, softcap, softcap_backward
from numpy_ref.blocks import EncoderLayer, cache_length, norm_for
from numpy_ref.embeddings import TokenEmbedding, tied_logits_backward
from numpy_ref.linear import Linear


class LlamaEmbeddings(Module):
    def __init__(self, cfg):
        super().__init__()
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else None
        self.token = TokenEmbedding(cfg)
        self.dropout = Dropout(cfg)

    def forward(self, input_ids):
        x = self.token(input_ids)                                                # (B, T, D)
        if self.scale is not None:
            x = x * np.asarray(self.scale, x.dtype)  # Gemma: sqrt(D) rounded to the weights' dtype first
        return trace.tap_for(self)("output", self.dropout(x))                   # (B, T, D)

    def flops(self, input_ids, **_):
        if self.scale is not None:
            B, T = input_ids
            yield Op("scale", "elementwise", B * T * self.token.table.shape[1] * PER_ELEMENT["embedding_scale"])

    def saved(self, f, input_ids, **_):
        yield Saved("", "token ids", input_ids[0] * input_ids[1] * INDEX)
        yield from scoped("dropout", self.dropout.saved(f, (*input_ids, self.token.table.shape[1])))

    def backward(self, grad):
        grad = autograd.saved(self).tap("output", grad)                          # (B, T, D)
        d_x = self.dropout.backward(grad)                                        # (B, T, D)
        self.token.backward(d_x if self.scale is None else d_x * self.scale)


class Llama(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = LlamaEmbeddings(cfg)
        self.layers = [EncoderLayer(cfg, sliding=cfg.sliding(i)) for i in range(cfg.num_layers)]
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
        logits = h @ self.embeddings.token.table.T if self.lm_head is None else self.lm_head(h)  # (B, T, V)
        if self.cfg.final_logit_softcap is not None:
            logits = softcap(tap("uncapped_logits", logits), self.cfg.final_logit_softcap)   # (B, T, V)
        return {"logits": tap("logits", logits), "last_hidden_state": h}

    def flops(self, input_ids, **_):
        (B, T), D, V = input_ids, self.cfg.d_model, self.cfg.vocab_size
        yield from scoped("embeddings", self.embeddings.flops(input_ids))
        for i, layer in enumerate(self.layers):
            yield from scoped(f"layers.{i}", layer.flops((B, T, D)))
        yield from scoped("final_norm", self.final_norm.flops((B, T, D)))
        if self.lm_head is None:
            yield Op("logits", "projection", 2 * B * T * D * V)                # the tied table, transposed
        else:
            yield from scoped("lm_head", self.lm_head.flops((B, T, D)))
        if self.cfg.final_logit_softcap is not None:
            yield Op("logits.softcap", "elementwise", B * T * V * PER_ELEMENT["softcap"])

    def saved(self, f, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.saved(f, input_ids))
        for i, layer in enumerate(self.layers):
            yield from scoped(f"layers.{i}", layer.saved(f, (B, T, D)))
        yield from scoped("final_norm", self.final_norm.saved(f, (B, T, D)))
        yield Saved("", "logits input", B * T * D * f)
        if self.cfg.final_logit_softcap is not None:
            yield Saved("", "capped logits", B * T * self.cfg.vocab_size * f)

    def peak(self, f, live, input_ids, **_):
        (B, T), D = input_ids, self.cfg.d_model
        head = B * T * D * f + (2 if self.cfg.final_logit_softcap else 1) * B * T * self.cfg.vocab_size * f
        return max([layer.peak(f, live, (B, T, D)) for layer in self.layers] + [head])

    def backward(self, grad):
        """grad: {output key: dL/d output}. A tied token table gets two gradients: lookup and head."""
        saved = autograd.saved(self)
        d_logits = saved.tap("logits", grad["logits"])                          # (B, T, V)
        if self.cfg.final_logit_softcap is not None:
            d_logits = saved.tap("uncapped_logits", softcap_backward(d_logits, saved.output["logits"],
                                                                     self.cfg.final_logit_softcap))
        h = saved.output["last_hidden_state"]                                    # (B, T, D)
        if self.lm_head is None:
            d_h, d_table = tied_logits_backward(d_logits, h, self.embeddings.token.table)  # (B, T, D), (V, D)
            autograd.accumulate(self.embeddings.token, "table", d_table)
        else:
            d_h = self.lm_head.backward(d_logits)                                # (B, T, D)
        d_h = self.final_norm.backward(d_h + grad["last_hidden_state"])          # (B, T, D)
        for layer in reversed(self.layers):
            d_h = layer.backward(d_h)
        self.embeddings.backward(d_h)
