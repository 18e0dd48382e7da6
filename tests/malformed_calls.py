"""Malformed calls a new user makes, to the API and to the command line, and whether each keeps the promise.

The promise (DESIGN.md, "Bad input"): bad input gets one clear error of the project's own,
naming the argument, the expected and the received value, raised the same way in NumPy,
PyTorch and Keras; never a silent broadcast or a NaN passed on without a word; the CLI exits
2 with one line on stderr and no traceback; a failing write leaves no partial file.

A call keeps it when:
- API: every framework raises a `ValueError` (or a subclass) from the project's own code (the
  innermost frame lies in conformance/, numpy_ref/, torch_impl/ or tf_impl/, not in a framework),
  and a call made in each of the three frameworks gets the same message word for word;
- CLI: `tmirror` returns 2, writes exactly one line to stderr, and no exception escapes it;
- both: what the case checks afterwards holds (no partial file, no computation before a bad --out).

Run it as a script to count the calls that break the promise (`--out FILE` writes the table as
Markdown); `tests/test_malformed_calls.py` runs every case in the default test tier.

    .venv/bin/python tests/malformed_calls.py [--classes 1,3] [--out bench/results/bad_input.md]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

FRAMEWORKS = ("numpy", "torch", "tf")
PROJECT = tuple(str(ROOT / p) + os.sep for p in ("conformance", "numpy_ref", "torch_impl", "tf_impl"))
CLASSES = {
    1: "mask values and mask_fill",
    2: "non-finite values",
    3: "every input through the shared validator",
    4: "Config validation",
    5: "files and directories",
    6: "the CLI's one error path",
}


@dataclass
class Case:
    id: str
    cls: int
    run: Callable                 # API: (ctx, framework) -> None; CLI: (ctx) -> argv
    per_framework: bool = True    # API: run once in each framework, messages compared
    cli: bool = False
    after: Callable | None = None  # (ctx) -> None or what went wrong (a partial file, ...)
    patch: Callable | None = None  # (ctx) -> a context manager around the call (a sentinel)
    words: Callable | tuple = ()  # what the message must name (a field, a path, the caller's dtype); or (ctx) -> it
    any_error: bool = False       # a failure inside the project's own code (not the user's input): any exception
    #                               will do, and what is checked is what it leaves behind (`after`)


@dataclass
class Outcome:
    kept: bool
    why: str = ""
    messages: dict = field(default_factory=dict)  # framework -> message (API) or the stderr line (CLI)


class Context:
    """A temporary directory and the files some cases need, made once per run."""

    def __init__(self, tmp: Path):
        self.tmp = tmp

    def path(self, name: str) -> Path:
        return self.tmp / name

    @cached_property
    def gpt2_file(self) -> Path:
        from conformance import presets, weights
        cfg = presets.get("gpt2-tiny")
        path = self.tmp / "gpt2-tiny.safetensors"
        weights.save(weights.initialize(cfg), path, cfg)
        return path


# ------------------------------------------------------------------------------ helpers

@lru_cache(maxsize=None)
def model(name: str, framework: str, dtype: str = "float32", **overrides):
    from conformance import build, weights
    from conformance.spec import registry
    cfg = registry.get(name).config().replace(**overrides)
    return build(framework, cfg, weights.initialize(cfg), dtype=dtype)


def inputs(name: str, variant: str = "default", **changes) -> dict:
    from conformance.spec import registry
    entry = registry.get(name)
    out = entry.inputs(entry.config(variant), variant)
    out.update(changes)
    return {k: v for k, v in out.items() if not (isinstance(v, str) and v == "<drop>")}


DROP = "<drop>"


def call(name, variant="default", dtype="float32", overrides=None, **changes):
    """A case that calls entry `name` built in each framework with its inputs, `changes` applied."""
    def run(ctx, framework):
        model(name, framework, dtype, **(overrides or {}))(**inputs(name, variant, **changes))
    return run


def with_value(name, key, value, variant="default", at=(0, 0)):
    """Entry `name`'s inputs with input `key` holding `value` at index `at` (its dtype kept where it fits)."""
    def run(ctx, framework):
        x = inputs(name, variant)
        a = x[key]
        if isinstance(value, float) and a.dtype.kind != "f":
            a = a.astype(np.float64)  # 0.5 and NaN need a float mask
        elif a.dtype == bool:
            a = a.astype(np.int64)  # 2 and -1 need an integer one
        else:
            a = a.copy()
        a[at] = value
        model(name, framework)(**{**x, key: a})
    return run


def config(**fields):
    def run(ctx, framework):
        from conformance.core.config import Config
        Config(kind="bert", **fields)
    return run


def no_file(*names):
    def check(ctx):
        left = [n for n in names if ctx.path(n).exists()]
        return f"left {left} behind" if left else None
    return check


def no_temp_files(ctx):
    left = sorted(p.name for p in ctx.tmp.rglob("*") if ".tmp" in p.name or p.name.startswith("."))
    return f"left temporary files {left}" if left else None


class ComputationStarted(Exception):
    """Raised by the sentinel that stands in for the computation: a check came after it."""


