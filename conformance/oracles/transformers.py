"""`transformers` as an oracle: the Hugging Face model of a family, on the canonical weights or empty.

    model = transformers_model(cfg, w)            # to_hf into a temporary directory, then from_pretrained
    model = transformers_model(cfg)               # the same class from its config on the meta device: shapes only
    counts = flop_counts(cfg, inputs)             # FlopCounterMode, eager and sdpa attention

The class is the family's (`Family.transformers_class`: the one with exactly `cfg`'s head), the
config.json its `Checkpoint` table writes. Nothing is downloaded.
"""
from __future__ import annotations

import tempfile

import numpy as np

from conformance.core.config import Config
from conformance.spec import families
from conformance.weights import checkpoints


def _transformers():
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def class_name(cfg: Config) -> str | None:
    family = families.get(cfg.kind)
    return family.transformers_class(cfg)


def transformers_model(cfg: Config, w: dict | None = None, attn_implementation: str = "eager", dtype="float64"):
    """The `transformers` model of `cfg` with the canonical weights `w` loaded (float64 by default), or
    with `w=None` built from its config on the meta device and left uninitialized (zeros): for
    counting, not for running numbers."""
    cls = class_name(cfg)
    if cls is None:
        raise ValueError(f"transformers has no model with the {cfg.kind} family's layout and head={cfg.head!r}")
    transformers = _transformers()
    init = families.get(cfg.kind).checkpoint(cfg).init(cfg, cls)  # constructor arguments config.json lacks
    if w is not None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints.to_hf(cfg, w, tmp, cls)
            model = getattr(transformers, cls).from_pretrained(tmp, attn_implementation=attn_implementation, **init)
        import torch
        return model.to(getattr(torch, dtype)).eval()
    import torch
    family = families.get(cfg.kind)
    config = transformers.AutoConfig.for_model(**checkpoints.config_to_hf(cfg, family.checkpoint(cfg), cls))
    with torch.device("meta"):
        model = family.checkpoint(cfg).adjust(getattr(transformers, cls)(config, **init), cfg)
    model = model.to_empty(device="cpu").eval()  # no initialization: counting needs shapes, not values
    for p in model.parameters():
        p.data.zero_()
    return model


def flop_counts(cfg: Config, inputs: dict, implementations=("eager", "sdpa")) -> dict | None:
    """{attention implementation: FlopCounterMode's count of one forward} of the `transformers` model;
    None where `transformers` has none."""
    if class_name(cfg) is None:
        return None
    import torch

    from conformance.backends.torch_backend import flop_count
    model = transformers_model(cfg)
    x = {k: torch.from_numpy(v) for k, v in inputs.items()}
    if "input_ids" in x:
        x["position_ids"] = torch.arange(x["input_ids"].shape[1])[None]
    out = {}
    for impl in implementations:
        model.set_attn_implementation(impl)
        out[impl] = {"model": class_name(cfg), **flop_count(model, x)}
    return out


OUR_NAMES = {"pooler_output": "pooled_output"}  # transformers' output name -> ours, where they differ


def call_arguments(cfg: Config) -> dict:
    """The forward arguments of transformers that are Config fields here (`Checkpoint.call`)."""
    return {argument: getattr(cfg, field) for field, argument in families.get(cfg.kind).checkpoint(cfg).call.items()}


def numpy_of(t) -> np.ndarray:
    """A transformers output tensor as NumPy: bfloat16 widened to float32 (NumPy has no bfloat16)."""
    t = t.detach()
    return t.float().numpy() if str(t.dtype) == "torch.bfloat16" else t.numpy()


def run(cfg: Config, w: dict, inputs: dict, attn_implementation: str = "eager", dtype: str = "float64") -> dict:
    """The `transformers` model of `cfg` on the canonical weights `w`, called on our `inputs`: its outputs
    under our names, NumPy. `last_hidden_state`, where the model returns none, is the last of its hidden
    states if that is after the final norm (the family declares nothing, or names the last entry in
    `Checkpoint.hidden_states`) or the model is post-norm and has none; an encoder-decoder's, its decoder's."""
    import torch
    model = transformers_model(cfg, w, attn_implementation, dtype)
    x = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    with torch.no_grad():
        out = model(**x, **call_arguments(cfg), output_hidden_states=True)
    got = {OUR_NAMES.get(k, k): numpy_of(v) for k, v in out.items() if isinstance(v, torch.Tensor)}
    field = "decoder_hidden_states" if out.get("decoder_hidden_states") else "hidden_states"
    declared = families.get(cfg.kind).checkpoint(cfg).hidden_states.get(field)
    after_norm = declared is None or declared[2] is not None or not cfg.norm_first  # post-norm: no final norm
    if "last_hidden_state" not in got and out.get(field) and after_norm:
        got["last_hidden_state"] = numpy_of(out[field][-1])  # not ViT's: its last one precedes the final norm
    return got


def hidden_states(cfg: Config, w: dict, inputs: dict, attn_implementation: str = "eager",
                  dtype: str = "float64") -> dict[str, list]:
    """{output field: [array]} for each hidden-state tuple the `transformers` model of `cfg` returns on
    `inputs` (`hidden_states`; an encoder-decoder's `encoder_hidden_states` and `decoder_hidden_states`)."""
    import torch
    model = transformers_model(cfg, w, attn_implementation, dtype)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}, **call_arguments(cfg),
                    output_hidden_states=True)
    return {k: [numpy_of(h) for h in v] for k, v in out.items() if k.endswith("hidden_states") and isinstance(v, tuple)}
