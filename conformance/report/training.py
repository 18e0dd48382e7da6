"""`tmirror report PRESET --train`: the gradient and training-step section of a report.

Three parts, each a view of functions the test suites also call:
- gradients (`gradients.gradient_report`): every weight, input and traced activation gradient of
  each framework against the float64 NumPy backward, in backward order, with the first one out
  of tolerance;
- training (`training.drift`): `steps` AdamW updates from the same weights and batches with dropout
  on (the same units dropped everywhere), each framework under its own optimizer conventions, and
  the weights' distance from the float64 NumPy run; a twin's mixed-bfloat16 drift against its own
  float32 run beside it;
- memory: one training step's bytes by the first twin's allocator record that has one (torch's
  profiler) next to the analytic figure of `costs.memory` (16 bytes a parameter for float32 +
  AdamW, plus the activations saved for backward).
"""
from __future__ import annotations

from tabulate import tabulate

from conformance import training
from conformance.backends import build, supports
from conformance.compare import gradients
from conformance.compare.tolerance import gradient_tolerance, training_tolerance
from conformance.costs import measure, memory
from conformance.spec import families

STEPS = 3


def section(preset: str, cfg, w: dict, inputs: dict, frameworks, dtypes, progress=None) -> dict:
    """The record's "train" entry; frameworks/dtypes as given to `report` (numpy float64 is the reference)."""
    say = progress or (lambda label: None)
    twins = [f for f in frameworks if f != "numpy"]
    grad_dtypes = [d for d in dtypes if d in ("float64", "float32")]
    out = {"gradients": {}, "training": None, "mixed_precision": None, "memory": None}
    reference = build("numpy", cfg, w, dtype="float64").gradients(**inputs) if grad_dtypes else None
    for dtype in grad_dtypes:  # one float64 NumPy backward serves every dtype
        say(f"gradients {dtype}")
        out["gradients"][dtype] = gradients.gradient_report(cfg, w, inputs, frameworks=twins, dtype=dtype,
                                                            reference=reference)
    task = families.get(cfg.kind).pretraining
    if task is None:
        trained = sorted(f.name for f in families.FAMILIES.values() if f.pretraining)
        out["unsupported"] = f"the training step trains the families {trained}; {cfg.kind} declares no pretraining task"
        return out
    tcfg = training.TrainConfig(task=task, steps=STEPS)
    say(f"training {STEPS} steps")
    out["train_config"] = {k: v for k, v in tcfg.__dict__.items() if not k.startswith("_")}
    named = lambda rows: [{**r, "preset": preset} for r in rows]  # noqa: E731  (drift names the Config)
    out["training"] = named(training.drift(((cfg, task),), frameworks=list(frameworks), dtypes=grad_dtypes,
                                           steps=STEPS))
    mixed = [f for f in twins if supports(f, None, "mixed_bfloat16") is None]
    if mixed:  # each twin's drift against its own float32 run
        say("mixed precision")
        out["mixed_precision"] = named(training.mixed_precision_drift(((cfg, task),), frameworks=mixed[:1],
                                                                      dtypes=("mixed_bfloat16",), steps=STEPS))
    say("training memory")  # from the first twin whose framework keeps an allocator record
    measured = next((m for m in (measure.step_memory(cfg, task, f) for f in twins) if m), None)
    if measured:
        params = measured["weights_bytes"] // 4  # float32: the task model's own count (its head included)
        saved = memory.activations(training.task_config(cfg, task), measured["batch"], measured["seq_len"])
        out["memory"] = {**measured, "preset": preset, "parameters": params,
                         "analytic_state_bytes": params * sum(memory.TRAINING_STATE["float32 + AdamW"].values()),
                         "analytic_saved_activation_bytes": saved["training"]["none"]}
    return out


def passed(sec: dict) -> bool:
    grads = all(r["passed"] for per_fw in sec["gradients"].values() for rows in per_fw.values() for r in rows)
    steps = all(r["max_abs_error"] <= training_tolerance(r["dtype"]).atol for r in sec["training"] or [])
    return grads and steps


def _gradient_rows(rows: list[dict]) -> dict:
    first = next((r for r in rows if not r["passed"]), None)
    by_group = {}
    for r in rows:
        g = by_group.setdefault(r["group"], {"count": 0, "worst": 0.0, "where": ""})
        g["count"] += 1
        if r["scale_error"] > g["worst"]:
            g["worst"], g["where"] = r["scale_error"], r["op"]
    return {"first": first["op"] if first else None, "groups": by_group}