@contextlib.contextmanager
def sentinel_run(ctx):
    from conformance.report import runner
    saved = runner.run

    def run(*args, **kwargs):
        raise ComputationStarted("the computation started before the arguments were checked")
    runner.run = run
    try:
        yield
    finally:
        runner.run = saved


# ------------------------------------------------------------------------------ the cases

def mask_cases() -> list[Case]:
    """1. Mask values: anything but 0/1 (False/True) in any mask, of any component; mask_fill."""
    masks = [("bert", "attention_mask"), ("gpt2", "attention_mask"), ("llama", "attention_mask"),
             ("transformer", "attention_mask"), ("transformer", "decoder_attention_mask"),
             ("multi_head_attention", "mask"), ("encoder_layer", "mask"), ("decoder_layer", "mask"),
             ("decoder_layer", "memory_mask"), ("scaled_dot_product_attention", "mask"),
             ("softmax", "mask"), ("dropout", "keep")]
    values = {"two": 2, "minus_one": -1, "half": 0.5, "nan": float("nan")}
    cases = []
    for i, (name, key) in enumerate(masks):
        variant = "padding" if name == "softmax" else "default"
        at = (0, 0, 0, 0) if name in ("scaled_dot_product_attention", "softmax") else (0, 0)
        at = (0, 0, 0) if name == "dropout" else at
        chosen = list(values.items()) if i < 3 else list(values.items())[i % 4:i % 4 + 2]
        for label, value in chosen:
            cases.append(Case(f"mask-{name}-{key}-{label}", 1, with_value(name, key, value, variant, at)))
    for name, key in (("bert", "attention_mask"), ("multi_head_attention", "mask")):
        cases.append(Case(f"mask-{name}-{key}-strings", 1,
                          call(name, **{key: inputs(name)[key].astype(str)})))
    cases.append(Case("mask-bert-attention_mask-uint8", 1,
                      call("bert", attention_mask=inputs("bert")["attention_mask"].astype(np.uint8))))
    for label, fill in (("nan", float("nan")), ("positive", 5.0), ("zero", 0.0), ("plus_inf", float("inf")),
                        ("small", -1.0), ("string", "-1e9")):
        cases.append(Case(f"mask_fill-{label}", 1, config(mask_fill=fill), per_framework=False, words=("mask_fill",)))
    return cases


def finite_cases() -> list[Case]:
    """2. NaN or inf in a float input, a weight or an output, in float64 and float32; generation underflow."""
    cases = []
    for name, key, at in (("linear", "x", (0, 0, 0)), ("layer_norm", "x", (1, 2, 3)), ("activation", "x", (0, 0, 0)),
                          ("multi_head_attention", "x", (0, 1, 2)), ("rms_norm", "x", (0, 0, 0)),
                          ("feed_forward", "x", (0, 0, 0)), ("gated_feed_forward", "x", (0, 0, 0)),
                          ("encoder_layer", "x", (1, 1, 1)), ("decoder_layer", "memory", (0, 0, 0)),
                          ("scaled_dot_product_attention", "q", (0, 0, 0, 0)), ("rotary_embedding", "k", (0, 0, 0, 0)),
                          ("dropout", "x", (0, 0, 0))):
        cases.append(Case(f"nan-input-{name}-{key}", 2, with_value(name, key, float("nan"), at=at)))
    for name, key, at in (("linear", "x", (0, 0, 0)), ("layer_norm", "x", (0, 0, 0)),
                          ("multi_head_attention", "x", (0, 0, 0)), ("softmax", "scores", (0, 0, 0, 0))):
        cases.append(Case(f"inf-input-{name}-{key}", 2, with_value(name, key, float("inf"), at=at)))

    def float64(name, key, value):
        def run(ctx, framework):
            x = inputs(name)
            x[key] = x[key].copy()
            x[key].flat[3] = value
            model(name, framework, "float64")(**x)
        return run
    for name in ("linear", "layer_norm", "multi_head_attention"):
        cases.append(Case(f"nan-input-float64-{name}", 2, float64(name, "x", float("nan"))))

    def overflow(name, key, scale, dtype, **more):
        def run(ctx, framework):
            x = inputs(name)
            for k, v in {key: scale, **more}.items():
                x[k] = np.full_like(x[k], v)
            model(name, framework, dtype)(**x)
        return run
    cases.append(Case("overflow-output-float32-attention", 2,
                      overflow("scaled_dot_product_attention", "q", 1e19, "float32", k=1e19)))
    cases.append(Case("overflow-output-float64-multi_head_attention", 2,
                      overflow("multi_head_attention", "x", 1e160, "float64")))

    def big_kernel(ctx, framework):
        from conformance import build, weights
        from conformance.spec import registry
        cfg = registry.get("linear").config()
        w = weights.initialize(cfg)
        w["kernel"] = w["kernel"] * 100
        build(framework, cfg, w)(x=np.full((1, 2, 32), 1e38))
    cases.append(Case("overflow-output-float32-linear", 2, big_kernel))

    def nan_weight(name, key):
        def run(ctx, framework):
            from conformance import build, weights
            from conformance.spec import registry
            cfg = registry.get(name).config()
            w = weights.initialize(cfg)
            w[key] = w[key].copy()
            w[key].flat[0] = np.nan
            build(framework, cfg, w)
        return run
    cases.append(Case("nan-weight-linear", 2, nan_weight("linear", "kernel")))
    cases.append(Case("nan-weight-bert", 2, nan_weight("bert", "encoder.0.attention.query.kernel")))

    def generate(**options):
        def run(ctx, framework):
            from conformance.generate import generate as gen
            gen(model("gpt2", framework), np.array([[1, 2, 3]]), 3, **options)
        return run
    cases.append(Case("generate-temperature-underflow", 2, generate(strategy="sample", temperature=1e-310)))
    cases.append(Case("generate-temperature-nan", 2, generate(strategy="sample", temperature=float("nan"))))
    cases.append(Case("generate-temperature-inf", 2, generate(strategy="sample", temperature=float("inf"))))
    return cases


