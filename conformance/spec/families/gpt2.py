"""GPT-2 (Radford et al. 2019) as released: 124M, 355M, 774M and 1.5B; gpt2-tiny is this
project's own small GPT-2 for fast tests. A pre-norm causal decoder with a tied LM head."""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import Checkpoint, Family, KerasHub, Stack, Step, Task, Walkthrough
from conformance.spec.inputs import token_inputs
from conformance.spec.leaves import (KERAS_DENSE as DENSE, KERAS_HEADS_IN as HEADS_IN, KERAS_HEADS_OUT as HEADS_OUT,
                                     KERAS_NORM, KERAS_TABLE as TABLE, TORCH_EMBEDDING as EMBEDDING, TORCH_LINEAR as LINEAR,
                                     TORCH_NORM as NORM, Leaf)


def _gpt2(layers, width, heads):
    return Config(kind="gpt2", d_model=width, num_heads=heads, d_ff=4 * width, num_layers=layers,
                  vocab_size=50257, max_positions=1024, activation="gelu_tanh",
                  layer_norm_eps=1e-5, norm_first=True, causal=True)


TINY = Config(kind="gpt2", d_model=32, num_heads=4, d_ff=64, vocab_size=97, max_positions=64, num_layers=2,
              norm_first=True, causal=True, activation="gelu_tanh", layer_norm_eps=1e-5)

CONV1D = (Leaf("kernel", "weight"), Leaf("bias", "bias"))  # GPT-2's Conv1D: already [in, out]
FUSED_QKV = tuple(Leaf(f"{name}.{leaf}", hf, part=j) for j, name in enumerate(("query", "key", "value"))
                  for leaf, hf in (("kernel", "weight"), ("bias", "bias")))

