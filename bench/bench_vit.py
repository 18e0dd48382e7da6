"""ViT forward benchmark: vit-base-patch16-224, batch 1 and 8, 224 x 224, float32 CPU, in one run.

    python bench/bench_vit.py                    # batch 1 and 8 (~12 min on 2 cores at load average 10)
    python bench/bench_vit.py --batches 1 --runs 3 --preset vit-tiny-patch16-224   # a quick look
    python bench/bench_vit.py --out FILE.md      # default bench/results/vit.md

Two pairs, each timed as a ratio, ours over theirs (goal <= 1.0x):

- torch_impl (eager, `torch.inference_mode`) against transformers' ViTModel (its default sdpa
  attention, and eager), on the same canonical weights (`weights.to_hf` + `from_pretrained`);
  torch_impl both with its reference attention (q k^T, masked softmax, probs v, one traced op a line)
  and with `attention_impl="fused"` (`F.scaled_dot_product_attention`, what sdpa calls).
- tf_impl compiled (`tf.function`, and `tf.function(jit_compile=True)`: XLA) against keras-hub's
  ViTBackbone compiled the same two ways, with the weights mapped in by its table. keras-hub's backbone
  has no pooler, so this pair runs `pooler=False` (the pooler is 1.2 MFLOPs of 35 GFLOPs).

Every contender gets the same inputs, and its output is checked against torch_impl's (the first pair)
or tf_impl's (the second) in the report. Timing is interleaved (one call of each contender a round,
after a 0.2 s pause that lets the previous library's spinning threads park), so load from other
processes falls on all alike; the ratios are of the medians, the minima beside them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from bench_models import environment, interleaved, table  # noqa: E402
from conformance import weights  # noqa: E402
from conformance.spec import families, presets  # noqa: E402

PRESET = "vit-base-patch16-224"
BATCHES = (1, 8)


def matmul_gflops(cfg, batch) -> float:
    """Analytic matmul GFLOPs of one forward (the reference's declaration, `conformance.costs.flops`)."""
    from conformance.costs import flops
    return flops.totals(flops.ops(cfg, batch, 0))["matmul"] / 1e9


class Contenders:
    """The models, built once; `calls(x)` binds one batch of pixel_values (B, C, H, W)."""

    def __init__(self, cfg, w, tmp: Path, progress):
        import tensorflow as tf
        import transformers
        from conformance.backends.build import build
        from conformance.oracles import keras_hub as kho
        self.cfg, self.bare = cfg, cfg.replace(pooler=False)
        t0 = time.perf_counter()
        self.torch = {impl: build("torch", cfg.replace(attention_impl=impl), w).module.eval()
                      for impl in ("reference", "fused")}
        weights.to_hf(cfg, w, tmp / "hf")
        self.hf = {attn: transformers.ViTModel.from_pretrained(tmp / "hf", attn_implementation=attn).eval()
                   for attn in ("sdpa", "eager")}
        bare_w = {k: v for k, v in w.items() if not k.startswith("pooler.")}
        twin = build("tf", self.bare, bare_w).module
        forward = lambda x: twin(pixel_values=x)["last_hidden_state"]  # noqa: E731
        self.tf = {"tf.function": tf.function(forward), "XLA": tf.function(forward, jit_compile=True)}
        kh = kho.forward(kho.load(kho.backbone(self.bare, "float32"), self.bare, bare_w), self.bare)
        kh_forward = lambda x: kh({"images": x})["last_hidden_state"]  # noqa: E731
        self.kh = {"tf.function": tf.function(kh_forward), "XLA": tf.function(kh_forward, jit_compile=True)}
        progress(f"  built every contender in {time.perf_counter() - t0:.0f} s")

    def calls(self, x) -> dict:
        import tensorflow as tf
        import torch
        from conformance.oracles import keras_hub as kho
        pixels, images = torch.from_numpy(x), tf.constant(x)
        theirs = tf.constant(kho.inputs(self.bare, pixel_values=x)["images"])  # its layout: channels last

        def torch_call(model, key):
            def call():
                with torch.inference_mode():
                    return model(pixel_values=pixels)[key]
            return call

        out = {"torch_impl (reference attention)": torch_call(self.torch["reference"], "last_hidden_state"),
               "torch_impl (fused attention)": torch_call(self.torch["fused"], "last_hidden_state"),
               "transformers (sdpa)": torch_call(self.hf["sdpa"], "last_hidden_state"),
               "transformers (eager)": torch_call(self.hf["eager"], "last_hidden_state")}
        for how in ("tf.function", "XLA"):
            out[f"tf_impl ({how})"] = lambda f=self.tf[how]: f(images)
            out[f"keras-hub ({how})"] = lambda f=self.kh[how]: f(theirs)
        return out


def max_difference(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


PAIRS = [("torch_impl (reference attention)", "transformers (sdpa)"),
         ("torch_impl (fused attention)", "transformers (sdpa)"),
         ("torch_impl (reference attention)", "transformers (eager)"),
         ("tf_impl (tf.function)", "keras-hub (tf.function)"),
         ("tf_impl (XLA)", "keras-hub (XLA)")]


def report(preset, cfg, groups, env) -> str:
    lines = [f"# ViT forward: {preset}, float32 CPU", "",
             "Written by `python bench/bench_vit.py` (see its docstring for what each contender is). One run "
             "on one machine; times are comparable within this report only.", "",
             table([(k, v) for k, v in env.items()], ["environment", ""]), ""]
    for batch, (times, outputs, seconds) in groups.items():
        gf = matmul_gflops(cfg, batch)
        med = {k: float(np.median(v)) for k, v in times.items()}
        rows = []
        for name, t in times.items():
            ref = outputs["torch_impl (reference attention)" if "torch" in name or "transformers" in name
                          else "tf_impl (tf.function)"]
            rows.append((name, f"{1e3 * med[name]:.1f}", f"{1e3 * min(t):.1f}", len(t), f"{gf / med[name]:.1f}",
                         f"{max_difference(outputs[name], ref):.1e}"))
        shape = f"{batch} x {cfg.num_channels} x {cfg.image_size} x {cfg.image_size}"
        lines += [f"## Batch {batch} ({shape}; {gf:.1f} matmul GFLOPs; timed in {seconds:.0f} s)", "",
                  table(rows, ["contender", "median ms", "min ms", "rounds", "GFLOP/s", "max abs diff"]), "",
                  table([(f"{ours} / {theirs}", f"{med[ours] / med[theirs]:.2f}x",
                          f"{min(times[ours]) / min(times[theirs]):.2f}x") for ours, theirs in PAIRS],
                        ["ratio (ours / theirs)", "of medians", "of minima"]), ""]
    lines += ["The max abs diff column is each contender's last_hidden_state against torch_impl's (the torch "
              "rows) or tf_impl's tf.function (the Keras rows), same weights and images.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=PRESET, help="a ViT preset (`tmirror models`)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds at batch 1 (fewer, at least 3, above)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vit.md"), help="Markdown report")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    import tempfile
    env = environment()
    env["load average at start (1 min)"] = f"{os.getloadavg()[0]:.1f}"
    cfg = presets.get(args.preset)
    w = weights.initialize(cfg)
    groups = {}
    with tempfile.TemporaryDirectory(prefix="bench-vit-") as tmp:
        contenders = Contenders(cfg, w, Path(tmp), progress)
        for i, batch in enumerate(int(b) for b in args.batches.split(",")):
            x = families.get("vit").inputs(cfg, batch, 0)["pixel_values"].astype(np.float32)
            calls = contenders.calls(x)
            outputs = {name: np.asarray(fn()) for name, fn in calls.items()}  # and the warm-up of each
            runs = args.runs if batch == 1 else max(3, args.runs // 2)
            t0 = time.perf_counter()
            times = interleaved(calls, False, runs, 3, 600.0, progress)
            groups[batch] = (times, outputs, time.perf_counter() - t0)
            progress(f"batch {batch} done")
    env["load average at end (1 min)"] = f"{os.getloadavg()[0]:.1f}"
    text = report(args.preset, cfg, groups, env)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