def front_door_cases() -> list[Case]:
    """3. Every input through the shared validator before any framework sees it."""
    cases = []
    ids = {"bert": "input_ids", "gpt2": "input_ids", "llama": "input_ids", "token_embedding": "ids",
           "position_embedding": "ids", "transformer": "decoder_input_ids"}
    for name, key in ids.items():
        for dtype in (("uint8", "int16") if name in ("bert", "gpt2", "llama") else ("uint8",)):
            cases.append(Case(f"dtype-{name}-{key}-{dtype}", 3,
                              call(name, **{key: inputs(name)[key].astype(dtype)}), words=(key, dtype)))
    cases.append(Case("dtype-bert-token_type_ids-int8", 3,
                      call("bert", token_type_ids=inputs("bert")["token_type_ids"].astype(np.int8))))
    cases.append(Case("dtype-llama-position_ids-uint16", 3,
                      call("llama", position_ids=inputs("llama")["position_ids"].astype(np.uint16))))
    cases.append(Case("dtype-sinusoidal-positions-uint8", 3,
                      call("sinusoidal_position", positions=inputs("sinusoidal_position")["positions"].astype(np.uint8))))
    cases.append(Case("dtype-multi_head_attention-mask-uint8", 3,
                      call("multi_head_attention", mask=inputs("multi_head_attention")["mask"].astype(np.uint8))))
    cases.append(Case("dtype-linear-x-complex", 3, call("linear", x=inputs("linear")["x"].astype(np.complex64))))
    cases.append(Case("dtype-layer_norm-x-int64", 3, call("layer_norm", x=np.ones((2, 7, 32), np.int64))))
    cases.append(Case("dtype-bert-input_ids-float32", 3,
                      call("bert", input_ids=inputs("bert")["input_ids"].astype(np.float32))))
    cases.append(Case("dtype-bert-input_ids-float64-named", 3,
                      call("bert", input_ids=inputs("bert")["input_ids"].astype(np.float64)), words=("float64",)))
    cases.append(Case("dtype-linear-x-float16-int-named", 3, call("linear", x=np.ones((2, 7, 32), np.int16)),
                      words=("int16",)))
    for name, key in (("bert", "input_ids"), ("gpt2", "input_ids"), ("linear", "x"), ("multi_head_attention", "x")):
        cases.append(Case(f"none-{name}-{key}", 3, call(name, **{key: None})))
        cases.append(Case(f"object-{name}-{key}", 3, call(name, **{key: inputs(name)[key].astype(object)})))
    for name, key in (("bert", "input_ids"), ("gpt2", "input_ids"), ("token_embedding", "ids")):
        cases.append(Case(f"strings-{name}-{key}", 3, call(name, **{key: inputs(name)[key].astype(str)})))
    for name, key in (("bert", "input_ids"), ("gpt2", "input_ids"), ("llama", "input_ids"), ("token_embedding", "ids")):
        cases.append(Case(f"0d-{name}-{key}", 3, call(name, attention_mask=DROP, token_type_ids=DROP, position_ids=DROP,
                                                      **{key: np.array(3)}) if name != "token_embedding"
                          else call(name, ids=np.array(3))))
    cases.append(Case("0d-linear-x", 3, call("linear", x=np.array(1.0))))
    for name in ("bert", "gpt2", "llama"):
        cases.append(Case(f"empty-T-{name}", 3, call(name, input_ids=np.zeros((2, 0), np.int64),
                                                     attention_mask=DROP, token_type_ids=DROP, position_ids=DROP)))
    cases.append(Case("empty-B-bert", 3, call("bert", input_ids=np.zeros((0, 7), np.int64),
                                              attention_mask=DROP, token_type_ids=DROP)))
    cases.append(Case("empty-T-multi_head_attention", 3,
                      call("multi_head_attention", x=np.zeros((2, 0, 32)), mask=DROP)))
    cases.append(Case("empty-T-transformer-decoder", 3,
                      call("transformer", decoder_input_ids=np.zeros((2, 0), np.int64), decoder_attention_mask=DROP)))
    for name, extra in (("bert", {"foo": np.ones((2, 7))}), ("gpt2", {"token_type_ids": np.zeros((2, 7), np.int64)}),
                        ("multi_head_attention", {"y": np.ones((2, 7, 32))}), ("linear", {"mask": np.ones((2, 7), bool)}),
                        ("llama", {"inputs_embeds": np.ones((2, 7, 32))})):
        key = next(iter(extra))
        cases.append(Case(f"unknown-{name}-{key}", 3, call(name, **extra)))
    for name, key in (("bert", "input_ids"), ("multi_head_attention", "x"), ("scaled_dot_product_attention", "v"),
                      ("transformer", "decoder_input_ids"), ("rotary_embedding", "position_ids")):
        cases.append(Case(f"missing-{name}-{key}", 3, call(name, **{key: DROP})))
    cases.append(Case("cache-through-call-gpt2", 3, call("gpt2", cache=[])))

    def build_with(cfg=None, weights=None, mutate=None):
        def run(ctx, framework):
            from conformance import build, weights as wl
            from conformance.spec import registry
            c = registry.get("linear").config()
            w = wl.initialize(c)
            if mutate:
                mutate(w)
            build(framework, c if cfg is None else cfg(c), w if weights is None else weights(w))
        return run
    cases.append(Case("build-config-dict", 3, build_with(cfg=lambda c: c.to_dict())))
    cases.append(Case("build-config-none", 3, build_with(cfg=lambda c: None)))
    cases.append(Case("build-config-preset-name", 3, build_with(cfg=lambda c: "bert-tiny")))
    cases.append(Case("build-weights-none", 3, build_with(weights=lambda w: None)))
    cases.append(Case("build-weights-list", 3, build_with(weights=lambda w: list(w.values()))))
    cases.append(Case("build-weight-as-list", 3, build_with(mutate=lambda w: w.update(kernel=w["kernel"].tolist()))))
    cases.append(Case("build-weight-int", 3, build_with(mutate=lambda w: w.update(kernel=np.ones((32, 64), np.int64)))))
    cases.append(Case("build-weight-object", 3,
                      build_with(mutate=lambda w: w.update(bias=w["bias"].astype(object)))))

    def generate(ids, **options):
        def run(ctx, framework):
            from conformance.generate import generate as gen
            gen(model("gpt2", framework), ids, 3, **options)
        return run
    cases.append(Case("generate-empty-prompt", 3, generate(np.zeros((1, 0), np.int64))))
    cases.append(Case("generate-uint8-prompt", 3, generate(np.array([[1, 2, 3]], np.uint8))))
    cases.append(Case("generate-1d-prompt", 3, generate(np.array([1, 2, 3]))))
    return cases


