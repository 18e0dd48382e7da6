"""Parameter counts: summed over the NumPy reference's declarations, by component.

Every component declares its parameters next to its math (`Module.param(name, *shape)`: a
linear layer's `kernel (d_in, d_out)` and `bias (d_out,)`, a layer norm's `gamma` and `beta`,
an embedding's `table (num, D)`), so a model's count is the sum over its module tree, nothing
allocated (`registry.param_shapes`). Grouped by what each weight belongs to:

    embeddings, attention, feed_forward, norms (inside the layers), final_norm, pooler, head

BERT-base: embeddings 23,837,184; each layer 7,087,872; pooler 590,592; total 109,482,240. The
same count is checked against each framework's own `num_parameters()` and `transformers`'.
"""
from __future__ import annotations

import math
import re

from conformance.core.config import Config
from conformance.spec import families, registry
from conformance.weights import checkpoints

COMPONENTS = ("embeddings", "attention", "feed_forward", "norms", "final_norm", "pooler", "head")
TOP_LEVEL = {"embeddings": "embeddings", "source_embedding": "embeddings", "target_embedding": "embeddings",
             "position": "embeddings", "relative": "embeddings", "relative_norm": "embeddings",  # DeBERTa's table
             "final_norm": "final_norm", "pooler": "pooler",
             # the encoder-decoders': a shared table, each stack's positions (T5's relative bias table) and norms
             "token_embedding": "embeddings", "encoder_position": "embeddings", "decoder_position": "embeddings",
             "encoder_embedding_norm": "embeddings", "decoder_embedding_norm": "embeddings",
             "encoder_norm": "final_norm", "decoder_norm": "final_norm"}  # anything else: head
PARTS = ("attention", "feed_forward", "norms")


def check_model(cfg: Config) -> None:
    if not registry.get(cfg.kind).is_model:
        raise ValueError(f"costs cover whole models {list(families.FAMILIES)}; received kind={cfg.kind!r}")


def component(name: str) -> str:
    """The component a canonical parameter name belongs to (`encoder.3.attention.query.kernel` -> attention)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1].isdigit():  # a layer of a stack: encoder.3, layers.11, decoder.0
        sub = parts[2]
        return "norms" if sub.endswith("_norm") else "attention" if sub.endswith("attention") else "feed_forward"
    return TOP_LEVEL.get(parts[0], "head")


def count(cfg: Config) -> dict:
    """{"total", "breakdown" (by component), "per_layer" (stack -> its first layer's parts), "layers"
    (stack -> number of layers)} summed over the declared shapes."""
    check_model(cfg)
    breakdown = dict.fromkeys(COMPONENTS, 0)
    per_layer: dict[str, dict] = {}
    layers: dict[str, set] = {}
    for name, shape in registry.param_shapes(cfg).items():
        n, part = math.prod(shape), component(name)
        breakdown[part] += n
        m = re.match(r"(\w+)\.(\d+)\.", name)
        if m:
            layers.setdefault(m.group(1), set()).add(m.group(2))
            if m.group(2) == "0":
                per_layer.setdefault(m.group(1), dict.fromkeys(PARTS, 0))[part] += n
    for layer in per_layer.values():
        layer["total"] = sum(layer[p] for p in PARTS)
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "per_layer": per_layer,
            "layers": {k: len(v) for k, v in layers.items()}}


def transformers_count(cfg: Config) -> dict:
    """`num_parameters()` of the matching `transformers` model, built from its config on the meta device."""
    family = families.get(cfg.kind)
    cls = family.transformers_class(cfg)
    if cls is None:
        return {"model": None, "total": None,
                "reason": f"transformers has no model with the {cfg.kind} family's layout and head={cfg.head!r}"}
    import torch
    import transformers
    config = transformers.AutoConfig.for_model(**checkpoints.config_to_hf(cfg, family.checkpoint(cfg), cls))
    with torch.device("meta"):  # shapes only: instant for gpt2-xl
        checkpoint = family.checkpoint(cfg)
        model = checkpoint.adjust(getattr(transformers, cls)(config, **checkpoint.init(cfg, cls)), cfg)
    return {"model": cls, "total": model.num_parameters()}
