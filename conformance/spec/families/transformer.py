"""The 2017 encoder-decoder Transformer (Vaswani et al. 2017, Table 3: base and big);
transformer-tiny is small. The paper gives no layer-norm epsilon; 1e-6 is tensor2tensor's,
the code the paper's results came from. `transformers` has no model with this layout
(post-norm, shared tied tables), so the family has no checkpoint table."""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import Decoding, Family, Step, Walkthrough
from conformance.spec.inputs import seq2seq_inputs


def _transformer(layers, width, heads, d_ff, dropout, vocab_size=37000):
    return Config(kind="transformer", d_model=width, num_heads=heads, d_ff=d_ff, num_layers=layers,
                  num_decoder_layers=layers, vocab_size=vocab_size, max_positions=1024,
                  activation="relu", layer_norm_eps=1e-6, norm_first=False, position="sinusoidal",
                  scale_embeddings=True, share_embeddings=True, tie_embeddings=True, dropout=dropout)


TINY = Config(kind="transformer", d_model=32, num_heads=4, d_ff=64, vocab_size=97, max_positions=64,
              position="sinusoidal", activation="relu", layer_norm_eps=1e-6, scale_embeddings=True,
              num_layers=2, num_decoder_layers=2)

WALKTHROUGH = Walkthrough(
    "The 2017 encoder-decoder, one layer each (D = 8, 2 heads, ReLU), source of 4 tokens (the 4th "
    "padding), target of 3.",
    dict(d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_positions=8, num_layers=1, num_decoder_layers=1,
         position="sinusoidal", activation="relu", layer_norm_eps=1e-6, scale_embeddings=True),
    {"input_ids": [[2, 7, 7, 5]], "decoder_input_ids": [[1, 4, 9]], "attention_mask": [[1, 1, 1, 0]],
     "decoder_attention_mask": [[1, 1, 1]]},
    (Step("source_embedding.output", "Source token rows (scaled by sqrt(D) next)."),
     Step("position.output", "The sinusoidal encoding of positions 0..3, added to them."),
     Step("encoder.0.attention.probs", "Encoder self-attention; the padded source key is 0."),
     Step("encoder.0.output", "The encoder's output: the memory the decoder attends to.",
          "Checked against nn.TransformerEncoderLayer run on this layer's own input."),
     Step("decoder.0.self_attention.probs", "Causal self-attention over the target."),
     Step("decoder.0.cross_attention.probs", "Target over source; the padded source position 0."),
     Step("decoder.0.output", "The decoder's output."),
     Step("logits", "h @ E^T, tied to the shared token table.")),
    shows=("num_layers", "num_heads", "head_dim", "d_ff", "activation", "layer_norm_eps", "norm_first", "causal",
           "vocab_size", "max_positions", "position", "scale_embeddings"),
    layer_oracles={"encoder.0": "torch_encoder_layer", "decoder.0": "torch_decoder_layer"},
    capture="*coder.0",
)

FAMILY = Family(
    entry=Entry("transformer", "Transformer", TINY, seq2seq_inputs,
                {"default": V(), "learned_untied": V({"position": "learned", "share_embeddings": False,
                                                      "tie_embeddings": False})},
                is_model=True),
    presets={"transformer-tiny": _transformer(2, 64, 4, 256, 0.1, vocab_size=1000),
             "transformer-base": _transformer(6, 512, 8, 2048, 0.1),
             "transformer-big": _transformer(6, 1024, 16, 4096, 0.3)},
    generates=True,
    decoding=Decoding(encoder_decoder=True, cache=False),  # no key/value cache: every step reruns it all
    walkthrough=WALKTHROUGH, base_preset="transformer-base",
)