def config_cases() -> list[Case]:
    """4. Config validation: counts positive, booleans bool, epsilons finite, positions checked."""
    bad = {
        "num_layers-0": {"num_layers": 0}, "num_layers-neg": {"num_layers": -1},
        "num_decoder_layers-0": {"num_decoder_layers": 0}, "type_vocab_size-neg": {"type_vocab_size": -1},  # 0 is a model without segments
        "num_labels-0": {"num_labels": 0}, "num_labels-neg": {"num_labels": -2},
        "d_model-bool": {"d_model": True, "num_heads": 1}, "vocab_size-bool": {"vocab_size": True},
        "max_positions-float": {"max_positions": 512.0}, "d_ff-float": {"d_ff": 64.5},
        "num_heads-string": {"num_heads": "4"},
        "causal-int": {"causal": 1}, "norm_first-string": {"norm_first": "yes"}, "use_bias-int": {"use_bias": 0},
        "qk_norm-int": {"qk_norm": 1}, "rotary_float32-string": {"rotary_float32": "no"},
        "share_embeddings-none": {"share_embeddings": None}, "output_bias-int": {"output_bias": 1},
        "layer_norm_eps-inf": {"layer_norm_eps": float("inf")}, "layer_norm_eps-nan": {"layer_norm_eps": float("nan")},
        "layer_norm_eps-string": {"layer_norm_eps": "1e-12"}, "layer_norm_eps-neg": {"layer_norm_eps": -1e-5},
        "rope_theta-0": {"rope_theta": 0.0}, "rope_theta-nan": {"rope_theta": float("nan")},
        "rope_theta-inf": {"rope_theta": float("inf")},
        "rope_factor-nan": {"rope_scaling": "linear", "rope_factor": float("nan")},
        "rope_beta_fast-nan": {"rope_scaling": "yarn", "rope_factor": 4.0, "rope_beta_fast": float("nan")},
        "rope_attention_factor-0": {"rope_scaling": "yarn", "rope_factor": 4.0, "rope_attention_factor": 0.0},
        "rms_norm_offset-nan": {"rms_norm_offset": float("nan")}, "dropout-nan": {"dropout": float("nan")},
        "dropout-string": {"dropout": "0.1"}, "attention_scale-inf": {"attention_scale": float("inf")},
        "attn_logit_softcap-inf": {"attn_logit_softcap": float("inf")},
        "num_kv_heads-bool": {"num_kv_heads": True}, "sliding_window_right-bool": {"sliding_window_right": True},
        "layer_types-string": {"layer_types": "full_attention"}, "kind-int": {"kind": 3},
        "checkpoint-none": {"checkpoint": None}, "activation-none": {"activation": None},
    }
    cases = []
    for label, fields in bad.items():
        fields = dict(fields)
        kind = fields.pop("kind", "bert")

        def run(ctx, framework, fields=fields, kind=kind):
            from conformance.core.config import Config
            Config(kind=kind, **fields)
        cases.append(Case(f"config-{label}", 4, run, per_framework=False))

    def from_dict(d):
        def run(ctx, framework):
            from conformance.core.config import Config
            Config.from_dict(d)
        return run
    cases.append(Case("config-from_dict-list", 4, from_dict([["kind", "bert"]]), per_framework=False))
    cases.append(Case("config-from_dict-no-kind", 4, from_dict({"d_model": 32}), per_framework=False))

    def too_long(name, extra=1, **overrides):
        def run(ctx, framework):
            m = model(name, framework, **overrides)
            T = m.cfg.max_positions + extra
            rng = np.random.default_rng(0)
            x = {"input_ids": rng.integers(0, m.cfg.vocab_size, (1, T))}
            if name == "transformer":
                x["decoder_input_ids"] = rng.integers(0, m.cfg.vocab_size, (1, 3))
            m(**x)
        return run
    cases.append(Case("too-long-transformer-sinusoidal-source", 4, too_long("transformer")))
    cases.append(Case("too-long-bert-learned", 4, too_long("bert")))
    cases.append(Case("too-long-gpt2-learned", 4, too_long("gpt2")))
    cases.append(Case("too-long-llama-rotary", 4, too_long("llama")))

    def too_long_target(ctx, framework):
        m = model("transformer", framework)
        rng = np.random.default_rng(0)
        m(input_ids=rng.integers(0, 97, (1, 3)), decoder_input_ids=rng.integers(0, 97, (1, m.cfg.max_positions + 1)))
    cases.append(Case("too-long-transformer-sinusoidal-target", 4, too_long_target))

    def sinusoidal_component(ctx, framework):
        model("sinusoidal_position", framework)(positions=np.arange(70)[None, :])
    cases.append(Case("too-long-sinusoidal-component", 4, sinusoidal_component))
    return cases


