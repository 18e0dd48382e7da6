"""The libraries' own layers, loaded with the canonical weights, as independent oracles.

These mappings are to *library* layers (torch.nn.MultiheadAttention's fused
`in_proj_weight`, Keras MultiHeadAttention's per-head `(D, H, Dh)` kernels), not to
this project's mirrors, whose one mapping lives in `conformance.weights.mapping`. Each function
takes canonical weights and NumPy inputs and returns NumPy, so a test can hold a
library's answer against the float64 reference and against our twin.

Mask conventions differ and are converted here, once: ours is True = attend;
torch's boolean `attn_mask` / `key_padding_mask` are True = *not* allowed (but
`F.scaled_dot_product_attention`'s boolean mask is True = attend); Keras's
`attention_mask` is True = attend.
"""
from __future__ import annotations

import numpy as np

from conformance.spec.families.llama import rope_parameters
from numpy_ref.attention import causal_mask

TORCH_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


def _torch():
    import torch
    return torch


def _t(x, dtype):
    torch = _torch()
    x = np.asarray(x)
    return torch.from_numpy(x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x)


def _activation(cfg):
    import torch.nn.functional as F
    if cfg.activation == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return TORCH_ACTIVATIONS[cfg.activation]


def torch_sdpa(cfg, q, k, v, mask, dtype):
    import torch.nn.functional as F
    T, S = q.shape[2], k.shape[2]
    if cfg.causal:
        tri = causal_mask(T, S)[None, None]
        mask = tri if mask is None else mask & tri
    out = F.scaled_dot_product_attention(_t(q, dtype), _t(k, dtype), _t(v, dtype),
                                         attn_mask=None if mask is None else _t(mask, dtype).bool(),
                                         scale=cfg.scale)
    return out.numpy()


def _load_torch_mha(attn, w, prefix, cfg):
    """Canonical query/key/value/output -> nn.MultiheadAttention's fused in_proj."""
    torch = _torch()
    with torch.no_grad():
        attn.in_proj_weight.copy_(torch.from_numpy(np.concatenate(
            [w[f"{prefix}{p}.kernel"].T for p in ("query", "key", "value")])))
        attn.out_proj.weight.copy_(torch.from_numpy(w[f"{prefix}output.kernel"].T.copy()))
        if cfg.use_bias:
            attn.in_proj_bias.copy_(torch.from_numpy(np.concatenate(
                [w[f"{prefix}{p}.bias"] for p in ("query", "key", "value")])))
            attn.out_proj.bias.copy_(torch.from_numpy(w[f"{prefix}output.bias"]))


def _key(prefix, leaf):
    return f"{prefix}.{leaf}" if prefix else leaf


def _load_torch_linear(linear, w, prefix):
    torch = _torch()
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w[_key(prefix, "kernel")].T.copy()))
        linear.bias.copy_(torch.from_numpy(w[_key(prefix, "bias")]))


def _load_torch_norm(norm, w, prefix):
    torch = _torch()
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w[_key(prefix, "gamma")]))
        norm.bias.copy_(torch.from_numpy(w[_key(prefix, "beta")]))


def _blocked(mask):
    """Our True = attend -> torch's True = blocked."""
    return None if mask is None else ~_t(mask, "float64").bool()


def torch_multi_head_attention(cfg, w, x, context=None, mask=None, dtype="float64"):
    torch = _torch()
    attn = torch.nn.MultiheadAttention(cfg.d_model, cfg.num_heads, bias=cfg.use_bias, batch_first=True)
    attn = attn.to(getattr(torch, dtype)).eval()
    _load_torch_mha(attn, w, "", cfg)
    source = x if context is None else context
    T, S = x.shape[1], source.shape[1]
    attn_mask = _t(~causal_mask(T, S), dtype).bool() if cfg.causal else None
    out, _ = attn(_t(x, dtype), _t(source, dtype), _t(source, dtype), key_padding_mask=_blocked(mask),
                  attn_mask=attn_mask, need_weights=False)
    return out.detach().numpy()


def _torch_layer(name, cfg, dtype):
    """torch.nn.TransformerEncoderLayer / DecoderLayer with every numeric convention from `cfg`."""
    torch = _torch()
    layer = getattr(torch.nn, name)(
        cfg.d_model, cfg.num_heads, cfg.d_ff, dropout=0.0, activation=_activation(cfg),
        layer_norm_eps=cfg.layer_norm_eps, batch_first=True, norm_first=cfg.norm_first)
    return layer.to(getattr(torch, dtype)).eval()


