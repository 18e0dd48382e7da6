"""Tracing overhead: off, summary mode and full tensors, against the same model with the
tracing code removed.

"No tracing code" is made literally: the twin's source is parsed, every `tap("name", expr)`
becomes `expr` and every `tap = trace.tap_for(self)` becomes `tap = None` (an AST rewrite), and
that stripped package runs on the same weights. Targets: off <= 1.02x stripped; summary
< 3x untraced time and < 1.5x untraced peak memory.

    python bench/bench_tracing.py [--preset bert-base] [--framework torch] [--repeats 20]
"""
from __future__ import annotations

import argparse
import ast
import importlib
import statistics
import sys
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.spec import presets, registry  # noqa: E402
from conformance.report import runner
from conformance import weights
from conformance.backends.build import build  # noqa: E402


class StripTaps(ast.NodeTransformer):
    def visit_Call(self, node):
        self.generic_visit(node)
        direct = isinstance(node.func, ast.Name) and node.func.id == "tap"
        inline = (isinstance(node.func, ast.Call) and isinstance(node.func.func, ast.Attribute)
                  and node.func.func.attr == "tap_for")        # trace.tap_for(self)("name", x)
        return node.args[1] if (direct or inline) and len(node.args) == 2 else node

    def visit_Assign(self, node):
        self.generic_visit(node)
        if any(isinstance(t, ast.Name) and t.id == "tap" for t in node.targets):
            node.value = ast.Constant(None)  # `tap = None`: still passed along, never called
        return node


def stripped_package(package: str) -> dict[str, types.ModuleType]:
    """Import a copy of `package` with every tap removed, as modules named `<package>_untapped.*`."""
    root = Path(importlib.import_module(package).__file__).parent
    modules = {}
    for path in sorted(root.glob("*.py")):
        name = path.stem
        tree = StripTaps().visit(ast.parse(path.read_text()))
        source = ast.unparse(ast.fix_missing_locations(tree)).replace(f"from {package}.", f"from {package}_untapped.")
        module = types.ModuleType(f"{package}_untapped.{name}")
        module.__package__ = f"{package}_untapped"
        sys.modules[module.__name__] = module
        modules[name] = module
        module._source = source
    sys.modules[f"{package}_untapped"] = modules.get("__init__", types.ModuleType(f"{package}_untapped"))
    pending = dict(modules)
    while pending:  # execute in dependency order: retry a module whose imports are not ready yet
        for name, module in list(pending.items()):
            try:
                exec(compile(module._source, f"<untapped {name}>", "exec"), module.__dict__)
                del pending[name]
            except ImportError:
                continue
    return modules


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn):
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="bert-base")
    p.add_argument("--framework", default="torch", choices=["numpy", "torch"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()
    cfg = presets.get(args.preset)
    w = weights.initialize(cfg)
    inputs = runner.model_inputs(cfg, 1, args.seq_len)
    m = build(args.framework, cfg, w, dtype="float32")

    package = registry.PACKAGES[args.framework]
    plain = stripped_package(package)
    cls = getattr(plain[{"bert": "bert", "gpt2": "gpt2", "transformer": "transformer"}[cfg.kind]],
                  registry.get(cfg.kind).cls)
    stripped = build(args.framework, cfg, w, dtype="float32")
    stripped.module = m.backend.construct(cls, (cfg,), "float32", "cpu")
    m.backend.load(stripped.module, w, "float32")
    np.testing.assert_allclose(stripped(**inputs)["last_hidden_state"], m(**inputs)["last_hidden_state"], rtol=0, atol=0)

    rows = []
    for _ in range(2):  # alternate, twice, so drift hits both
        t_stripped = timed(lambda: stripped(**inputs), args.repeats)
        t_off = timed(lambda: m(**inputs), args.repeats)
    t_summary = timed(lambda: m.trace(summary=True, **inputs), max(3, args.repeats // 4))
    t_full = timed(lambda: m.trace(**inputs), max(3, args.repeats // 4))
    # tracemalloc sees NumPy's allocations but not torch's or TF's own allocators: peak memory is
    # measured on the NumPy twin of the same model, whose trace holds the same tensors.
    ref = m if args.framework == "numpy" else build("numpy", cfg, w, dtype="float32")
    mem_off = peak_bytes(lambda: ref(**inputs))
    mem_summary = peak_bytes(lambda: ref.trace(summary=True, **inputs))
    mem_full = peak_bytes(lambda: ref.trace(**inputs))
    _, records = m.trace(**inputs)
    rows = [("no tracing code (AST-stripped)", t_stripped, 1.0, None),
            ("tracing off", t_off, t_off / t_stripped, mem_off),
            ("traced, summary mode", t_summary, t_summary / t_off, mem_summary),
            ("traced, full tensors", t_full, t_full / t_off, mem_full)]
    print(f"{args.preset} {args.framework} float32, batch 1, seq {args.seq_len}, {len(records)} traced ops, "
          f"median of {args.repeats}")
    print(f"{'':34} {'ms':>9} {'ratio':>9} {'peak MB (NumPy twin)':>22}")
    for label, t, ratio, mem in rows:
        print(f"{label:34} {1e3 * t:9.1f} {ratio:9.3f} {'' if mem is None else f'{mem / 2**20:22.1f}'}")
    print(f"summary-mode peak / untraced peak: {mem_summary / mem_off:.2f}x; "
          f"full-trace peak / untraced peak: {mem_full / mem_off:.2f}x")


if __name__ == "__main__":
    main()
