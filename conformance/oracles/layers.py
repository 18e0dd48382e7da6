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

from numpy_ref.attention import causal_mask

TORCH_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


def _torch():
    import torch
    return torch


def _t(x, dtype):
    torch = _torch()
    x = np.asarray(x)
    return torch.from_numpy(x.astype(dtype) if x.dtype.kind == "f" else x)


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
