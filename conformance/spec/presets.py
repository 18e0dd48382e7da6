"""Named model configurations with the published dimensions.

BERT: Devlin et al. 2018 (base, large) and Turc et al. 2019 (tiny, mini, small, medium).
GPT-2: Radford et al. 2019, as released (124M, 355M, 774M, 1.5B). gpt2-tiny is this
project's own small GPT-2 for fast tests. Transformer: Vaswani et al. 2017, Table 3
(base, big); transformer-tiny is small. The 2017 paper gives no layer-norm epsilon;
1e-6 is tensor2tensor's, the code the paper's results came from.
"""
from __future__ import annotations

from conformance.core.config import Config


def _bert(layers, width, heads, **kw):
    return Config(kind="bert", d_model=width, num_heads=heads, d_ff=4 * width, num_layers=layers,
                  vocab_size=30522, max_positions=512, type_vocab_size=2, activation="gelu",
                  layer_norm_eps=1e-12, norm_first=False, causal=False, **kw)


def _gpt2(layers, width, heads, **kw):
    return Config(kind="gpt2", d_model=width, num_heads=heads, d_ff=4 * width, num_layers=layers,
                  vocab_size=50257, max_positions=1024, activation="gelu_tanh",
                  layer_norm_eps=1e-5, norm_first=True, causal=True, **kw)


def _transformer(layers, width, heads, d_ff, dropout, **kw):
    kw.setdefault("vocab_size", 37000)
    return Config(kind="transformer", d_model=width, num_heads=heads, d_ff=d_ff, num_layers=layers,
                  num_decoder_layers=layers, max_positions=1024,
                  activation="relu", layer_norm_eps=1e-6, norm_first=False, position="sinusoidal",
                  scale_embeddings=True, share_embeddings=True, tie_embeddings=True,
                  dropout=dropout, **kw)


PRESETS: dict[str, Config] = {
    "bert-tiny": _bert(2, 128, 2),
    "bert-mini": _bert(4, 256, 4),
    "bert-small": _bert(4, 512, 8),
    "bert-medium": _bert(8, 512, 8),
    "bert-base": _bert(12, 768, 12),
    "bert-large": _bert(24, 1024, 16),
    "gpt2-tiny": _gpt2(2, 128, 2),
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    "transformer-tiny": _transformer(2, 64, 4, 256, 0.1, vocab_size=1000),
    "transformer-base": _transformer(6, 512, 8, 2048, 0.1),
    "transformer-big": _transformer(6, 1024, 16, 4096, 0.3),
}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
