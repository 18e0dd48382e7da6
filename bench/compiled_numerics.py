"""Compiled against the reference and against eager, per registry case and compile mode, as a table.

    python bench/compiled_numerics.py                    # the cases below (~15 min on 2 cores)
    python bench/compiled_numerics.py --cases 'bert,llama*' --out FILE.md

Each row is `conformance.compare.compiled.compiled_run` on the case's registry weights and inputs
(`suites.cases.case_data`): the worst output error against the float64 reference (and whether the
float32 row holds), the worst against eager, the first module whose compiled output differs at all
and the one that differs most (each module compiled alone on eager's recorded inputs), and the
whole forward's first-call (trace + compile) seconds.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_models import table  # noqa: E402
from conformance.backends import FRAMEWORKS, backend, supports  # noqa: E402
from conformance.compare.compiled import HEADERS, compiled_run, modes_of, summary_rows  # noqa: E402
from conformance.core import files  # noqa: E402
from conformance.spec.registry import CASES, case_id  # noqa: E402
from conformance.suites.cases import case_data  # noqa: E402

DEFAULT = ("linear,softmax[causal],activation,activation[gelu_tanh],layer_norm,rms_norm,"
           "scaled_dot_product_attention[causal],multi_head_attention[rotary],feed_forward,gated_feed_forward,"
           "encoder_layer,decoder_layer,rotary_embedding,disentangled_attention,bert,gpt2,llama,t5,bart,vit,"
           "transformer,deberta")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=DEFAULT, help="comma-separated case ids or globs over them")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "compiled_numerics.md"))
    args = p.parse_args(argv)
    globs = args.cases.split(",")
    cases = [c for c in CASES if any(case_id(c) == g or fnmatch.fnmatchcase(case_id(c), g) for g in globs)]
    pairs = modes_of([f for f in FRAMEWORKS if backend(f).compile_modes])
    rows, t0 = [], time.perf_counter()
    for case in cases:
        _, cfg, w, inputs, reference = case_data(*case)
        for framework, mode in pairs:
            if supports(framework, case, "float32", "cpu"):
                continue
            run = compiled_run(framework, mode, cfg, w, inputs, reference)
            rows.append((case_id(case), *summary_rows([run])[0], f"{run.modules_seconds:.1f}"))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    text = "\n".join([
        "# Compiled against the reference and eager, per registry case", "",
        f"`python bench/compiled_numerics.py`, {(time.perf_counter() - t0) / 60:.1f} min, float32 CPU. "
        "Worst vs eager: max |compiled - eager| over the outputs; first diverging: the first module, in the order "
        "calls finish (a module after its submodules), whose output compiled alone on eager's recorded inputs "
        "differs from eager's at all; largest: the module that differs most; (root): the whole forward.", "",
        table(rows, ("case",) + HEADERS + ("modules s",)), ""])
    files.write(args.out, text, "--out")
    print(text)


if __name__ == "__main__":
    main()
