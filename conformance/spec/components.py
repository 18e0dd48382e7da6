"""The components: every building block in the registry, each with the variants worth testing.

Models are declared by their families (`conformance.spec.families`); these are the parts they
are made of. Each entry's class has the same name in `numpy_ref`, `torch_impl` and `tf_impl`.
"""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.inputs import (decoder_inputs, dropout_inputs, hidden, ids, image_inputs, masked_hidden, positions,
                                     qkv, qkv_keys, relative_hidden, relative_positions, rotary_qk, scores_and_mask)

TINY = Config(kind="component", d_model=32, num_heads=4, d_ff=64, vocab_size=97, max_positions=64)
FUSED = V({"attention_impl": "fused"})  # F.scaled_dot_product_attention, keras.ops.dot_product_attention
# FlashAttention's loop with blocks smaller than the cases' T = 7, S = 9: several blocks and a ragged tail each way
TILED = {"attention_impl": "tiled", "attention_block_q": 2, "attention_block_k": 4}
T5_LAYER = {"norm": "rms", "layer_norm_eps": 1e-6, "feed_forward": "gated", "activation": "gelu_tanh",
            "norm_first": True, "use_bias": False, "attention_scale": 1.0}

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
          {"default": V(), "gelu_tanh": V({"activation": "gelu_tanh"}), "relu": V({"activation": "relu"}),
           "silu": V({"activation": "silu"})}),
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
           "fused": FUSED, "fused_causal": V({"attention_impl": "fused", "causal": True}),
           "causal_top_left": V({"causal": True, "causal_alignment": "top_left"}, {"mask": "none"}),
           "window": V({"causal": True, "sliding_window": 3}, {"mask": "none"}),
           "window_bidirectional": V({"sliding_window": 3, "sliding_window_right": 2}),
           "softcap": V({"attn_logit_softcap": 2.0}),
           "tiled": V(TILED, {"mask": "fully_masked"}),  # padding, and one row with no key at all
           "tiled_causal_softcap": V({**TILED, "causal": True, "attn_logit_softcap": 2.0}, {"mask": "none"}),
           "tiled_top_left": V({**TILED, "causal": True, "causal_alignment": "top_left"}, {"mask": "none"}),
           "tiled_window": V({**TILED, "sliding_window": 3, "sliding_window_right": 2})}),
    Entry("multi_head_attention", "MultiHeadAttention", TINY.replace(kind="multi_head_attention"), masked_hidden,
          {"default": V(), "causal": V({"causal": True}), "cross": V(options={"cross": True}),
           "no_bias": V({"use_bias": False}), "no_mask": V(options={"mask": "none"}), "fused": FUSED,
           # the LLaMA family's attention
           "gqa": V({"num_kv_heads": 2, "causal": True}), "multi_query": V({"num_kv_heads": 1, "causal": True}),
           "head_dim": V({"attention_head_dim": 6, "num_kv_heads": 2}),  # Gemma: H Dh != D
           "qkv_bias": V({"output_bias": False}),  # Qwen2
           "rotary": V({"position": "rotary", "num_kv_heads": 2, "causal": True}),
           "rotary_qk_norm": V({"position": "rotary", "qk_norm": True, "causal": True}),
           "sliding_window": V({"sliding_window": 3, "causal": True}),
           "softcap": V({"attn_logit_softcap": 2.0, "causal": True}),
           # T5's: a bias added to the scores, no 1/sqrt(Dh)
           "position_bias": V({"attention_scale": 1.0, "use_bias": False}, {"position_bias": True}),
           "tiled": V(TILED), "tiled_gqa_rotary": V({**TILED, "position": "rotary", "num_kv_heads": 2, "causal": True}),
           "tiled_position_bias": V({**TILED, "attention_scale": 1.0, "use_bias": False}, {"position_bias": True})}),
    Entry("feed_forward", "FeedForward", TINY.replace(kind="feed_forward"), hidden,
          {"default": V(), "relu": V({"activation": "relu"}), "gelu_tanh": V({"activation": "gelu_tanh"})}),
    Entry("encoder_layer", "EncoderLayer", TINY.replace(kind="encoder_layer"), masked_hidden,
          {"default": V(), "pre_norm_causal": V({"norm_first": True, "causal": True, "activation": "gelu_tanh",
                                                 "layer_norm_eps": 1e-5}),
           "fused": FUSED}),
    Entry("decoder_layer", "DecoderLayer", TINY.replace(kind="decoder_layer", activation="relu"),
          decoder_inputs, {"default": V(), "pre_norm": V({"norm_first": True}),
                           # T5 1.1's: pre-norm RMSNorm, gated GELU, no biases, a position bias, no 1/sqrt(Dh)
                           "t5": V(T5_LAYER, {"position_bias": True})}),
    # the LLaMA family's components
    Entry("rms_norm", "RMSNorm", TINY.replace(kind="rms_norm", norm="rms", layer_norm_eps=1e-6), hidden,
          {"default": V(), "eps_1e-5": V({"layer_norm_eps": 1e-5}),
           "offset": V({"rms_norm_offset": 1.0, "rms_norm_upcast": "all"}),  # Gemma: 1 + gamma, scaled in float32
           "upcast_all": V({"rms_norm_upcast": "all"}), "upcast_none": V({"rms_norm_upcast": "none"})}),
    Entry("rotary_embedding", "RotaryEmbedding", TINY.replace(kind="rotary_embedding", position="rotary"), rotary_qk,
          {"default": V(), "interleaved": V({"rotary_pairing": "interleaved"}), "partial": V({"rotary_dim": 4}),
           "interleaved_partial": V({"rotary_pairing": "interleaved", "rotary_dim": 4}),  # GPT-J
           "gqa": V({"num_kv_heads": 2}), "offset": V(options={"positions": "offset"}),
           "float64_angles": V({"rotary_float32": False}),
           "linear": V({"rope_scaling": "linear", "rope_factor": 4.0}),
           "dynamic": V({"rope_scaling": "dynamic", "rope_factor": 2.0, "max_positions": 3}),  # T > max_positions
           "llama3": V({"rope_scaling": "llama3", "rope_factor": 8.0}),  # every regime: kept, smoothed, divided
           "yarn": V({"rope_scaling": "yarn", "rope_factor": 4.0})}),
    Entry("gated_feed_forward", "GatedFeedForward",
          TINY.replace(kind="gated_feed_forward", feed_forward="gated", activation="silu"), hidden,
          {"default": V(), "gelu_tanh": V({"activation": "gelu_tanh"}), "bias": V({"mlp_bias": True})}),
    # DeBERTa's: log buckets past 2 (buckets 4) up to distance 8, both position terms
    Entry("disentangled_attention", "DisentangledAttention",
          TINY.replace(kind="disentangled_attention", position="relative", relative_attention=("c2p", "p2c"),
                       position_buckets=4, max_relative_positions=8), relative_hidden,
          {"default": V(), "c2p": V({"relative_attention": ("c2p",)}), "p2c": V({"relative_attention": ("p2c",)}),
           "exact_distances": V({"position_buckets": 0, "max_relative_positions": 3}),  # clipped at +-3
           "no_mask": V(options={"mask": "none"})}),
    # the Vision Transformer's
    Entry("patch_embedding", "PatchEmbedding", TINY.replace(kind="patch_embedding", image_size=16, patch_size=4),
          image_inputs,
          {"default": V(), "one_channel": V({"num_channels": 1}),
           # a 22 x 13 image (`image_inputs`): with interpolation the 2 and 1 pixels past the last whole
           # patches are dropped
           "remainder": V({"interpolate_pos_encoding": True})}),
    # the encoder-decoders' (T5)
    Entry("relative_position_bias", "RelativePositionBias",
          TINY.replace(kind="relative_position_bias", position="relative", relative_buckets=8,
                       relative_max_distance=20), relative_positions,
          {"default": V(), "causal": V({"causal": True}),  # the encoder's and the decoder's buckets
           "t5": V({"relative_buckets": 32, "relative_max_distance": 128})},
          args=lambda cfg: (cfg, not cfg.causal)),
    # attention through a feature map (issue 19): linear attention and Performer's random features
    Entry("linear_attention", "LinearAttention", TINY.replace(kind="linear_attention"), qkv_keys,
          {"default": V(), "no_mask": V(options={"mask": "none"}), "causal": V({"causal": True}, {"mask": "none"}),
           "padding_causal": V({"causal": True}),
           "causal_top_left": V({"causal": True, "causal_alignment": "top_left"}, {"mask": "none"})}),
    Entry("performer_attention", "PerformerAttention", TINY.replace(kind="performer_attention", performer_features=16),
          qkv_keys,
          {"default": V(), "no_mask": V(options={"mask": "none"}), "causal": V({"causal": True}, {"mask": "none"}),
           "padding_causal": V({"causal": True}), "features_4": V({"performer_features": 4}),
           "features_64": V({"performer_features": 64, "causal": True})}),
    # the mixture of experts' (Mixtral): 4 SwiGLU experts, 2 a token (3; all 4: dense). Not k = 1: renormalized
    # over one expert its weight is p / p = 1, and the router gets no gradient but rounding (numpy_ref.moe)
    Entry("sparse_moe", "SparseMoeBlock",
          TINY.replace(kind="sparse_moe", feed_forward="moe", activation="silu", d_ff=48, num_experts=4,
                       experts_per_token=2), hidden,
          {"default": V(), "top3": V({"experts_per_token": 3}), "all4": V({"experts_per_token": 4})}),
]
