"""T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer"): T5 1.0, T5 1.1 and Flan-T5 (Chung et al. 2022), one pre-norm encoder-decoder.

    h = E[ids]                                  no scale, no position rows: positions enter as a bias
    encoder:  h + Attention(RMS(h), + bias_enc),  h + FFN(RMS(h));   memory = RMS_enc(h_L)
    decoder:  h + CausalAttention(RMS(h), + bias_dec),  h + CrossAttention(RMS(h), memory),
              h + FFN(RMS(h));                                         out = RMS_dec(h_L')
    logits = out D^-0.5 E^T                     T5 1.0: the head is the token table, rescaled
           = out W_head                         T5 1.1 / Flan-T5: an untied head, no rescale

What is T5's own, each a config field:
- the relative position bias (`numpy_ref.relative_position`), one bucketed table per stack,
  bidirectional in the encoder and causal in the decoder, computed once per stack and added to
  every self-attention layer's scores; cross-attention has none;
- no 1/sqrt(Dh) in attention (`attention_scale` 1.0): Mesh TensorFlow folded it into the query
  projection's initialization instead, so the trained weights carry it;
- its layer norm is RMSNorm (`norm` "rms": no mean, no beta), the statistic in float32;
- no bias anywhere (`use_bias` False); its head width d_kv is free (`attention_head_dim`: Flan-T5
  small has 6 heads of 64 on D = 512);
- the feed-forward: ReLU in T5 1.0, gated GELU (tanh form) in 1.1 and Flan-T5 (`feed_forward`);
- the head: tied and rescaled by D^-0.5 (`scale_logits`), or untied and not.

One token table serves the encoder, the decoder and (tied) the head. `head="encoder"` is the
encoder alone (transformers' T5EncoderModel), whose output is `last_hidden_state`.

With a cache (`conformance.spec.family.Decoding`) the first call runs the encoder once; each
decoder layer's dict keeps its self-attention keys and values, growing a token a step, its
cross-attention keys and values of the encoder's output, computed once, and the source mask.
Later calls bring only the new decoder tokens, whose bias rows are those of positions past ..

FLOPs: L encoder layers on the S source positions, L' decoder layers on the T target positions
(cross-attention on T x S pairs), the logit scale's B T D and the head's 2 B T D V.
"""
import numpy as np

from conformance.core import trace
from conformance.core.costs import INDEX, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout
from numpy_ref.blocks import DecoderLayer, EncoderLayer, cache_length, encoder_memory, norm_for
from numpy_ref.embeddings import TokenEmbedding, tied_logits_backward
from numpy_ref.linear import Linear
from numpy_ref.relative_position import RelativePositionBias


