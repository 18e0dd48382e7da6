"""One set of weights: a flat dict of NumPy arrays under canonical names.

    w = weights.initialize(cfg, seed=0)      # deterministic, float32, kernels [in, out]
    weights.save(w, "bert.safetensors", cfg) ; w = weights.load("bert.safetensors")
    weights.check(cfg, w)                     # every missing / unexpected / mis-shaped name at once
    cfg, w = weights.from_hf("hf_dir")        # and weights.to_hf(cfg, w, "hf_dir")
    cfg8, w8 = weights.quantize_int8(cfg, w)  # per-channel int8 Linear kernels + scales, built by every framework

`canonical` makes, checks and stores them; `checkpoints` reads and writes Hugging Face
directories through each family's `Checkpoint` table; `quantize` turns them into int8 weights.
"""
from conformance.weights.canonical import (WeightsError, check, count, fingerprint, initialize, load,  # noqa: F401
                                           load_config, save, shapes)
from conformance.weights.checkpoints import from_hf, from_original, permute_rotary, to_hf  # noqa: F401
from conformance.weights.quantize import dequantize, quantize_int8, weight_bytes  # noqa: F401
