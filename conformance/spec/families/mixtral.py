"""The Mixtral family: Mixtral 8x7B (Jiang et al. 2024) and this project's mixtral-tiny. A Mistral
(`conformance.spec.families.llama`) whose feed-forward is the sparse mixture of experts: a router and
E SwiGLU experts per layer, k of them run per token (`numpy_ref.moe`). The published dimensions give
exactly `transformers`' MixtralForCausalLM parameter count, 46,702,792,704 for 8x7B, of which a token
runs 12,879,925,248 (two experts of eight in each of 32 layers).
"""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.families.llama import (COMMON, FIELDS, KERAS_INPUTS, KERAS_KERNEL, LINEAR, LLAMA_CONSTANTS,
                                             NO_EXTRAS, _checkpoint, _common_dims, _keras_llama_modules, _modules,
                                             read_common, write_common)
from conformance.spec.family import Decoding, Family, KerasHub, Step, Task, Walkthrough
from conformance.spec.inputs import causal_lm_inputs
from conformance.spec.leaves import Leaf

MOE = dict(COMMON, kind="mixtral", feed_forward="moe", rope_theta=1000000.0, layer_norm_eps=1e-5,
           tie_embeddings=False, checkpoint="mixtral")


def _mixtral(layers, width, heads, kv_heads, d_ff, vocab, max_positions, experts, k, **kw):
    return Config(d_model=width, num_heads=heads, num_kv_heads=kv_heads, d_ff=d_ff, num_layers=layers,
                  vocab_size=vocab, max_positions=max_positions, num_experts=experts, experts_per_token=k,
                  **{**MOE, **kw})


PRESETS = {
    "mixtral-tiny": _mixtral(2, 128, 4, 2, 224, 1000, 256, 4, 2),
    "mixtral-8x7b": _mixtral(32, 4096, 32, 8, 14336, 32000, 32768, 8, 2),
}

TINY = _mixtral(2, 32, 4, 2, 48, 97, 64, 4, 2)

# ------------------------------------------------------------------ Hugging Face: Mistral's layout, experts per file

MOE_BLOCK = "{base}layers.{i}.block_sparse_moe"  # what save_pretrained writes (transformers 5 fuses them in memory)
MODULES = {**{k: v for k, v in _modules("post_attention_layernorm", "post_attention_layernorm").items()
              if ".feed_forward." not in k},
           "layers.{i}.feed_forward.router": (f"{MOE_BLOCK}.gate", LINEAR[:1]),
           "layers.{i}.feed_forward.experts.{e}.gate": (f"{MOE_BLOCK}.experts.{{e}}.w1", LINEAR[:1]),
           "layers.{i}.feed_forward.experts.{e}.down": (f"{MOE_BLOCK}.experts.{{e}}.w2", LINEAR[:1]),
           "layers.{i}.feed_forward.experts.{e}.up": (f"{MOE_BLOCK}.experts.{{e}}.w3", LINEAR[:1])}
MOE_FIELDS = {**FIELDS, "num_experts": ("num_local_experts", 8), "experts_per_token": ("num_experts_per_tok", 2),
              "router_aux_loss_coef": ("router_aux_loss_coef", 0.001), "sliding_window": ("sliding_window", None),
              "max_positions": ("max_position_embeddings", 131072), "layer_norm_eps": ("rms_norm_eps", 1e-5)}


def _read_mixtral(hf, cls):
    """Mistral's fields; an unstated rotary base is MixtralConfig's default_theta, 1e6."""
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 1000000.0))
    return {**read_common({**hf, "rope_theta": theta}, cls), "rope_theta": float(theta)}


def _write_mixtral(cfg, cls):
    """Mistral's keys, and transformers' eager experts (the per-expert loop of MixtralExperts, which runs in
    float64 too; its default grouped_mm kernel takes float32 and half precision only)."""
    return {**write_common(cfg, cls), "experts_implementation": "eager"}


CHECKPOINTS = (
    _checkpoint("mixtral", "Mixtral", {**LLAMA_CONSTANTS, "kind": "mixtral", "use_bias": False, "feed_forward": "moe"},
                MODULES, fields=MOE_FIELDS, fixed={"router_jitter_noise": 0.0}, read=_read_mixtral,
                write=_write_mixtral),
)

