"""Forward-pass benchmark: BERT-base and GPT-2 in every framework, in one run, on one machine.

    python bench/bench_models.py                 # bert-base and gpt2, batch 1 and 8 (~7 min; ~12 at load 4)
    python bench/bench_models.py --quick         # bert-base, batch 1, no memory section (~2 min)
    python bench/bench_models.py --threads 1     # every library on one thread (see "threads" below)
    python bench/bench_models.py --out FILE.md   # default bench/results/models.md

Inference, float32, CPU, sequence 128, no padding. Every contender gets the same canonical
weights (`weights.initialize(presets.get(...))`), mapped in by its own door: `build` for
numpy_ref / torch_impl / tf_impl, `weights.to_hf` + `from_pretrained` for transformers,
`conformance.oracles.keras_hub` for keras-hub, and `torch.onnx.export` of the transformers
model for onnxruntime. Each (model, batch) group is timed interleaved (one call of each
contender per round, after a 0.2 s pause that lets the previous library's spinning threads
park) so that load from other processes falls on all of them alike; the table gives the
median and the minimum of the rounds after warm-up. Every contender's
output is checked against torch_impl's, so all of them compute the same thing (keras-hub's
BERT is off by ~1e-3: its tanh GELU, see conformance/oracles/keras_hub.py).

GFLOP/s counts matmul FLOPs only, analytically: 2 x tokens x (matmul parameters) plus the
attention products 2 x 2 B H T^2 Dh a layer (the full square, causal or not), plus BERT's
pooler on one token a sequence and GPT-2's tied LM head (T x D x V). The machine's peak is
a 2048^2 float32 matmul in each library, measured in the same run.

Memory: the growth of the process's resident set while building bert-base (constructing
the model, loading the weights, one 1 x 8 forward so lazily mapped weights are resident),
each framework in a fresh process after its imports and after the canonical weights are in
memory; NumPy also with tracemalloc. Compared with one float32 copy of the weights.

Threads: each library's default (all cores) unless `--threads N`. On a shared machine whose
load exceeds its cores, OpenMP (torch) and OpenBLAS (NumPy) threads wait at every parallel
region for a descheduled sibling; the report records the load average and measures the
effect on torch_impl.

Also measured in the same run, for bert-base batch 1: where the time goes (torch.profiler
per aten op for torch_impl and transformers eager, cProfile per numpy_ref function), the
evidence behind the "Targets" table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if "--threads" in sys.argv[:-1]:  # before numpy / torch / TF start their thread pools
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = sys.argv[sys.argv.index("--threads") + 1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from conformance.spec import presets, registry  # noqa: E402
from conformance import weights
from conformance.core import files

SEQ = 128
MODELS = ("bert-base", "gpt2")
BATCHES = (1, 8)
FRAMEWORKS = ("numpy_ref", "torch_impl", "transformers", "tf_impl", "keras-hub", "onnxruntime")
BASELINE = "transformers (sdpa)"  # transformers' default attention
BERT_BASE_B1_FLOPS = 22_348_431_360
THREADS: dict = {}  # --threads for libraries configured per session (onnxruntime)


# -------------------------------------------------------------------------------- counting

def matmul_flops(cfg, batch, seq) -> int:
    """Analytic matmul FLOPs of one forward (multiply-adds x 2)."""
    D, F, H, Dh, L = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.head_dim, cfg.num_layers
    tokens = batch * seq
    flops = 2 * tokens * L * (4 * D * D + 2 * D * F)     # q, k, v, output; inner, outer
    flops += L * 2 * 2 * batch * H * seq * seq * Dh       # q k^T and probs v
    if cfg.kind == "bert":
        flops += 2 * batch * D * D                        # the pooler, on position 0
    if cfg.kind == "gpt2":
        flops += 2 * tokens * D * cfg.vocab_size          # the tied LM head
    return flops


def weight_bytes(cfg) -> int:
    return 4 * sum(int(np.prod(s)) for s in registry.param_shapes(cfg).values())


# -------------------------------------------------------------------------------- timing

PAUSE = 0.2  # seconds before each timed call: the previous library's spinning threads park


def timed(fn, pause: float = 0.0) -> float:
    """Seconds one call of `fn` takes, after `pause` seconds of sleep (not timed).

    OpenBLAS and OpenMP workers spin for a while after a call before they sleep: on 2 cores a
    torch forward started right after a NumPy one ran ~30% slower (232 vs 180 ms, bert-base
    batch 1), so interleaved rounds pause between contenders."""
    time.sleep(pause)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(runs=5) -> dict[str, float]:
    """GFLOP/s of a 2048 x 2048 float32 matmul in numpy, torch and TensorFlow (best of `runs`)."""
    import tensorflow as tf
    import torch
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ta, tfa = torch.from_numpy(a), tf.constant(a)
    fns = {"numpy": lambda: a @ a, "torch": lambda: ta @ ta, "tensorflow": lambda: tf.linalg.matmul(tfa, tfa).numpy()}
    out = {}
    for name, fn in fns.items():
        fn()
        out[name] = 2 * n**3 / min(timed(fn, PAUSE) for _ in range(runs)) / 1e9
    return out


def compiled(name: str) -> bool:
    """A contender that traces, compiles or plans per input shape (and so needs a warm-up call per shape)."""
    return any(tag in name for tag in ("tf.function", "XLA", "onnxruntime"))


def interleaved(calls: dict, first: bool, runs: int, min_runs: int, budget: float, progress) -> dict:
    """Warm each callable up, then time one call of each per round: `runs` rounds, or fewer
    (never under `min_runs`) once the rounds have taken `budget` seconds.

    Warm-up: on a model's first batch size one call each; on later batch sizes one call for
    compiled paths (a new trace / XLA program / plan for the shape) and none for eager ones,
    which are already warm. With the budgets this keeps the full bench near 8 minutes.
    """
    for name, fn in calls.items():
        t0 = time.perf_counter()
        for _ in range(1 if first or compiled(name) else 0):
            fn()
        progress(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s")
    times = {name: [] for name in calls}
    t0 = time.perf_counter()
    for r in range(runs):
        for name, fn in calls.items():
            times[name].append(timed(fn, PAUSE))
        spent = time.perf_counter() - t0
        progress(f"  round {r + 1}/{runs} done ({spent:.0f} s)")
        if r + 1 >= min_runs and spent * (r + 2) / (r + 1) > budget:
            break
    return times


# -------------------------------------------------------------------------------- contenders

def model_inputs(cfg, batch):
    ids = np.random.default_rng(batch).integers(0, cfg.vocab_size, (batch, SEQ))
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if cfg.kind == "bert":
        inputs["token_type_ids"] = np.zeros_like(ids)
    return inputs


def main_output(cfg, out) -> np.ndarray:
    """The output every contender is checked on: BERT's last hidden state, GPT-2's logits."""
    key = {"bert": ("last_hidden_state", 0), "gpt2": ("logits", 0)}[cfg.kind]  # 0: onnxruntime's list
    for k in key:
        try:
            value = out[k]
            break
        except (KeyError, IndexError, TypeError):
            continue
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


class Contenders:
    """Every framework's model for one config, built once; `calls(inputs)` binds a batch."""

    def __init__(self, cfg, w, workdir: Path, frameworks, progress):
        self.cfg, self.frameworks, self.models, self.build_seconds = cfg, frameworks, {}, {}
        builders = {"numpy_ref": self._numpy, "torch_impl": self._torch, "transformers": self._hf,
                    "tf_impl": self._tf, "keras-hub": self._keras_hub, "onnxruntime": self._onnx}
        self.hf_dir = workdir / f"hf-{cfg.kind}"
        weights.to_hf(cfg, w, self.hf_dir)
        for fw in frameworks:
            t0 = time.perf_counter()
            builders[fw](w, workdir)
            self.build_seconds[fw] = time.perf_counter() - t0
            progress(f"  built {fw} in {self.build_seconds[fw]:.1f} s")

    def _numpy(self, w, _):
        from conformance.backends.build import build
        self.models["numpy_ref"] = build("numpy", self.cfg, w, dtype="float32").module

    def _torch(self, w, _):
        from conformance.backends.build import build
        self.models["torch_impl"] = build("torch", self.cfg, w, dtype="float32").module.eval()

    def _hf_model(self, attn):
        import transformers
        cls = transformers.BertModel if self.cfg.kind == "bert" else transformers.GPT2LMHeadModel
        model = cls.from_pretrained(self.hf_dir, attn_implementation=attn).eval()
        model.config.use_cache = False
        return model

    def _hf(self, w, _):
        for attn in ("eager", "sdpa"):
            self.models[f"transformers ({attn})"] = self._hf_model(attn)

    def _tf(self, w, _):
        import tensorflow as tf
        from conformance.backends.build import build
        model = build("tf", self.cfg, w, dtype="float32").module
        self.models["tf_impl"] = model

        def tf_impl_forward(kw):
            return model(**kw)

        self.tf_graph = tf.function(tf_impl_forward)
        self.tf_xla = tf.function(tf_impl_forward, jit_compile=True)

    def _keras_hub(self, w, _):
        import tensorflow as tf
        from conformance.oracles import keras_hub as kho
        model = kho.load(kho.backbone(self.cfg, "float32"), self.cfg, w)
        self.models["keras-hub"] = model
        self.kh = kho.forward(model, self.cfg)
        self.kh_graph = tf.function(self.kh)
        self.kh_xla = tf.function(self.kh, jit_compile=True)

    def _onnx(self, w, workdir):
        import onnxruntime as ort
        import torch
        model = self._hf_model("eager")
        example = {k: torch.from_numpy(v) for k, v in model_inputs(self.cfg, 2).items()}
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=self.cfg.max_positions)
        path = workdir / f"{self.cfg.kind}.onnx"
        with torch.inference_mode(False):
            torch.onnx.export(model, (), str(path), kwargs=example, dynamo=True, external_data=True,
                              dynamic_shapes={k: {0: batch, 1: seq} for k in example})
        del model
        self.onnx_path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS.get("onnxruntime", 0)  # 0: onnxruntime's default
        self.models["onnxruntime"] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def calls(self, inputs) -> dict:
        import torch
        out = {}
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

        def torch_call(model):
            def call():
                with torch.inference_mode():
                    return model(**tensors)
            return call

        if "numpy_ref" in self.models:
            reference = self.models["numpy_ref"]
            out["numpy_ref (float32)"] = lambda: reference(**inputs)
        if "torch_impl" in self.models:
            out["torch_impl (eager)"] = torch_call(self.models["torch_impl"])
        for attn in ("eager", "sdpa"):
            if f"transformers ({attn})" in self.models:
                out[f"transformers ({attn})"] = torch_call(self.models[f"transformers ({attn})"])
        if "tf_impl" in self.models:
            import tensorflow as tf
            tf_inputs = {k: tf.constant(v) for k, v in inputs.items()}
            twin = self.models["tf_impl"]
            out["tf_impl (eager)"] = lambda: twin(**tf_inputs)
            out["tf_impl (tf.function)"] = lambda: self.tf_graph(tf_inputs)
            out["tf_impl (XLA)"] = lambda: self.tf_xla(tf_inputs)
        if "keras-hub" in self.models:
            import tensorflow as tf
            from conformance.oracles import keras_hub as kho
            kh_inputs = {k: tf.constant(v) for k, v in kho.inputs(self.cfg, **inputs).items()}
            out["keras-hub (eager)"] = lambda: self.kh(kh_inputs)
            out["keras-hub (tf.function)"] = lambda: self.kh_graph(kh_inputs)
            out["keras-hub (XLA)"] = lambda: self.kh_xla(kh_inputs)
        if "onnxruntime" in self.models:
            session = self.models["onnxruntime"]
            feed = {i.name: inputs[i.name] for i in session.get_inputs()}
            out["onnxruntime (transformers export)"] = lambda: session.run(None, feed)
        return out


