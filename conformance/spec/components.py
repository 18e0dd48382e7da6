"""The components: every building block in the registry, each with the variants worth testing.

Models are declared by their families (`conformance.spec.families`); these are the parts they
are made of. Each entry's class has the same name in `numpy_ref`, `torch_impl` and `tf_impl`.
"""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.inputs import (decoder_inputs, dropout_inputs, hidden, ids, masked_hidden, positions, qkv,
                                     scores_and_mask)

TINY = Config(kind="component", d_model=32, num_heads=4, d_ff=64, vocab_size=97, max_positions=64)
FUSED = V({"attention_impl": "fused"})  # F.scaled_dot_product_attention, keras.ops.dot_product_attention

COMPONENTS = [
    Entry("linear", "Linear", TINY.replace(kind="linear"), hidden,
          {"default": V(), "no_bias": V({"use_bias": False})},
          args=lambda cfg: (cfg.d_model, cfg.d_ff, cfg.use_bias)),
    Entry("softmax", "Softmax", TINY.replace(kind="softmax"), scores_and_mask,
          {"default": V(options={"mask": "none"}), "padding": V(), "causal": V(options={"mask": "causal"}),
           "fully_masked": V(options={"mask": "fully_masked"}),
           "fill_inf": V({"mask_fill": float("-inf")}, {"mask": "fully_masked"}),
           "fill_1e4": V({"mask_fill": -1e4})}),
    Entry("activation", "Activation", TINY.replace(kind="activation"), hidden,
          {"default": V(), "gelu_tanh": V({"activation": "gelu_tanh"}), "relu": V({"activation": "relu"})}),
    Entry("dropout", "Dropout", TINY.replace(kind="dropout", dropout=0.25), dropout_inputs,
          {"default": V()}, training=True),
    Entry("layer_norm", "LayerNorm", TINY.replace(kind="layer_norm"), hidden,
          {"default": V(), "eps_1e-5": V({"layer_norm_eps": 1e-5}), "eps_1e-3": V({"layer_norm_eps": 1e-3})}),
    Entry("token_embedding", "TokenEmbedding", TINY.replace(kind="token_embedding"), ids("vocab_size"),
          {"default": V()}),
    Entry("position_embedding", "PositionEmbedding", TINY.replace(kind="position_embedding"),
          positions("ids"), {"default": V()}),
    Entry("segment_embedding", "SegmentEmbedding", TINY.replace(kind="segment_embedding", type_vocab_size=3),
          ids("type_vocab_size"), {"default": V()}),
    Entry("sinusoidal_position", "SinusoidalPositionalEncoding",
          TINY.replace(kind="sinusoidal_position", position="sinusoidal"), positions("positions"),
          {"default": V()}, float64_output=True, differentiable=False),
    Entry("scaled_dot_product_attention", "ScaledDotProductAttention",
          TINY.replace(kind="scaled_dot_product_attention"), qkv,
          {"default": V(), "no_mask": V(options={"mask": "none"}), "causal": V({"causal": True}, {"mask": "none"}),
           "padding_causal": V({"causal": True}), "fully_masked": V(options={"mask": "fully_masked"}),
           "fused": FUSED, "fused_causal": V({"attention_impl": "fused", "causal": True})}),
    Entry("multi_head_attention", "MultiHeadAttention", TINY.replace(kind="multi_head_attention"), masked_hidden,
          {"default": V(), "causal": V({"causal": True}), "cross": V(options={"cross": True}),
           "no_bias": V({"use_bias": False}), "no_mask": V(options={"mask": "none"}), "fused": FUSED}),
    Entry("feed_forward", "FeedForward", TINY.replace(kind="feed_forward"), hidden,
          {"default": V(), "relu": V({"activation": "relu"}), "gelu_tanh": V({"activation": "gelu_tanh"})}),
    Entry("encoder_layer", "EncoderLayer", TINY.replace(kind="encoder_layer"), masked_hidden,
          {"default": V(), "pre_norm_causal": V({"norm_first": True, "causal": True, "activation": "gelu_tanh",
                                                 "layer_norm_eps": 1e-5}),
           "fused": FUSED}),
    Entry("decoder_layer", "DecoderLayer", TINY.replace(kind="decoder_layer", activation="relu"),
          decoder_inputs, {"default": V(), "pre_norm": V({"norm_first": True})}),
]