def file_cases() -> list[Case]:
    """5. config.json, safetensors metadata, saving to a directory or a missing folder, partial writes."""
    cases = []

    def hf_dir(ctx, name, hf):
        from conformance import presets, weights
        cfg = presets.get("bert-tiny").replace(num_layers=1)
        path = ctx.path(name)
        weights.to_hf(cfg, weights.initialize(cfg), path)
        if hf is not None:
            full = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(hf(full) if isinstance(hf(full), str) else json.dumps(hf(full)))
        return path

    def from_hf(name, hf):
        def run(ctx, framework):
            from conformance import weights
            weights.from_hf(hf_dir(ctx, name, hf))
        return run
    def at(name):
        return lambda ctx: (str(ctx.path(name) / "config.json"),)
    cases.append(Case("config.json-list", 5, from_hf("hf-list", lambda d: [d]), per_framework=False,
                      words=at("hf-list")))
    cases.append(Case("config.json-string", 5, from_hf("hf-string", lambda d: "bert"), per_framework=False,
                      words=at("hf-string")))
    cases.append(Case("config.json-number", 5, from_hf("hf-number", lambda d: "3"), per_framework=False,
                      words=at("hf-number")))
    cases.append(Case("config.json-truncated", 5, from_hf("hf-trunc", lambda d: json.dumps(d)[:40]), per_framework=False,
                      words=at("hf-trunc")))
    for i, key in enumerate(("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")):
        cases.append(Case(f"config.json-missing-{key}", 5,
                          from_hf(f"hf-missing-{i}", lambda d, key=key: {k: v for k, v in d.items() if k != key}),
                          per_framework=False, words=lambda ctx, key=key, i=i: (key, str(ctx.path(f"hf-missing-{i}")))))
    cases.append(Case("config.json-hidden_size-string", 5, from_hf("hf-hs", lambda d: {**d, "hidden_size": "128"}),
                      per_framework=False, words=lambda ctx: ("hidden_size", "d_model", str(ctx.path("hf-hs")))))
    cases.append(Case("config.json-layer_norm_eps-string", 5,
                      from_hf("hf-eps", lambda d: {**d, "layer_norm_eps": "tiny"}), per_framework=False,
                      words=lambda ctx: ("layer_norm_eps", str(ctx.path("hf-eps")))))
    cases.append(Case("config.json-id2label-number", 5,
                      from_hf("hf-id2label", lambda d: {**d, "architectures": ["BertForSequenceClassification"],
                                                        "id2label": 3}), per_framework=False,
                      words=lambda ctx: ("id2label", str(ctx.path("hf-id2label")))))

    def metadata(name, meta):
        def run(ctx, framework):
            from safetensors.numpy import save_file

            from conformance import weights
            from conformance.spec import registry
            cfg = registry.get("linear").config()
            path = ctx.path(name)
            save_file(weights.initialize(cfg), str(path), metadata=meta)
            weights.load_config(path)
        return run
    def named(name, *more):
        return lambda ctx: (str(ctx.path(name)), *more)
    cases.append(Case("metadata-config-not-json", 5, metadata("m1.safetensors", {"config": "{not json"}),
                      per_framework=False, words=named("m1.safetensors", "config")))
    cases.append(Case("metadata-config-list", 5, metadata("m2.safetensors", {"config": "[1, 2]"}), per_framework=False,
                      words=named("m2.safetensors", "config")))
    cases.append(Case("metadata-config-unknown-field", 5,
                      metadata("m3.safetensors", {"config": json.dumps({"kind": "linear", "width": 3})}),
                      per_framework=False, words=named("m3.safetensors", "width")))
    cases.append(Case("metadata-config-bad-value", 5,
                      metadata("m4.safetensors", {"config": json.dumps({"kind": "linear", "d_model": -1})}),
                      per_framework=False, words=named("m4.safetensors", "d_model")))
    cases.append(Case("metadata-config-number", 5, metadata("m5.safetensors", {"config": "7"}), per_framework=False,
                      words=named("m5.safetensors", "config")))

    def save(target, w=None):
        def run(ctx, framework):
            from conformance import weights
            from conformance.spec import registry
            cfg = registry.get("linear").config()
            ws = weights.initialize(cfg)
            if w:
                w(ws)
            weights.save(ws, target(ctx), cfg)
        return run

    def directory(ctx):
        ctx.path("a-dir").mkdir(exist_ok=True)
        return ctx.path("a-dir")
    cases.append(Case("save-to-directory", 5, save(directory), per_framework=False, words=named("a-dir")))
    cases.append(Case("save-to-missing-folder", 5, save(lambda ctx: ctx.path("no/such/w.safetensors")),
                      per_framework=False, words=named("no/such/w.safetensors")))

    def under_file(ctx):
        ctx.path("plain").write_text("x")
        return ctx.path("plain") / "w.safetensors"
    cases.append(Case("save-under-a-file", 5, save(under_file), per_framework=False,
                      words=named("plain/w.safetensors")))
    cases.append(Case("save-weight-as-list", 5, save(lambda ctx: ctx.path("list.safetensors"),
                                                     lambda w: w.update(kernel=w["kernel"].tolist())),
                      per_framework=False, after=no_file("list.safetensors"), words=("kernel",)))
    cases.append(Case("save-weight-object", 5, save(lambda ctx: ctx.path("object.safetensors"),
                                                    lambda w: w.update(kernel=w["kernel"].astype(object))),
                      per_framework=False, after=no_file("object.safetensors"), words=("kernel",)))

    def failing_existing(ctx, framework):
        """A save that fails must leave the file that was there untouched (no truncation)."""
        from conformance import weights
        from conformance.spec import registry
        cfg = registry.get("linear").config()
        path = ctx.path("keep.safetensors")
        weights.save(weights.initialize(cfg), path, cfg)
        bad = weights.initialize(cfg)
        bad["kernel"] = bad["kernel"].astype(object)
        try:
            weights.save(bad, path, cfg)
        finally:
            weights.load(path)  # still the first file, whole
    cases.append(Case("save-failing-keeps-old-file", 5, failing_existing, per_framework=False))

    def load(target):
        def run(ctx, framework):
            from conformance import weights
            weights.load(target(ctx))
        return run
    cases.append(Case("load-a-directory", 5, load(directory), per_framework=False))
    cases.append(Case("load-empty-file", 5, load(lambda ctx: (ctx.path("empty.safetensors").write_bytes(b""),
                                                            ctx.path("empty.safetensors"))[1]), per_framework=False))

    def config_of_missing(ctx, framework):
        from conformance import weights
        weights.load_config(ctx.path("nothing.safetensors"))
    cases.append(Case("load_config-missing", 5, config_of_missing, per_framework=False))

    def from_hf_file(ctx, framework):
        from conformance import weights
        weights.from_hf(ctx.gpt2_file)
    cases.append(Case("from_hf-a-file", 5, from_hf_file, per_framework=False))

    def to_hf_onto_file(ctx, framework):
        from conformance import presets, weights
        cfg = presets.get("bert-tiny").replace(num_layers=1)
        ctx.path("hf-file").write_text("x")
        weights.to_hf(cfg, weights.initialize(cfg), ctx.path("hf-file"))
    cases.append(Case("to_hf-onto-a-file", 5, to_hf_onto_file, per_framework=False, words=named("hf-file")))

    def report_fails_midway(ctx, framework):
        """A record whose Markdown renders but whose JSON cannot be made: nothing of PRESET.md/.json/.html
        may be left (a report is its three files, or none)."""
        from conformance.report import write
        rec = {"preset": "half", "config": {}, "environment": {"unserializable": object()}, "inputs": {},
               "parameters": {}, "runs": [], "tolerances": {}, "costs": None}
        write.write(rec, ctx.path("half-report"))
    cases.append(Case("report-write-fails-midway", 5, report_fails_midway, per_framework=False, any_error=True,
                      after=lambda ctx: (f"left {sorted(p.name for p in ctx.path('half-report').iterdir())}"
                                         if ctx.path("half-report").is_dir() and any(ctx.path("half-report").iterdir())
                                         else None)))
    return cases