def torch_encoder_layer(cfg, w, x, mask=None, dtype="float64"):
    layer = _torch_layer("TransformerEncoderLayer", cfg, dtype)
    _load_torch_mha(layer.self_attn, w, "attention.", cfg)
    _load_torch_linear(layer.linear1, w, "feed_forward.inner")
    _load_torch_linear(layer.linear2, w, "feed_forward.outer")
    _load_torch_norm(layer.norm1, w, "attention_norm")
    _load_torch_norm(layer.norm2, w, "feed_forward_norm")
    T = x.shape[1]
    src_mask = _t(~causal_mask(T, T), dtype).bool() if cfg.causal else None
    # Gradients on: keeps torch off its inference fast path, so this is the documented math.
    out = layer(_t(x, dtype), src_mask=src_mask, src_key_padding_mask=_blocked(mask), is_causal=cfg.causal)
    return out.detach().numpy()


def torch_decoder_layer(cfg, w, x, memory, mask=None, memory_mask=None, dtype="float64"):
    layer = _torch_layer("TransformerDecoderLayer", cfg, dtype)
    _load_torch_mha(layer.self_attn, w, "self_attention.", cfg)
    _load_torch_mha(layer.multihead_attn, w, "cross_attention.", cfg)
    _load_torch_linear(layer.linear1, w, "feed_forward.inner")
    _load_torch_linear(layer.linear2, w, "feed_forward.outer")
    for i, name in enumerate(("self_attention_norm", "cross_attention_norm", "feed_forward_norm"), 1):
        _load_torch_norm(getattr(layer, f"norm{i}"), w, name)
    T = x.shape[1]
    out = layer(_t(x, dtype), _t(memory, dtype), tgt_mask=_t(~causal_mask(T, T), dtype).bool(),
                tgt_key_padding_mask=_blocked(mask), memory_key_padding_mask=_blocked(memory_mask),
                tgt_is_causal=True)
    return out.detach().numpy()


def torch_layer_norm(cfg, w, x, dtype="float64"):
    torch = _torch()
    norm = torch.nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps).to(getattr(torch, dtype))
    _load_torch_norm(norm, w, "")
    return norm(_t(x, dtype)).detach().numpy()


def keras_multi_head_attention(cfg, w, x, context=None, mask=None, dtype="float64", exact_scale=True):
    """Keras's MultiHeadAttention with our weights.

    Known trap (Keras 3.15, TensorFlow backend): the layer keeps 1/sqrt(Dh) as a Python
    float and `ops.dot_product_attention` applies it with `tf.cast(scale, logits.dtype)`,
    which first makes a float32 constant: in float64 the scale is rounded to float32 and
    outputs move by about 1e-7. `exact_scale=True` stores the scale as a float64 NumPy
    scalar, which `tf.cast` keeps exact; `test_keras_float64_attention_scale_trap` shows
    the difference with the layer as shipped.
    """
    import keras
    H, Dh, D = cfg.num_heads, cfg.head_dim, cfg.d_model
    attn = keras.layers.MultiHeadAttention(H, Dh, use_bias=cfg.use_bias, dtype=dtype)
    if exact_scale:
        attn._inverse_sqrt_key_dim = np.float64(cfg.scale)
    source = x if context is None else context
    T, S = x.shape[1], source.shape[1]
    attn.build(x.shape, source.shape)
    # Keras keeps each projection per head: kernel (D, H, Dh), bias (H, Dh), output (H, Dh, D).
    for layer, name in ((attn.query_dense, "query"), (attn.key_dense, "key"), (attn.value_dense, "value")):
        layer.kernel.assign(w[f"{name}.kernel"].reshape(D, H, Dh))
        if cfg.use_bias:
            layer.bias.assign(w[f"{name}.bias"].reshape(H, Dh))
    attn.output_dense.kernel.assign(w["output.kernel"].reshape(H, Dh, D))
    if cfg.use_bias:
        attn.output_dense.bias.assign(w["output.bias"])
    full = None if mask is None else np.broadcast_to(mask[:, None, :], (x.shape[0], T, S))
    tensor = keras.ops.convert_to_tensor
    out = attn(tensor(x, dtype), tensor(source, dtype), attention_mask=full, use_causal_mask=cfg.causal)
    return keras.ops.convert_to_numpy(out)