HF = Checkpoint(
    model_type="gpt2",
    classes={"GPT2LMHeadModel": "none", "GPT2Model": "none"},  # the canonical GPT-2 always has its tied head
    base_class="GPT2Model", prefix="transformer.",
    modules={
        "embeddings.token": ("{base}wte", EMBEDDING),
        "embeddings.position": ("{base}wpe", EMBEDDING),
        "layers.{i}.attention": ("{base}h.{i}.attn.c_attn", FUSED_QKV),
        "layers.{i}.attention.output": ("{base}h.{i}.attn.c_proj", CONV1D),
        "layers.{i}.attention_norm": ("{base}h.{i}.ln_1", NORM),
        "layers.{i}.feed_forward.inner": ("{base}h.{i}.mlp.c_fc", CONV1D),
        "layers.{i}.feed_forward.outer": ("{base}h.{i}.mlp.c_proj", CONV1D),
        "layers.{i}.feed_forward_norm": ("{base}h.{i}.ln_2", NORM),
        "final_norm": ("{base}ln_f", NORM),
    },
    tied={"lm_head.weight": "embeddings.token.table"},
    buffers=("{base}h.{i}.attn.bias", "{base}h.{i}.attn.masked_bias"),
    foreign=(),
    fields={"d_model": ("n_embd", 768), "num_heads": ("n_head", 12), "d_ff": ("n_inner", None),
            "num_layers": ("n_layer", 12), "vocab_size": ("vocab_size", 50257),
            "max_positions": ("n_positions", 1024), "layer_norm_eps": ("layer_norm_epsilon", 1e-5),
            "activation": ("activation_function", "gelu_new"), "dropout": ("resid_pdrop", 0.1)},
    fixed={"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False},
    constants={"kind": "gpt2", "norm_first": True, "causal": True, "use_bias": True, "position": "learned",
               "scale_embeddings": False},
    read=lambda hf, cls: {} if hf.get("n_inner") is not None else {"d_ff": 4 * hf.get("n_embd", 768)},  # null: 4 D
    write=lambda cfg, cls: {"embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout},
)

KERAS_HUB = KerasHub(
    backbone="GPT2Backbone",
    modules={
        "embeddings.token": ("token_embedding", TABLE),
        "embeddings.position": ("position_embedding", TABLE),
        "layers.{i}.attention.query": ("transformer_layer_{i}/self_attention/query", HEADS_IN),
        "layers.{i}.attention.key": ("transformer_layer_{i}/self_attention/key", HEADS_IN),
        "layers.{i}.attention.value": ("transformer_layer_{i}/self_attention/value", HEADS_IN),
        "layers.{i}.attention.output": ("transformer_layer_{i}/self_attention/attention_output", HEADS_OUT),
        "layers.{i}.attention_norm": ("transformer_layer_{i}/self_attention_layer_norm", KERAS_NORM),
        "layers.{i}.feed_forward.inner": ("transformer_layer_{i}/feedforward_intermediate_dense", DENSE),
        "layers.{i}.feed_forward.outer": ("transformer_layer_{i}/feedforward_output_dense", DENSE),
        "layers.{i}.feed_forward_norm": ("transformer_layer_{i}/feedforward_layer_norm", KERAS_NORM),
        "final_norm": ("layer_norm", KERAS_NORM),
    },
    numerics={"activation": "gelu_tanh", "layer_norm_eps": 1e-5, "norm_first": True, "causal": True},
    required={"use_bias": True, "position": "learned", "scale_embeddings": False, "head": "none",
              "attention_impl": "reference"},
    dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                          hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=cfg.dropout,
                          max_sequence_length=cfg.max_positions),
    inputs={"input_ids": ("token_ids", None), "attention_mask": ("padding_mask", "ones")},
    outputs={"last_hidden_state": None},  # the backbone ends with its final layer norm
    tied_logits=True,
)

WALKTHROUGH = Walkthrough(
    "A one-layer GPT-2 (pre-norm, causal, tanh GELU, D = 8) on 4 tokens, the 4th padding.",
    dict(d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_positions=8, num_layers=1, norm_first=True,
         causal=True, activation="gelu_tanh", layer_norm_eps=1e-5),
    {"input_ids": [[2, 7, 7, 5]], "attention_mask": [[1, 1, 1, 0]]},
    (Step("embeddings.output", "Token rows plus position rows; no layer norm here (pre-norm).",
          "transformers' hidden_states[0]."),
     Step("layers.0.attention_norm.output", "Pre-norm: the attention sees LN(h), the residual h."),
     Step("layers.0.attention.probs", "Causal and padded: token i sees 0..i, never the pad.",
          "transformers' GPT-2 fuses q, k, v in one Conv1D c_attn [D, 3D], already [in, out]."),
     Step("layers.0.feed_forward.activation.output", "GELU, tanh form (GPT-2's gelu_new)."),
     Step("layers.0.output", "h + Attention(LN(h)), then h + FFN(LN(h))."),
     Step("final_norm.output", "The final layer norm a pre-norm stack needs.",
          "transformers' hidden_states[-1] is after this norm, not the last layer's output."),
     Step("logits", "h @ E_token^T: the head is tied to the token table.")),
    shows=("num_layers", "num_heads", "head_dim", "d_ff", "activation", "layer_norm_eps", "norm_first", "causal",
           "vocab_size", "max_positions"),
    transformers_steps={"embeddings.output": ("hidden_states", 0), "layers.0.attention.probs": ("attentions", 0),
                        "final_norm.output": ("hidden_states", -1), "logits": ("logits", None)},
)

STACK = Stack(
    layers="layers",
    embedding_call=lambda x: ((x["input_ids"], 0), {}),  # no cache: positions from 0
    layer_call=lambda x: {"mask": x.get("attention_mask")},
    rows={"embeddings.token.table": "input_ids"},
    vocabulary={"embeddings.token.table": 0},
    head_reads=lambda cfg: ("embeddings.token.table",),  # the tied head
)

FAMILY = Family(
    entry=Entry("gpt2", "GPT2", TINY, token_inputs,
                {"default": V(), "fused": V({"attention_impl": "fused"})}, is_model=True),
    presets={"gpt2-tiny": _gpt2(2, 128, 2), "gpt2": _gpt2(12, 768, 12), "gpt2-medium": _gpt2(24, 1024, 16),
             "gpt2-large": _gpt2(36, 1280, 20), "gpt2-xl": _gpt2(48, 1600, 25)},
    tasks={"causal_lm": Task("none")},
    pretraining="causal_lm",
    generates=True,
    checkpoints=(HF,), keras_hub=(KERAS_HUB,), walkthrough=WALKTHROUGH, base_preset="gpt2",
    stack=STACK,
)
