"""`peft` as the LoRA oracle: its `LoraModel` on the `transformers` model of the same weights.

    model = peft_model(cfg, w, lcfg)           # get_peft_model(transformers_model(cfg, base weights), ...)
    trainable, total = model.get_nb_trainable_parameters()

Our target names are module names of this project's tree (`query`, `value`); peft's are the
`transformers` model's (`attention.self.query`). Each of our targets is handed to peft as the full
path of the `transformers` Linear its kernel is exported to (`checkpoints.hf_names`), so both
adapt the same projections, and our adapter weights are copied into peft's (`lora_A.weight` is our
A transposed, (r, in); `lora_B.weight` our B transposed, (out, r)): from then on the two models
must compute the same outputs and gradients. Nothing is downloaded.
"""
from __future__ import annotations

import warnings

import numpy as np

from conformance import weights as weights_lib
from conformance.core import lora as lora_lib
from conformance.core.config import Config
from conformance.oracles import transformers as hf_oracle
from conformance.weights import checkpoints


def hf_targets(cfg: Config, lcfg) -> dict[str, str]:
    """{our target path: the `transformers` module path} for every projection `lcfg` targets."""
    names = checkpoints.hf_names(cfg, hf_oracle.class_name(cfg))
    paths = lora_lib.linear_shapes(weights_lib.shapes(cfg), lcfg)
    fused = [p for p in paths if not names[f"{p}.kernel"].endswith(".weight")]
    if fused:
        raise ValueError(f"peft adapts whole transformers Linears; {fused} are parts of fused ones")
    return {p: names[f"{p}.kernel"][:-len(".weight")] for p in paths}


def peft_model(cfg: Config, w: dict, lcfg, dtype: str = "float64"):
    """peft's LoraModel on the `transformers` model of `cfg` with the base weights of `w`, its adapters
    set to `w`'s (r, alpha, dropout and targets from `lcfg`)."""
    import peft
    import torch
    base, adapters = lora_lib.split(w)
    targets = hf_targets(cfg, lcfg)
    model = hf_oracle.transformers_model(cfg, base, dtype=dtype)
    config = peft.LoraConfig(r=lcfg.rank, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                             target_modules=list(targets.values()), bias="none")
    with warnings.catch_warnings():  # transformers' own deprecation notice, raised inside peft
        warnings.simplefilter("ignore", FutureWarning)
        model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for ours, theirs in targets.items():
            layer = model.base_model.model.get_submodule(theirs)
            for mine, leaf in (("lora_a", layer.lora_A["default"]), ("lora_b", layer.lora_B["default"])):
                leaf.weight.copy_(torch.from_numpy(np.ascontiguousarray(adapters[f"{ours}.{mine}.kernel"].T)))
    return model


def adapter_weights(cfg: Config, model, lcfg) -> dict[str, np.ndarray]:
    """peft's adapter weights (or, with grads, their gradients) under our canonical names and layout."""
    out = {}
    for ours, theirs in hf_targets(cfg, lcfg).items():
        layer = model.base_model.model.get_submodule(theirs)
        out[f"{ours}.lora_a.kernel"] = layer.lora_A["default"].weight
        out[f"{ours}.lora_b.kernel"] = layer.lora_B["default"].weight
    return out


def outputs_and_gradients(cfg: Config, w: dict, lcfg, inputs: dict, cotangents: dict) -> tuple[dict, dict]:
    """peft's outputs (our names) on `inputs` and the gradients of sum_k sum(out_k c_k) with respect to
    every adapter weight, canonical layout: the vector-Jacobian product `Built.gradients` takes."""
    import torch
    model = peft_model(cfg, w, lcfg)
    out = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}, **hf_oracle.call_arguments(cfg))
    got = {hf_oracle.OUR_NAMES.get(k, k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
    loss = sum((got[k] * torch.from_numpy(c)).sum() for k, c in cotangents.items())
    loss.backward()
    grads = {k: p.grad.numpy().T for k, p in adapter_weights(cfg, model, lcfg).items()}
    return {k: v.detach().numpy() for k, v in got.items()}, grads