def keras_layer_norm(cfg, w, x, dtype="float64"):
    import keras
    norm = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, dtype=dtype)
    norm.build(x.shape)
    norm.gamma.assign(w["gamma"])
    norm.beta.assign(w["beta"])
    return keras.ops.convert_to_numpy(norm(x.astype(dtype)))


# ---------------------------------------------------------------------------- the LLaMA family's components

def _rms_scale(cfg, w):
    """offset + gamma, in float64: the one weight of a library RMSNorm that has no offset (in float32 it
    rounds as the twins' own offset + gamma does)."""
    return cfg.rms_norm_offset + w["gamma"].astype(np.float64)


def torch_rms_norm(cfg, w, x, dtype="float64"):
    """`torch.nn.RMSNorm(D, eps)`; it has no offset, so its weight is offset + gamma."""
    torch = _torch()
    norm = torch.nn.RMSNorm(x.shape[-1], eps=cfg.layer_norm_eps).to(getattr(torch, dtype))
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(_rms_scale(cfg, w)))
    return norm(_t(x, dtype)).detach().numpy()


def keras_rms_norm(cfg, w, x, dtype="float64"):
    """`keras.layers.RMSNormalization(epsilon)`, its scale offset + gamma (it has no offset either)."""
    import keras
    norm = keras.layers.RMSNormalization(epsilon=cfg.layer_norm_eps, dtype=dtype)
    norm.build(x.shape)
    norm.scale.assign(_rms_scale(cfg, w))
    return keras.ops.convert_to_numpy(norm(x.astype(dtype)))


def transformers_rms_norm(cfg, w, x, dtype="float32"):
    """transformers' own RMSNorm: `LlamaRMSNorm` (weight gamma), or `GemmaRMSNorm` (output * (1 + weight))
    for the offset form. Both compute in float32 whatever the input (`x.to(torch.float32)`,
    `x.float()`): in a float64 model that is a downcast, so float64 agrees only to float32 precision."""
    torch = _torch()
    if cfg.rms_norm_offset not in (0.0, 1.0):
        raise ValueError(f"transformers' RMSNorms have offset 0 (Llama) or 1 (Gemma); "
                         f"received rms_norm_offset={cfg.rms_norm_offset}")
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    cls = GemmaRMSNorm if cfg.rms_norm_offset == 1.0 else LlamaRMSNorm
    norm = cls(x.shape[-1], eps=cfg.layer_norm_eps).to(getattr(torch, dtype))
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w["gamma"]))
        return norm(_t(x, dtype)).numpy()


def torch_silu(cfg, w, x, dtype="float64"):
    import torch.nn.functional as F
    return F.silu(_t(x, dtype)).numpy()


def keras_silu(cfg, w, x, dtype="float64"):
    import keras
    return keras.ops.convert_to_numpy(keras.activations.silu(keras.ops.convert_to_tensor(x.astype(dtype))))


def transformers_gated_feed_forward(cfg, w, x, dtype="float64"):
    """`LlamaMLP` (hidden_act "silu", `mlp_bias`), or `GemmaMLP` for tanh GELU ("gelu_pytorch_tanh", no biases):
    down_proj(act(gate_proj(x)) * up_proj(x)), the canonical gate, up and down kernels transposed in."""
    torch = _torch()
    from transformers import GemmaConfig, LlamaConfig
    from transformers.models.gemma.modeling_gemma import GemmaMLP
    from transformers.models.llama.modeling_llama import LlamaMLP
    sizes = dict(hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_attention_heads=1, num_key_value_heads=1)
    if cfg.activation == "silu":
        mlp = LlamaMLP(LlamaConfig(**sizes, hidden_act="silu", mlp_bias=cfg.mlp_bias))
    elif cfg.activation == "gelu_tanh" and not cfg.mlp_bias:
        mlp = GemmaMLP(GemmaConfig(**sizes, hidden_act="gelu_pytorch_tanh"))
    else:
        raise ValueError(f"transformers' gated MLPs are SwiGLU (LlamaMLP) and bias-free GeGLU (GemmaMLP); received "
                         f"activation={cfg.activation!r}, mlp_bias={cfg.mlp_bias}")
    mlp = mlp.to(getattr(torch, dtype))
    with torch.no_grad():
        for ours, theirs in (("gate", mlp.gate_proj), ("up", mlp.up_proj), ("down", mlp.down_proj)):
            theirs.weight.copy_(torch.from_numpy(w[f"{ours}.kernel"].T.copy()))
            if cfg.mlp_bias:
                theirs.bias.copy_(torch.from_numpy(w[f"{ours}.bias"]))
        return mlp(_t(x, dtype)).numpy()