class T5(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        decoder = cfg.head != "encoder"
        self.token_embedding = TokenEmbedding(cfg)
        self.dropout = Dropout(cfg)
        self.encoder_position = RelativePositionBias(cfg, bidirectional=True)
        self.encoder = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
        self.encoder_norm = norm_for(cfg)
        self.decoder_position = RelativePositionBias(cfg, bidirectional=False) if decoder else None
        self.decoder = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)] if decoder else []
        self.decoder_norm = norm_for(cfg) if decoder else None
        self.lm_head = (Linear(cfg.d_model, cfg.vocab_size, use_bias=False)
                        if decoder and not cfg.tie_embeddings else None)

    def encode(self, input_ids, attention_mask=None):
        """input_ids, attention_mask: (B, S) -> memory (B, S, D), after the encoder's final norm."""
        positions = np.arange(input_ids.shape[1])                                   # (S,)
        bias = self.encoder_position(positions, positions)                          # (1, H, S, S)
        h = self.dropout(self.token_embedding(input_ids))                           # (B, S, D)
        for layer in self.encoder:
            h = layer(h, mask=attention_mask, position_bias=bias)                   # (B, S, D)
        return self.dropout(self.encoder_norm(h))                                   # (B, S, D)

    def decode(self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache=None):
        """decoder_input_ids: (B, T) after `past` cached ones; memory (B, S, D), None once the cache holds its
        keys and values -> (B, T, D), after the decoder's final norm."""
        past, T = cache_length(cache), decoder_input_ids.shape[1]
        bias = self.decoder_position(np.arange(past, past + T), np.arange(past + T))  # (1, H, T, past + T)
        h = self.dropout(self.token_embedding(decoder_input_ids))                   # (B, T, D)
        for i, layer in enumerate(self.decoder):
            h = layer(h, memory, mask=decoder_attention_mask, memory_mask=attention_mask,
                      cache=None if cache is None else cache[i], position_bias=bias)  # (B, T, D)
        return self.dropout(self.decoder_norm(h))                                   # (B, T, D)

    def forward(self, input_ids=None, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None,
                cache=None):
        """input_ids, attention_mask: (B, S) source; decoder_*: (B, T) target (mask: (B, past + T)).

        `cache`: a list, filled on the first call (which encodes the source) with one dict per decoder
        layer; later calls pass only `decoder_input_ids`, the new tokens.
        """
        tap = trace.tap_for(self)
        memory, attention_mask = encoder_memory(self, input_ids, attention_mask, decoder_input_ids,
                                                decoder_attention_mask, cache)     # (B, S, D) or None
        if self.cfg.head == "encoder":
            return {"last_hidden_state": memory}
        h = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask, cache)  # (B, T, D)
        head_input = h * self.cfg.d_model ** -0.5 if self.cfg.scale_logits else h  # T5 1.0: the tied head rescaled
        logits = (head_input @ self.token_embedding.table.T if self.lm_head is None
                  else self.lm_head(head_input))                                    # (B, T, V)
        out = {"logits": tap("logits", logits), "last_hidden_state": h}
        if memory is not None:
            out["encoder_last_hidden_state"] = memory
        return out

    def flops(self, input_ids, decoder_input_ids=None, **_):
        (B, S), D, H = input_ids, self.cfg.d_model, self.cfg.num_heads
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.flops((B, S, D), position_bias=(1, H, S, S)))
        yield from scoped("encoder_norm", self.encoder_norm.flops((B, S, D)))
        if self.decoder_norm is None:
            return
        T = decoder_input_ids[1]
        for i, layer in enumerate(self.decoder):
            yield from scoped(f"decoder.{i}", layer.flops((B, T, D), (B, S, D), position_bias=(1, H, T, T)))
        yield from scoped("decoder_norm", self.decoder_norm.flops((B, T, D)))
        if self.cfg.scale_logits:
            yield Op("logits.scale", "elementwise", B * T * D)
        if self.lm_head is None:
            yield Op("logits", "projection", 2 * B * T * D * self.cfg.vocab_size)  # the tied table, transposed
        else:
            yield from scoped("lm_head", self.lm_head.flops((B, T, D)))

    def saved(self, f, input_ids, decoder_input_ids=None, **_):
        (B, S), D = input_ids, self.cfg.d_model
        T = 0 if self.decoder_norm is None else decoder_input_ids[1]
        yield Saved("", "source and target ids", B * (S + T) * INDEX)
        yield from scoped("encoder_position", self.encoder_position.saved(f, (S,), (S,)))
        for n in (S, S) + ((T, T) if T else ()):  # the embeddings' and the final norms' dropout
            yield from scoped("dropout", self.dropout.saved(f, (B, n, D)))
        for i, layer in enumerate(self.encoder):
            yield from scoped(f"encoder.{i}", layer.saved(f, (B, S, D)))
        yield from scoped("encoder_norm", self.encoder_norm.saved(f, (B, S, D)))
        if not T:
            return
        yield Saved("", "encoder output (every cross-attention's k/v input)", B * S * D * f)
        yield from scoped("decoder_position", self.decoder_position.saved(f, (T,), (T,)))
        for i, layer in enumerate(self.decoder):
            yield from scoped(f"decoder.{i}", layer.saved(f, (B, T, D), (B, S, D)))
        yield from scoped("decoder_norm", self.decoder_norm.saved(f, (B, T, D)))
        yield Saved("", "logits input", B * T * D * f)

    def peak(self, f, live, input_ids, decoder_input_ids=None, **_):
        """A layer's peak with its stack's bias (1, H, T, S) alive beside it, and the decoder's also the
        encoder's output; the head: its input and the logits."""
        (B, S), D, H = input_ids, self.cfg.d_model, self.cfg.num_heads
        stages = [layer.peak(f, live, (B, S, D)) + H * S * S * f for layer in self.encoder]
        if self.decoder_norm is not None:
            T = decoder_input_ids[1]
            stages += [layer.peak(f, live, (B, T, D), (B, S, D)) + (H * T * T + B * S * D) * f for layer in self.decoder]
            stages.append(B * T * D * f + B * T * self.cfg.vocab_size * f)
        return max(stages)

    def backward(self, grad):
        """grad: {output key: dL/d output}. The token table gets the lookups' gradients and the tied head's;
        each stack's bias table gets the sum over its layers; the encoder's output, the sum over the
        cross-attentions and its own output's."""
        saved = autograd.saved(self)
        d_memory = grad["last_hidden_state" if self.decoder_norm is None else "encoder_last_hidden_state"]
        if self.decoder_norm is not None:
            d_memory = d_memory + self.decoder_backward(saved, grad)                # (B, S, D)
        d_memory = self.encoder_norm.backward(self.dropout.backward(d_memory))      # (B, S, D)
        d_bias = 0.0
        for layer in reversed(self.encoder):
            d_memory, d_layer_bias = layer.backward(d_memory)                       # (B, S, D), (1, H, S, S)
            d_bias = d_bias + d_layer_bias
        self.encoder_position.backward(d_bias)
        self.token_embedding.backward(self.dropout.backward(d_memory))

    def decoder_backward(self, saved, grad):
        """The decoder's part of `backward`, head to embedding -> dL/d memory (B, S, D)."""
        scale = self.cfg.d_model ** -0.5 if self.cfg.scale_logits else 1.0
        h = saved.output["last_hidden_state"]                                       # (B, T, D)
        d_logits = saved.tap("logits", grad["logits"])                              # (B, T, V)
        if self.lm_head is None:
            d_h, d_table = tied_logits_backward(d_logits, h * scale, self.token_embedding.table)
            autograd.accumulate(self.token_embedding, "table", d_table)
        else:
            d_h = self.lm_head.backward(d_logits)                                   # (B, T, D)
        d_h = self.decoder_norm.backward(self.dropout.backward(d_h * scale + grad["last_hidden_state"]))
        d_memory, d_bias = 0.0, 0.0
        for layer in reversed(self.decoder):
            d_h, d_layer_memory, d_layer_bias = layer.backward(d_h)                 # (B, T, D), (B, S, D), ...
            d_memory, d_bias = d_memory + d_layer_memory, d_bias + d_layer_bias
        self.decoder_position.backward(d_bias)
        self.token_embedding.backward(self.dropout.backward(d_h))
        return d_memory
