"""Parameter counts: from the config alone, from the canonical weight declaration, by component.

Shape legend: D d_model, F d_ff, H heads, L layers, V vocab_size, P max_positions,
G type_vocab_size (BERT segments).

    linear(i, o)   = i o + o            (kernel + bias; attention drops its bias if not use_bias)
    layer norm     = 2 D                (gamma, beta)
    attention      = 4 linear(D, D)     (query, key, value, output)
    feed-forward   = linear(D, F) + linear(F, D)
    encoder layer  = attention + feed-forward + 2 norms
    decoder layer  = 2 attentions (self, cross) + feed-forward + 3 norms

    BERT    embeddings (V + P + G) D + norm,  L encoder layers,  pooler linear(D, D)
            heads: mlm linear(D, D) + norm + V (decoder bias; the decoder itself is the tied token
            table), classification linear(D, labels) after the pooler, qa linear(D, 2)
    GPT-2   embeddings (V + P) D,  L layers,  final norm  (the LM head is the tied token table)
    Transformer  token table(s) V D (one if shared), learned positions P D (none if sinusoidal),
            L encoder + L' decoder layers, output projection D V unless tied

BERT-base: embeddings 23,837,184; each layer 7,087,872; pooler 590,592; total 109,482,240.
"""
from __future__ import annotations

import math

from conformance.spec import registry
from conformance.core.config import Config

MODELS = ("bert", "gpt2", "transformer")
COMPONENTS = ("embeddings", "attention", "feed_forward", "norms", "final_norm", "pooler", "head")
LAYER_LISTS = ("encoder", "decoder", "layers")  # canonical names of the layer lists
TOP_LEVEL = {"embeddings": "embeddings", "source_embedding": "embeddings", "target_embedding": "embeddings",
             "position": "embeddings", "final_norm": "final_norm", "pooler": "pooler"}  # anything else: head


def check_model(cfg: Config) -> None:
    if cfg.kind not in MODELS:
        raise ValueError(f"costs cover whole models {list(MODELS)}; received kind={cfg.kind!r}")


def layer_lists(cfg: Config) -> dict[str, int]:
    """Canonical layer-list name -> number of layers."""
    return {"bert": {"encoder": cfg.num_layers}, "gpt2": {"layers": cfg.num_layers},
            "transformer": {"encoder": cfg.num_layers, "decoder": cfg.num_decoder_layers}}[cfg.kind]


def analytic(cfg: Config) -> dict:
    """Counts from the config's integers alone: nothing declared, nothing allocated."""
    check_model(cfg)
    D, F, V, P = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.max_positions
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    norm, attention = 2 * D, 4 * linear(D, D, cfg.use_bias)
    encoder = {"attention": attention, "feed_forward": linear(D, F) + linear(F, D), "norms": 2 * norm}
    per_layer = {name: dict(encoder) for name in layer_lists(cfg)}
    top = dict.fromkeys(("embeddings", "final_norm", "pooler", "head"), 0)
    if cfg.kind == "bert":
        top["embeddings"] = (V + P + cfg.type_vocab_size) * D + norm
        top["pooler"] = linear(D, D) if cfg.head in ("none", "classification") else 0
        top["head"] = {"none": 0, "mlm": linear(D, D) + norm + V, "qa": linear(D, 2),
                       "classification": linear(D, cfg.num_labels)}[cfg.head]
    elif cfg.kind == "gpt2":
        top["embeddings"], top["final_norm"] = (V + P) * D, norm
    else:
        tables = 1 if cfg.share_embeddings else 2
        top["embeddings"] = tables * V * D + (P * D if cfg.position == "learned" else 0)
        top["head"] = 0 if cfg.tie_embeddings else D * V
        per_layer["decoder"] = {**encoder, "attention": 2 * attention, "norms": 3 * norm}
    return _assemble(top, per_layer, layer_lists(cfg))


def component(name: str) -> str:
    """The component a canonical parameter name belongs to (`encoder.3.attention.query.kernel` -> attention)."""
    parts = name.split(".")
    if parts[0] in LAYER_LISTS:
        sub = parts[2]
        return "norms" if sub.endswith("_norm") else "attention" if sub.endswith("attention") else "feed_forward"
    return TOP_LEVEL.get(parts[0], "head")


def canonical(cfg: Config) -> dict:
    """The same breakdown, summed over the NumPy reference's declared shapes (`registry.param_shapes`)."""
    check_model(cfg)
    top = dict.fromkeys(("embeddings", "final_norm", "pooler", "head"), 0)
    per_layer = {name: dict.fromkeys(("attention", "feed_forward", "norms"), 0) for name in layer_lists(cfg)}
    layers = dict.fromkeys(("attention", "feed_forward", "norms"), 0)
    for name, shape in registry.param_shapes(cfg).items():
        n, part, parts = math.prod(shape), component(name), name.split(".")
        if parts[0] in LAYER_LISTS:
            layers[part] += n
            if parts[1] == "0":
                per_layer[parts[0]][part] += n
        else:
            top[part] += n
    out = _assemble(top, per_layer, layer_lists(cfg))
    out["breakdown"].update(layers)  # summed over every layer, not per_layer x L: a layer that differed would show
    out["total"] = sum(out["breakdown"].values())
    return out


def _assemble(top: dict, per_layer: dict, counts: dict) -> dict:
    for layer in per_layer.values():
        layer["total"] = layer["attention"] + layer["feed_forward"] + layer["norms"]
    breakdown = {c: top.get(c, 0) + sum(counts[k] * per_layer[k].get(c, 0) for k in per_layer)
                 for c in COMPONENTS}
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "per_layer": per_layer,
            "layers": dict(counts)}


def transformers_class(cfg: Config) -> str | None:
    """The `transformers` class with exactly this model's parameters, or None where it has none."""
    from conformance.weights import checkpoints
    arch = checkpoints.ARCHITECTURES.get(cfg.kind)
    if arch is None:
        return None
    return next(cls for cls, head in arch.classes.items() if head == cfg.head)


def transformers_count(cfg: Config) -> dict:
    """`num_parameters()` of the matching `transformers` model, built from its config on the meta device."""
    cls = transformers_class(cfg)
    if cls is None:
        return {"model": None, "total": None,
                "reason": "transformers has no encoder-decoder with this layout (post-norm, shared tied tables)"}
    import torch
    import transformers

    from conformance.weights import checkpoints
    arch = checkpoints.ARCHITECTURES[cfg.kind]
    config = transformers.AutoConfig.for_model(**checkpoints.config_to_hf(cfg, arch, cls))
    with torch.device("meta"):  # shapes only: instant for gpt2-xl
        model = getattr(transformers, cls)(config)
    return {"model": cls, "total": model.num_parameters()}