def transformers_rotary(cfg, q, k, position_ids, dtype="float32"):
    """transformers' own rotary embedding on q (B, H, T, Dh) and k (B, KV, T, Dh) -> {"q", "k"}:
    - "half" pairing, every feature: `LlamaRotaryEmbedding` built from a `LlamaConfig(rope_parameters=...)`
      (every rope type) and `modeling_llama.apply_rotary_pos_emb`;
    - "half", Dr < Dh: `PhiRotaryEmbedding` (`partial_rotary_factor` Dr / Dh) and Phi's
      `apply_rotary_pos_emb` on the first Dr features, the rest passed, as `PhiAttention.forward` splits them;
    - "interleaved": GPT-J's table (`GPTJRotaryEmbedding`, base 10000, no scaling) and its
      `apply_rotary_pos_emb` (`rotate_every_two`) on (B, T, heads, Dh), partial as `GPTJAttention.forward`.
    Each builds cos and sin in float32 (the table, or the angle and its cos) whatever `dtype`."""
    torch = _torch()
    import transformers
    transformers.logging.set_verbosity_error()  # its config checks warn, e.g. original == max positions
    Dh, Dr = cfg.head_dim, cfg.rotary_dim or cfg.head_dim
    tq, tk, pos = _t(q, dtype), _t(k, dtype), torch.from_numpy(np.asarray(position_ids))
    with torch.no_grad():
        if cfg.rotary_pairing == "interleaved":
            from transformers import GPTJConfig
            from transformers.models.gptj import modeling_gptj as gptj
            if cfg.rope_scaling != "none" or cfg.rope_theta != 10000.0:
                raise ValueError(f"GPT-J's rotary has base 10000 and no scaling; received rope_theta={cfg.rope_theta}, "
                                 f"rope_scaling={cfg.rope_scaling!r}")
            config = GPTJConfig(n_embd=cfg.num_heads * Dh, n_head=cfg.num_heads, rotary_dim=Dr,
                                n_positions=int(pos.max()) + 1)
            sin, cos = gptj.GPTJRotaryEmbedding(config)(tq, pos)                     # (B, T, Dr / 2)

            def turn(x):                                                              # (B, heads, T, Dh)
                x = x.transpose(1, 2)                                                 # (B, T, heads, Dh)
                x = torch.cat([gptj.apply_rotary_pos_emb(x[..., :Dr], sin, cos), x[..., Dr:]], dim=-1)
                return x.transpose(1, 2)
            return {"q": turn(tq).numpy(), "k": turn(tk).numpy()}
        if Dr < Dh:
            from transformers import PhiConfig
            from transformers.models.phi import modeling_phi as phi
            config = PhiConfig(hidden_size=cfg.num_heads * Dh, num_attention_heads=cfg.num_heads,
                               max_position_embeddings=cfg.max_positions,
                               rope_parameters={**rope_parameters(cfg), "partial_rotary_factor": Dr / Dh})
            cos, sin = phi.PhiRotaryEmbedding(config)(tq, pos)                        # (B, T, Dr)
            q_rot, k_rot = phi.apply_rotary_pos_emb(tq[..., :Dr], tk[..., :Dr], cos, sin)
            return {"q": torch.cat([q_rot, tq[..., Dr:]], dim=-1).numpy(),
                    "k": torch.cat([k_rot, tk[..., Dr:]], dim=-1).numpy()}
        from transformers import LlamaConfig
        from transformers.models.llama import modeling_llama as llama
        config = LlamaConfig(hidden_size=cfg.num_heads * Dh, num_attention_heads=cfg.num_heads, head_dim=Dh,
                             num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_positions,
                             rope_parameters=rope_parameters(cfg))
        cos, sin = llama.LlamaRotaryEmbedding(config)(tq, pos)                        # (B, T, Dh)
        q_out, k_out = llama.apply_rotary_pos_emb(tq, tk, cos, sin)
        return {"q": q_out.numpy(), "k": k_out.numpy()}
