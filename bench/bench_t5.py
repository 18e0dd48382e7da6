"""Encoder-decoder benchmark: t5-small forward and beam search, our twins against transformers, in one run.

    python bench/bench_t5.py                     # t5-small: forward (source 128, target 32) and a
                                                 # 32-token beam search with 4 beams (~5 min)
    python bench/bench_t5.py --preset t5-tiny --runs 2   # a quick look
    python bench/bench_t5.py --out FILE.md       # default bench/results/t5.md

Inference, float32, CPU, batch 1. Contenders, all on the same canonical weights
(`weights.initialize(cfg, seed=0)`): torch_impl (eager modules), tf_impl (its forward under
tf.function; generation calls the eager model: the loop is NumPy and each step a new shape) and
transformers' `T5ForConditionalGeneration` (eager and sdpa attention), loaded from `weights.to_hf`.

Generation is `conformance.generate.search(strategy="beam", num_beams=4)`, the one NumPy loop that
drives every framework through its cache, against `transformers.generate(num_beams=4)` with the
same arguments; no eos, so every contender makes all 32 tokens, and their tokens are checked equal.
The contenders are timed interleaved (one call of each per round), so load from other processes
falls on all of them alike; ratios are of medians, the minimum beside.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from bench_llama import environment  # noqa: E402
from bench_models import interleaved, table  # noqa: E402
from conformance import weights  # noqa: E402
from conformance.spec import presets  # noqa: E402

START = 0  # T5's decoder start token (the pad id)
GOALS = {"forward": 1.0, "beam search": 1.5}  # the issue's: ours / transformers
TARGETS = [("torch_impl / transformers", "torch_impl", ("transformers (eager)", "transformers (sdpa)")),
           ("tf_impl / transformers", "tf_impl", ("transformers (eager)", "transformers (sdpa)"))]


def contenders(cfg, w, source, target, new_tokens, beams):
    """{task: {name: callable}} and what each returns, for the agreement check."""
    import tensorflow as tf
    import torch
    import transformers

    from conformance.backends.build import build
    from conformance.generate import search
    from conformance.oracles import transformers as hf
    rng = np.random.default_rng(0)
    ids = rng.integers(2, cfg.vocab_size, (1, source))
    decoder_ids = np.concatenate([[[START]], rng.integers(2, cfg.vocab_size, (1, target - 1))], axis=1)
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids), "decoder_input_ids": decoder_ids}
    ours = {"torch_impl": build("torch", cfg, w, dtype="float32"), "tf_impl": build("tf", cfg, w, dtype="float32")}
    theirs = hf.transformers_model(cfg, w, "eager", "float32").eval()
    theirs.generation_config = transformers.GenerationConfig(decoder_start_token_id=START, pad_token_id=START)
    tx = {k: torch.from_numpy(v) for k, v in x.items()}
    tfx = {k: tf.constant(v) for k, v in x.items()}
    torch_module, tf_module = ours["torch_impl"].module.eval(), ours["tf_impl"].module
    tf_forward = tf.function(lambda feed: tf_module(**feed)["logits"])

    def hf_call(attn, fn):
        def run():
            theirs.set_attn_implementation(attn)
            with torch.inference_mode():
                return fn()
        return run

    def torch_forward():
        with torch.inference_mode():
            return torch_module(**tx)["logits"].numpy()

    forward = {"torch_impl": torch_forward, "tf_impl": lambda: tf_forward(tfx).numpy(),
               **{f"transformers ({a})": hf_call(a, lambda: theirs(**tx).logits.numpy()) for a in ("eager", "sdpa")}}
    options = dict(strategy="beam", num_beams=beams, decoder_start_token_id=START, attention_mask=x["attention_mask"])
    beam = {name: (lambda m=m: search(m, ids, new_tokens, **options).sequences) for name, m in ours.items()}
    for a in ("eager", "sdpa"):
        beam[f"transformers ({a})"] = hf_call(a, lambda: theirs.generate(
            tx["input_ids"], attention_mask=tx["attention_mask"], num_beams=beams, max_new_tokens=new_tokens,
            do_sample=False).numpy())
    return {"forward": forward, "beam search": beam}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="t5-small")
    p.add_argument("--source", type=int, default=128)
    p.add_argument("--target", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "t5.md"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cfg = presets.get(args.preset)
    tasks = contenders(cfg, weights.initialize(cfg, seed=0), args.source, args.target, args.new_tokens, args.beams)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows, ratios, agree = [], [], []
    for task, fns in tasks.items():
        out = {name: fn() for name, fn in fns.items()}
        first = out["torch_impl"]
        for name, v in out.items():  # logits: max |difference|; tokens: equal or not
            agree.append((task, name, f"{np.abs(v - first).max():.2e}" if task == "forward" else
                          "identical" if v.shape == first.shape and (v == first).all() else f"DIFFER {v.tolist()}"))
        log(f"{task}: {agree[-len(out):]}")
        times = interleaved(fns, True, args.runs, min(3, args.runs), 300.0, log)
        for name, t in times.items():
            rows.append((task, name, f"{1e3 * np.median(t):,.0f}", f"{1e3 * min(t):,.0f}"))
        for what, num, den in TARGETS:
            best = min(den, key=lambda n: np.median(times[n]))
            by_median, by_min = np.median(times[num]) / np.median(times[best]), min(times[num]) / min(times[best])
            goal = GOALS[task]
            verdict = "met" if max(by_median, by_min) <= goal else (
                "missed" if min(by_median, by_min) > goal else "met by one statistic only")
            ratios.append((task, f"{what} ({best.split()[-1][1:-1]})", f"{by_median:.2f}", f"{by_min:.2f}",
                           f"<= {goal}", verdict))
    shape = (f"batch 1, source {args.source}, target {args.target} (forward); {args.new_tokens} new tokens, "
             f"{args.beams} beams (beam search)")
    text = "\n".join([
        f"# Benchmark: {args.preset} forward and beam search, float32 CPU", "",
        f"`python bench/bench_t5.py --preset {args.preset}`, {(time.perf_counter() - t0) / 60:.1f} min; {shape}. "
        "Medians over the timed rounds (minimum beside); each ratio is against the faster transformers "
        "attention.", "",
        table(list(environment().items()), ["environment", ""]), "",
        "## Ratios", "", table(ratios, ["task", "ratio", "median", "min", "goal", "verdict"]), "",
        "## Times", "", table(rows, ["task", "contender", "median ms", "min ms"]), "",
        "## Agreement with torch_impl", "", table(agree, ["task", "contender", "max abs logits difference / tokens"]),
        ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