def cli_cases() -> list[Case]:
    """6. The CLI: every expected failure exits 2 with one line on stderr."""
    def argv(*args):
        return lambda ctx: list(args)

    def with_file(make, *args):
        return lambda ctx: [a if a != "{}" else str(make(ctx)) for a in args]

    def garbage(ctx):
        path = ctx.path("garbage.safetensors")
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        return path

    def a_file(ctx):
        path = ctx.path("taken")
        path.write_text("a file, not a directory")
        return path

    def a_dir(ctx):
        ctx.path("out-dir").mkdir(exist_ok=True)
        return ctx.path("out-dir")

    def empty_dir(ctx):
        ctx.path("empty-hf").mkdir(exist_ok=True)
        return ctx.path("empty-hf")

    fast = ["--seq-len", "8", "--frameworks", "numpy"]
    rows = [
        ("no-command", argv()), ("unknown-command", argv("frobnicate")), ("unknown-option", argv("models", "--foo")),
        ("report-no-preset", argv("report")), ("report-unknown-preset", argv("report", "bert-huge")),
        ("report-batch-0", argv("report", "bert-tiny", "--batch", "0")),
        ("report-batch-abc", argv("report", "bert-tiny", "--batch", "abc")),
        ("report-seq-len-negative", argv("report", "bert-tiny", "--seq-len", "-3")),
        ("report-seq-len-too-long", argv("report", "bert-tiny", "--seq-len", "600")),
        ("report-frameworks-jax", argv("report", "bert-tiny", "--frameworks", "torch,jax")),
        ("report-dtype-int8", argv("report", "bert-tiny", "--dtype", "int8")),
        ("report-device-tpu", argv("report", "bert-tiny", "--device", "tpu")),
        ("report-seed-abc", argv("report", "bert-tiny", "--seed", "abc")),
        ("report-weights-missing", argv("report", "bert-tiny", "--weights", "/nonexistent/w.safetensors")),
        ("report-weights-garbage", with_file(garbage, "report", "bert-tiny", "--weights", "{}", *fast)),
        ("report-weights-empty-dir", with_file(empty_dir, "report", "bert-tiny", "--weights", "{}", *fast)),
        ("report-weights-unknown-preset", lambda ctx: ["report", "gpt9", "--weights", str(ctx.gpt2_file),
                                                       "--out", str(ctx.path("reports")), *fast]),
        ("compare-weights-unknown-preset", with_file(lambda ctx: ctx.gpt2_file, "compare", "gpt9", "--weights", "{}",
                                                     *fast)),
        ("compare-weights-missing", argv("compare", "bert-tiny", "--weights", "/nonexistent/w.safetensors")),
        ("compare-weights-garbage", with_file(garbage, "compare", "bert-tiny", "--weights", "{}", *fast)),
        ("compare-top-0", argv("compare", "bert-tiny", "--top", "0")),
        ("trace-no-op", argv("trace", "bert-tiny")), ("trace-unknown-preset", argv("trace", "bert-huge", "--op", "x")),
        ("trace-op-matches-nothing", argv("trace", "bert-tiny", "--op", "nothing.*", *fast)),
        ("explain-unknown", argv("explain", "lstm")), ("explain-bad-variant", argv("explain", "softmax", "--variant", "x")),
        ("explain-format-pdf", argv("explain", "softmax", "--format", "pdf")),
        ("export-no-framework", argv("export", "bert-tiny")),
        ("export-unknown-preset", argv("export", "bert-huge", "--framework", "torch")),
        ("export-opset-0", argv("export", "bert-tiny", "--framework", "torch", "--opset", "0")),
        ("tolerances-no-case", argv("tolerances", "--cases", "nothing*", "--dtypes", "float32")),
        ("gpu-check-budget-negative", argv("gpu-check", "--budget-seconds", "-1")),
        ("matrix-dtype-bad", argv("matrix", "--dtype", "float8")),
    ]
    cases = [Case(f"cli-{label}", 6, run, cli=True) for label, run in rows]
    cases.append(Case("cli-report-out-is-a-file", 6, with_file(a_file, "report", "bert-tiny", "--out", "{}", *fast),
                      cli=True, patch=sentinel_run))
    cases.append(Case("cli-report-out-under-a-file", 6,
                      lambda ctx: ["report", "bert-tiny", "--out", str(a_file(ctx) / "sub"), *fast],
                      cli=True, patch=sentinel_run))
    cases.append(Case("cli-explain-out-is-a-directory", 6, with_file(a_dir, "explain", "softmax", "--out", "{}"),
                      cli=True))
    cases.append(Case("cli-explain-out-under-a-file", 6,
                      lambda ctx: ["explain", "softmax", "--out", str(a_file(ctx) / "x.md")], cli=True))
    cases.append(Case("cli-matrix-out-is-a-directory", 6,
                      with_file(a_dir, "matrix", "--out", "{}", "--frameworks", "numpy", "--dtype", "float32"),
                      cli=True))
    cases.append(Case("cli-export-out-is-a-directory", 6,
                      with_file(a_dir, "export", "gpt2-tiny", "--framework", "torch", "--out", "{}"), cli=True))
    return cases