def markdown(sec: dict) -> str:
    lines = ["## Gradients against the float64 NumPy backward", "",
             "L = sum over outputs of sum(output x c) with seeded standard-normal cotangents c: one "
             "vector-Jacobian product reaches every weight, input and traced activation. Error is "
             "max |a - r| / max |r| per tensor (a bias on its layer's [kernel; bias] scale).", ""]
    rows = []
    for dtype, per_fw in sec["gradients"].items():
        tol = gradient_tolerance(dtype).scale_rtol
        for fw, grads in per_fw.items():
            s = _gradient_rows(grads)
            for group, g in s["groups"].items():
                rows.append((fw, dtype, group, g["count"], f"{g['worst']:.2e}", g["where"], f"{tol:.0e}"))
            rows.append((fw, dtype, "first out of tolerance", "", "", s["first"] or "none", ""))
    lines += [tabulate(rows, ["framework", "dtype", "gradients", "count", "worst", "where", "bound"],
                       tablefmt="github"), ""]
    for dtype, per_fw in sec["gradients"].items():
        for fw, grads in per_fw.items():
            worst = sorted(grads, key=lambda r: -r["scale_error"])[:6]
            lines += [f"**{fw} {dtype}: largest gradient errors**", "",
                      tabulate([(r["op"], r["group"], f"{r['max_abs']:.2e}", f"{r['scale_error']:.2e}") for r in worst],
                               ["tensor", "group", "max abs", "error / max abs reference"], tablefmt="github"), ""]
    lines += ["## Training steps", ""]
    if sec.get("unsupported"):
        return "\n".join(lines + [sec["unsupported"], ""])
    t = sec["train_config"]
    lines += [f"{t['steps']} AdamW updates ({t['task']}, micro-batch {t['micro_batch_size']} x {t['seq_len']} tokens, "
              f"lr {t['learning_rate']} with {t['warmup_steps']} warmup steps then linear decay, weight decay "
              f"{t['weight_decay']}, clipping at global norm {t['max_grad_norm']}, dropout on with the same "
              "supplied masks in every framework) from the same weights and batches. Each framework runs its own "
              "AdamW and clipping; the reference is the float64 NumPy run under that framework's conventions "
              "(torch: epsilon on the bias-corrected sqrt(v), clip epsilon 1e-6; Keras: epsilon on the "
              "uncorrected sqrt(v), no clip epsilon).", ""]
    rows = [(r["framework"], r["dtype"], f"{r['max_abs_error']:.2e}", r["worst_param"], f"{r['moved']:.2e}",
             f"{r['loss_error']:.2e}", f"{training_tolerance(r['dtype']).atol:.0e}",
             "pass" if r["max_abs_error"] <= training_tolerance(r["dtype"]).atol else "FAIL")
            for r in sec["training"]]
    lines += [tabulate(rows, ["framework", "dtype", "max weight error", "where", "training moved weights by",
                              "max loss error", "bound", ""], tablefmt="github"), ""]
    if sec.get("mixed_precision"):
        lines += ["Mixed precision against the same framework's float32 run (a measured drift, not a tolerance):", "",
                  tabulate([(r["framework"], r["dtype"], f"{r.get('max_abs_error', float('nan')):.2e}",
                             r.get("worst_param", r.get("unsupported", "")), f"{r.get('moved', float('nan')):.2e}")
                            for r in sec["mixed_precision"]],
                           ["framework", "dtype", "max weight drift", "where", "training moved weights by"],
                           tablefmt="github"), ""]
    if sec.get("memory"):
        m = sec["memory"]
        kept = m["weights_bytes"] + m["gradients_bytes"] + m["adamw_state_bytes"]
        analytic = m["analytic_state_bytes"] + m["analytic_saved_activation_bytes"]
        mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
        lines += [f"## Training memory ({m['framework']}, {m['dtype']}, one step)", "",
                  tabulate([("weights + gradients + AdamW moments after the step", mib(kept),
                             mib(m["analytic_state_bytes"]) + " (16 B x parameters)", f"{kept / m['analytic_state_bytes']:.3f}"),
                            ("peak during the step (weights + allocator peak)", mib(m["weights_bytes"] + m["peak_step_bytes"]),
                             mib(analytic) + " (+ activations saved for backward)",
                             f"{(m['weights_bytes'] + m['peak_step_bytes']) / analytic:.3f}")],
                           ["", "measured", "analytic (costs.memory)", "measured / analytic"], tablefmt="github"),
                  "", f"Batch {m['batch']} x {m['seq_len']} tokens. The peak also holds temporaries the analytic "
                  "count leaves out (the loss's softmax, clipping's norms, AdamW's intermediate tensors).", ""]
    return "\n".join(lines)