# -------------------------------------------------------------------------------- memory

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The peak resident set while the block runs: a 1 ms sampler, checked against ru_maxrss."""

    def __enter__(self):
        import resource
        gc.collect()
        self.base, self.maxrss_before = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak, self._stop = self.base, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        import resource
        self._stop.set()
        self._thread.join()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if maxrss > self.maxrss_before:  # the kernel's exact peak, when this block set a new one
            self.peak = max(self.peak, maxrss)
        self.after = rss_bytes()


MEMORY_IMPORTS = {"numpy_ref": (), "torch_impl": ("torch",), "transformers": ("torch", "transformers"),
                  "tf_impl": ("tensorflow", "keras"), "keras-hub": ("tensorflow", "keras_hub"),
                  "onnxruntime": ("onnxruntime",)}


def memory_child(framework: str, weights_file: str, hf_dir: str, onnx_file: str) -> dict:
    """In a fresh process: imports, then the canonical weights, then one measured build.

    "Build" is construct + load + one forward of 1 x 8 tokens: transformers and onnxruntime
    map their weight files and read pages lazily, and the tiny forward makes every framework's
    weights resident (its activations are a few hundred KiB)."""
    import importlib
    import tracemalloc
    for module in MEMORY_IMPORTS[framework]:
        importlib.import_module(module)
    cfg = presets.get("bert-base")
    w = weights.load(weights_file) if framework in ("numpy_ref", "torch_impl", "tf_impl", "keras-hub") else None
    tiny = {k: v[:, :8] for k, v in model_inputs(cfg, 1).items()}

    def ours(fw):
        from conformance.backends.build import build

        def run():
            model = build(fw, cfg, w, dtype="float32")
            return model, model(**tiny)
        return run

    def hf():
        import torch
        import transformers
        model = transformers.BertModel.from_pretrained(hf_dir).eval()
        with torch.inference_mode():
            return model, model(**{k: torch.from_numpy(v) for k, v in tiny.items()})

    def keras_hub():
        from conformance.oracles import keras_hub as kho
        model = kho.load(kho.backbone(cfg, "float32"), cfg, w)
        return model, kho.run(model, cfg, **tiny)

    def onnx():
        import onnxruntime
        session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
        return session, session.run(None, {i.name: tiny[i.name] for i in session.get_inputs()})

    builders = {"numpy_ref": ours("numpy"), "torch_impl": ours("torch"), "tf_impl": ours("tf"),
                "transformers": hf, "keras-hub": keras_hub, "onnxruntime": onnx}
    if framework == "numpy_ref":
        tracemalloc.start()
    with PeakRSS() as rss:
        built = builders[framework]()  # (model, outputs): the model stays alive for "growth after"
    result = {"framework": framework, "peak_growth": rss.peak - rss.base, "after": rss.after - rss.base}
    if framework == "numpy_ref":
        result["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    del built
    return result


def measure_memory(workdir: Path, frameworks, progress, parallel=3) -> list[dict]:
    """One child process per framework, `parallel` at a time (RSS is per process)."""
    cfg = presets.get("bert-base")
    weights_file, hf_dir, onnx_file = workdir / "bert-base.safetensors", workdir / "hf-bert", workdir / "bert.onnx"
    if not weights_file.exists():
        weights.save(weights.initialize(cfg), weights_file, cfg)
    if not hf_dir.exists():
        weights.to_hf(cfg, weights.load(weights_file), hf_dir)
    todo = [fw for fw in frameworks if fw != "onnxruntime" or onnx_file.exists()]
    results, running = {}, []
    while todo or running:
        while todo and len(running) < parallel:
            fw = todo.pop(0)
            running.append((fw, subprocess.Popen(
                [sys.executable, __file__, "--memory-child", fw, str(weights_file), str(hf_dir), str(onnx_file)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        fw, proc = running.pop(0)
        out, err = proc.communicate()
        if proc.returncode:
            progress(f"  memory {fw}: failed: {err.strip().splitlines()[-1:]}")
            continue
        results[fw] = json.loads(out.strip().splitlines()[-1])
        progress(f"  memory {fw}: {results[fw]['peak_growth'] / 2**20:.0f} MiB peak growth")
    return [results[fw] for fw in frameworks if fw in results]


# -------------------------------------------------------------------------------- profiles

def profile_causes(contenders, cfg, progress) -> dict:
    """Where the time of one bert-base batch-1 forward goes, measured in this run: per-op self
    time of torch_impl and transformers (eager) from torch.profiler, per-function time of
    numpy_ref from cProfile. Milliseconds per forward."""
    import cProfile
    import pstats
    import torch
    from torch.profiler import ProfilerActivity, profile
    calls = contenders.calls(model_inputs(cfg, 1))
    out = {}
    if "torch_impl (eager)" in calls:  # thread contention: the same forward on 1 and on all threads
        threads, seconds = torch.get_num_threads(), {}
        for n in (threads, 1):
            torch.set_num_threads(n)
            calls["torch_impl (eager)"]()
            seconds[n] = float(np.median([timed(calls["torch_impl (eager)"], PAUSE) for _ in range(3)]))
        torch.set_num_threads(threads)
        out["torch_impl threads"] = [(f"{n} thread{'s' if n > 1 else ''} (median of 3)", 1e3 * t)
                                     for n, t in seconds.items()]
    for name in ("torch_impl (eager)", "transformers (eager)"):
        if name not in calls:
            continue
        calls[name]()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                calls[name]()
        ops = sorted(((e.key, e.self_cpu_time_total / 2e3) for e in prof.key_averages()), key=lambda kv: -kv[1])
        out[name] = ops
        progress(f"  profiled {name}")
    if "numpy_ref (float32)" in calls:
        fn = calls["numpy_ref (float32)"]
        profiler = cProfile.Profile()
        profiler.runcall(fn)
        stats = pstats.Stats(profiler).stats
        out["numpy_ref (float32)"] = sorted(((f"{Path(f).stem}.{func}", v[2] * 1e3) for (f, _, func), v in stats.items()
                                             if "numpy_ref" in f), key=lambda kv: -kv[1])
        progress("  profiled numpy_ref (float32)")
    return out


# -------------------------------------------------------------------------------- report

def environment() -> dict:
    import keras
    import keras_hub
    import onnxruntime
    import tensorflow as tf
    import torch
    import transformers
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "python": platform.python_version(),
            "numpy": f"{np.__version__} (OpenBLAS)" if "openblas" in str(np.show_config(mode="dicts")).lower()
            else np.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tensorflow": tf.__version__, "keras": keras.__version__, "keras-hub": keras_hub.__version__,
            "onnxruntime": onnxruntime.__version__, "torch threads": torch.get_num_threads()}


def table(rows, headers) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def stat(times, name, how):
    return float(how(times[name])) if name in times else float("nan")


def best(times, names, how):
    return min((stat(times, n, how) for n in names if n in times), default=float("nan"))


KH_COMPILED = ("keras-hub (tf.function)", "keras-hub (XLA)")
TF_COMPILED = ("tf_impl (tf.function)", "tf_impl (XLA)")


def group_rows(cfg, batch, times, deltas, peak):
    flops = matmul_flops(cfg, batch, SEQ)
    rows = []
    for name in times:
        t = stat(times, name, np.median)
        rows.append((name, f"{1e3 * t:.1f}", f"{1e3 * min(times[name]):.1f}",
                     f"{t / stat(times, BASELINE, np.median):.2f}",
                     f"{t / stat(times, 'transformers (eager)', np.median):.2f}",
                     f"{t / best(times, KH_COMPILED, np.median):.2f}", f"{flops / t / 1e9:.1f}",
                     f"{100 * flops / t / 1e9 / peak:.0f}%", f"{deltas.get(name, float('nan')):.1e}"))
    return rows


TARGETS = [  # (what, numerator contenders, denominator contenders, target)
    ("torch_impl / transformers (eager)", ("torch_impl (eager)",), ("transformers (eager)",), 0.8),
    ("torch_impl / transformers (sdpa)", ("torch_impl (eager)",), ("transformers (sdpa)",), 0.8),
    ("tf_impl best compiled / keras-hub best compiled", TF_COMPILED, KH_COMPILED, 1.0),
    ("numpy_ref / transformers (eager)", ("numpy_ref (float32)",), ("transformers (eager)",), 1.0),
    ("numpy_ref / transformers (sdpa)", ("numpy_ref (float32)",), ("transformers (sdpa)",), 1.0),
]


def target_rows(groups):
    rows = []
    for what, num, den, target in TARGETS:
        for (name, batch), (times, _) in groups.items():
            by_median = best(times, num, np.median) / best(times, den, np.median)
            by_min = best(times, num, min) / best(times, den, min)
            if np.isnan(by_median):
                continue
            verdict = "met" if max(by_median, by_min) <= target else (
                "missed" if min(by_median, by_min) > target else "met by one statistic only")
            rows.append((what, f"{name} b{batch}", f"<= {target}", f"{by_median:.2f}", f"{by_min:.2f}", verdict))
    return rows


def profile_rows(profiles, top=6):
    rows = []
    for name, ops in profiles.items():
        total = sum(ms for _, ms in ops) if name.endswith(")") and not name.startswith("numpy") else None
        for op, ms in ops[:top]:
            rows.append((name, op, f"{ms:.1f}", f"{100 * ms / total:.0f}%" if total else ""))
    return rows


def write_report(path, env, peak, groups, memory, profiles, cfgs, runs, elapsed):
    best_peak = max(peak.values())
    lines = ["# Forward-pass benchmark: BERT-base and GPT-2", "",
             f"Generated by `python bench/bench_models.py` in {elapsed / 60:.1f} min. Inference, float32, CPU, "
             f"sequence {SEQ}, no padding; median and minimum of {runs} interleaved rounds after warm-up, "
             f"{PAUSE} s of sleep before each timed call so that the previous library's spinning worker threads "
             "park (without it torch ran ~30% slower right after NumPy). Ratios are "
             f"median / median: against `{BASELINE}` (transformers' default attention), `transformers (eager)`, "
             "and keras-hub's best compiled path (tf.function or XLA) of the same group. GFLOP/s is analytic "
             "matmul FLOPs / median time; % of matmul against the best 2048^2 matmul below (small-M GEMMs and XLA / MLAS kernels can exceed it). max abs diff is the main "
             "output (BERT last hidden state, GPT-2 logits) against torch_impl's: keras-hub's BERT is ~1e-3 off "
             "by its tanh GELU (conformance/oracles/keras_hub.py), everything else agrees to float32 rounding.", "",
             "This machine is shared with other jobs: the load average is recorded below. When it exceeds the "
             "core count, every OpenMP parallel region of torch and every multi-threaded OpenBLAS call of NumPy "
             "(hundreds a forward) waits for a descheduled sibling thread, so torch's (transformers, torch_impl) "
             "and NumPy's times inflate far more than TensorFlow's or onnxruntime's, whose pools steal work; "
             "the 'torch_impl threads' rows below measure that in this run, and `--threads 1` reruns everything "
             "on one thread. Compare median with min." + (f" **Load was above {os.cpu_count()} during this run.**"
                            if max(float(env[k]) for k in env if k.startswith("load")) > os.cpu_count() else ""), "",
             table(env.items(), ["", ""]), "",
             "## Matmul peak (2048 x 2048 float32, best of 5 at the start and 5 at the end)", "",
             table([(k, f"{v:.1f}") for k, v in peak.items()], ["library", "GFLOP/s"]), ""]
    for (name, batch), (times, deltas) in groups.items():
        cfg = cfgs[name]
        rounds = len(next(iter(times.values())))
        lines += [f"## {name}, batch {batch} x {SEQ} ({matmul_flops(cfg, batch, SEQ) / 1e9:.2f} GFLOP, "
                  f"{rounds} rounds)", "",
                  table(group_rows(cfg, batch, times, deltas, best_peak),
                        ["contender", "median ms", "min ms", f"x {BASELINE}", "x transformers (eager)",
                         "x keras-hub best compiled", "GFLOP/s", "% of matmul", "max abs diff"]), ""]
    lines += ["## Targets", "",
              "Ratios of medians and of minimums; 'met' when both are within the target.", "",
              table(target_rows(groups), ["target", "group", "target", "by median", "by min", ""]), ""]
    if profiles:
        profiles = dict(profiles)
        lines += [f"## Where the time goes ({profiles.pop('model')}, batch 1, ms per forward)", "",
                  "torch.profiler self CPU time per aten op (share of the forward), and cProfile time per "
                  "numpy_ref function (inclusive of the NumPy / SciPy calls it makes).", "",
                  table(profile_rows(profiles), ["contender", "op", "ms", "share"]), ""]
    if memory:
        wb = weight_bytes(presets.get("bert-base"))
        lines += ["## Memory of building bert-base", "",
                  "RSS growth while constructing the model, loading the weights and running one forward of "
                  "1 x 8 tokens (which makes lazily mapped weight files resident), in a fresh process per "
                  f"framework after its imports and the canonical weights; one float32 copy of the weights is "
                  f"{wb / 2**20:.0f} MiB. Target: peak <= about 2 copies.", "",
                  table([(m["framework"], f"{m['peak_growth'] / 2**20:.0f}", f"{m['peak_growth'] / wb:.2f}",
                          f"{m['after'] / 2**20:.0f}",
                          f"{m['tracemalloc_peak'] / 2**20:.0f}" if "tracemalloc_peak" in m else "")
                         for m in memory],
                        ["framework", "peak growth MiB", "x weights", "growth after MiB", "tracemalloc peak MiB"]),
                  ""]
    text = "\n".join(lines)
    if path is not None:
        files.write(path, text, "--out")
    return text


# -------------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="bert-base, batch 1, no memory section")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated presets")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"subset of {','.join(FRAMEWORKS)}")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed rounds, exactly (default: up to 5 at batch 1 and 3 above, fewer "
                             "but at least 3 / 2 once a group has used its 45 s / 100 s budget)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every library (OpenMP, OpenBLAS, MKL, torch, TF, onnxruntime); "
                             "default: each library's own (all cores)")
    parser.add_argument("--out", default=None,
                        help="Markdown report (default bench/results/models.md; --quick writes none unless given)")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child)))
        return 0
    models = ["bert-base"] if args.quick else args.models.split(",")
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    frameworks = args.frameworks.split(",")
    unknown = sorted(set(frameworks) - set(FRAMEWORKS)) + sorted(set(models) - set(presets.names()))
    if unknown:
        parser.error(f"--frameworks must be a subset of {list(FRAMEWORKS)} and --models of the presets; "
                     f"received {unknown}")
    assert matmul_flops(presets.get("bert-base"), 1, 128) == BERT_BASE_B1_FLOPS
    with_memory = not (args.quick or args.no_memory) and "bert-base" in models

    start = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if args.threads:
        import tensorflow as tf
        import torch
        torch.set_num_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        THREADS["onnxruntime"] = args.threads
    env = environment()
    env["threads"] = args.threads or "library defaults"
    env["load average at start (1 min)"] = f"{os.getloadavg()[0]:.1f}"
    progress("matmul peak")
    peak = matmul_peak()
    groups, cfgs, profiles = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        workdir = Path(tmp)
        for name in models:
            cfg = cfgs[name] = presets.get(name)
            progress(f"{name}: weights and builds")
            w = weights.initialize(cfg)
            if name == "bert-base" and with_memory:
                weights.save(w, workdir / "bert-base.safetensors", cfg)
            contenders = Contenders(cfg, w, workdir, frameworks, progress)
            del w
            for batch in batches:
                runs = args.runs or (5 if batch == 1 else 3)
                progress(f"{name} batch {batch}: up to {runs} rounds")
                calls = contenders.calls(model_inputs(cfg, batch))
                times = interleaved(calls, first=batch == batches[0], runs=runs,
                                    min_runs=min(runs, 3 if batch == 1 else 2),
                                    budget=float("inf") if args.runs else (45 if batch == 1 else 100),
                                    progress=progress)
                outs = {k: main_output(cfg, fn()) for k, fn in calls.items()}
                ref = outs.get("torch_impl (eager)")
                deltas = {} if ref is None else {k: float(np.abs(v - ref).max()) for k, v in outs.items()}
                groups[(name, batch)] = (times, deltas)
                del outs, calls
            if cfg.kind == "bert" and not profiles:
                profiles = {"model": name, **profile_causes(contenders, cfg, progress)}
            del contenders
            gc.collect()
        env["load average at end (1 min)"] = f"{os.getloadavg()[0]:.1f}"
        progress("matmul peak again")  # the best of start and end: a loaded start understates it
        peak = {k: max(v, peak[k]) for k, v in matmul_peak().items()}
        memory = measure_memory(workdir, frameworks, progress) if with_memory else []
        elapsed = time.perf_counter() - start
        out = args.out or (None if args.quick else str(ROOT / "bench/results/models.md"))
        text = write_report(out and Path(out), env, peak, groups, memory, profiles, cfgs,
                            args.runs or "up to 5 (batch 1) / 3 (batch 8)", elapsed)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