def all_cases() -> list[Case]:
    return mask_cases() + finite_cases() + front_door_cases() + config_cases() + file_cases() + cli_cases()


# ------------------------------------------------------------------------------ judging one case

def _project_frame(tb) -> bool:
    frames = traceback.extract_tb(tb)
    return bool(frames) and frames[-1].filename.startswith(PROJECT)


def api_outcome(case: Case, ctx: Context, frameworks=FRAMEWORKS) -> Outcome:
    """`frameworks`: where a per-framework case runs (the first is the one the others are compared with)."""
    messages, problems = {}, []
    frameworks = frameworks if case.per_framework else ("numpy",)
    for framework in frameworks:
        try:
            with warnings_quiet():
                case.run(ctx, framework)
        except ValueError as e:
            messages[framework] = str(e)
            if not _project_frame(e.__traceback__):
                where = traceback.extract_tb(e.__traceback__)[-1]
                problems.append(f"{framework}: {type(e).__name__} from {_short(where.filename)}: {_line(e)}")
        except Exception as e:  # noqa: BLE001  (the point: what a user would see)
            messages[framework] = f"{type(e).__name__}: {e}"
            if case.any_error:
                continue
            where = traceback.extract_tb(e.__traceback__)[-1]
            problems.append(f"{framework}: {type(e).__name__} from {_short(where.filename)}: {_line(e)}")
        else:
            messages[framework] = None
            problems.append(f"{framework}: no error")
    words = case.words(ctx) if callable(case.words) else case.words
    for framework, message in messages.items():
        missing = [w for w in words if message is not None and w not in message]
        if missing and not problems:
            problems.append(f"{framework}: the message does not name {missing}: {_line(message)}")
    given = {m.removeprefix(f"{f} ") for f, m in messages.items() if m is not None}  # NonFiniteError names it
    if case.per_framework and len(given) > 1 and not problems:
        problems.append("messages differ: " + " | ".join(f"{f}: {_line(m)}" for f, m in messages.items()))
    if case.after:
        left = case.after(ctx)
        if left:
            problems.append(left)
    return Outcome(not problems, "; ".join(problems), messages)