# ------------------------------------------------------------------ keras-hub: MixtralBackbone, experts stacked

# keras-hub keeps each layer's experts as three (E, in, out) variables; "P#{e}.leaf" is expert e's row of
# the variable P.leaf (`conformance.oracles.keras_hub`). Its expert math is the same SwiGLU, run densely on
# every token and weighted by the same renormalized top-k routing (zero for the experts not chosen).
KERAS_MOE = "@transformer_layers.{i}._sparse_moe_block"  # by attribute: the block's name has a global counter
KERAS_MODULES = {**{k: v for k, v in _keras_llama_modules().items() if ".feed_forward." not in k},
                 "layers.{i}.feed_forward.router": (f"{KERAS_MOE}._sparse_feedforward_gate_dense", KERAS_KERNEL),
                 **{f"layers.{{i}}.feed_forward.experts.{{e}}.{ours}": (
                     f"{KERAS_MOE}.expert_bank#{{e}}", (Leaf("kernel", f"_expert_feedforward_{theirs}_dense"),))
                    for ours, theirs in (("gate", "gate"), ("up", "intermediate"), ("down", "output"))}}
KERAS_HUB = (
    # as MistralBackbone: RMSNorm scaled in float32 before the cast back, the rotary table in float32, an
    # untied head; its window defaults to 512 tokens, so no window is asked for as the whole context
    KerasHub("MixtralBackbone", KERAS_MODULES, {"rms_norm_upcast": "all", "rotary_float32": True,
                                                "tie_embeddings": False},
             {**NO_EXTRAS, "use_bias": False, "rope_scaling": "none", "layer_types": ()},
             lambda cfg: {**_common_dims(cfg), "num_experts": cfg.num_experts, "top_k": cfg.experts_per_token,
                          "router_aux_loss_coef": cfg.router_aux_loss_coef,
                          "sliding_window": cfg.sliding_window or cfg.max_positions},
             KERAS_INPUTS, {"last_hidden_state": None}, tied_logits=True, model_type="mixtral"),
)

# ------------------------------------------------------------------------------ walkthrough

WALKTHROUGH = Walkthrough(
    "A one-layer Mixtral (D = 16, 4 query heads sharing 2 key/value heads, 4 SwiGLU experts of width 24, "
    "2 per token) on 4 tokens.",
    dict(d_model=16, num_heads=4, num_kv_heads=2, d_ff=24, vocab_size=11, max_positions=16, num_layers=1),
    {"input_ids": [[2, 7, 7, 5]], "attention_mask": [[1, 1, 1, 1]], "position_ids": [[0, 1, 2, 3]]},
    (Step("layers.0.feed_forward_norm.output", "RMSNorm before the experts, as before Mistral's feed-forward."),
     Step("layers.0.feed_forward.router.output", "Router logits: one per expert and token, x W_router (no bias)."),
     Step("layers.0.feed_forward.probs", "softmax over the 4 experts; the two largest per row are chosen."),
     Step("layers.0.feed_forward.routing", "The two chosen probabilities renormalized to sum to 1; zeros "
                                           "elsewhere: the two 7s (same token, other positions) may differ."),
     Step("layers.0.feed_forward.output", "sum_j r_j FFN_j(x): each expert ran only on its own tokens."),
     Step("aux_loss", "E sum_e f_e P_e: k (here 2) when routing is uniform, larger when unbalanced.")),
    shows=("num_layers", "num_experts", "experts_per_token", "d_ff", "router_aux_loss_coef", "rope_theta"),
    transformers_steps={"logits": ("logits", None)},
    transformers_dtype="float32",
    transformers_why="its router softmax is float32 in every dtype (router_logits.float())",
)

FAMILY = Family(
    entry=Entry("mixtral", "Mixtral", TINY, causal_lm_inputs,
                {"default": V()},
                is_model=True),
    presets=PRESETS,
    tasks={"causal_lm": Task("none")},
    pretraining="causal_lm",
    generates=True,
    decoding=Decoding(position_ids=True),
    checkpoints=CHECKPOINTS,
    keras_hub=KERAS_HUB,
    walkthrough=WALKTHROUGH,
    base_preset="mixtral-8x7b",
)