def cli_outcome(case: Case, ctx: Context) -> Outcome:
    from conformance import cli
    argv = case.run(ctx)
    err, out = io.StringIO(), io.StringIO()
    problems = []
    patch = case.patch(ctx) if case.patch else contextlib.nullcontext()
    with patch, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings_quiet():
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # noqa: BLE001  (an escaped exception is a traceback)
            code = None
            problems.append(f"traceback: {type(e).__name__}: {_line(e)}")
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code != 2:
        problems.append(f"exit status {code}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    if case.after:
        left = case.after(ctx)
        if left:
            problems.append(left)
    return Outcome(not problems, "; ".join(problems), {"cli": lines[0] if len(lines) == 1 else "\n".join(lines)})


def outcome(case: Case, ctx: Context) -> Outcome:
    return cli_outcome(case, ctx) if case.cli else api_outcome(case, ctx)


@contextlib.contextmanager
def warnings_quiet():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            yield


def _short(path: str) -> str:
    for marker in ("site-packages" + os.sep, str(ROOT) + os.sep):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _line(e) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:160]


# ------------------------------------------------------------------------------ the audit

def audit(classes=tuple(CLASSES), progress=None) -> list[tuple[Case, Outcome]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(Path(tmp))
        for case in all_cases():
            if case.cls not in classes:
                continue
            results.append((case, outcome(case, ctx)))
            if progress:
                progress(case, results[-1][1])
    return results


def markdown(results, seconds: float) -> str:
    broken = [(c, o) for c, o in results if not o.kept]
    lines = [f"{len(broken)} of {len(results)} malformed calls break the promise ({seconds:.0f} s).", "",
             "| class | calls | broken |", "|---|---|---|"]
    for cls, title in CLASSES.items():
        mine = [(c, o) for c, o in results if c.cls == cls]
        if mine:
            lines.append(f"| {cls}. {title} | {len(mine)} | {sum(not o.kept for _, o in mine)} |")
    if broken:
        lines += ["", "| call | what went wrong |", "|---|---|"]
        lines += [f"| {c.id} | {o.why.replace('|', '/')} |" for c, o in broken]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", default=",".join(map(str, CLASSES)), help="comma-separated classes 1-6")
    p.add_argument("--out", help="also write the table to this Markdown file")
    p.add_argument("--verbose", action="store_true", help="print every call, kept or not")
    args = p.parse_args(argv)
    classes = tuple(int(c) for c in args.classes.split(","))

    def progress(case, o):
        if args.verbose or not o.kept:
            print(f"{'ok    ' if o.kept else 'BROKEN'} {case.id}: {o.why or next(iter(o.messages.values()), '')}"[:300],
                  file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    results = audit(classes, progress)
    text = markdown(results, time.perf_counter() - t0)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
