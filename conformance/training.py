"""Training in all three frameworks from the same weights and batches, and how far apart they end.

    tcfg = TrainConfig(task="mlm", steps=5)
    batches = make_batches(cfg, tcfg, seed=0)            # steps x accumulation_steps micro-batches
    ref = train("numpy", cfg, w, batches, tcfg)          # TrainResult: weights, losses, lrs, grad_norms
    run = train("torch", cfg, w, batches, for_framework(tcfg, "torch"))
    errors = weight_errors(run.weights, ref.weights)     # {canonical name: max |difference|}

The step itself is `numpy_ref.training` (the math, in its docstring), `torch_impl.training` and
`tf_impl.training`, with each library's own loss, optimizer, schedule and clipping. Dropout is on
and drops the same units everywhere (`conformance.core.dropout_masks`, keyed by `dropout_seed`).

Two conventions differ between torch and Keras and are TrainConfig fields, never absorbed into
a tolerance (`LIBRARY_CONVENTIONS`; `for_framework` sets a framework's own, `train` refuses any
other for torch and tf):
- `epsilon_convention`: torch.optim.AdamW adds eps to the bias-corrected sqrt(v_hat)
  ("bias_corrected"), keras.optimizers.AdamW to the uncorrected sqrt(v) ("eps_hat").
- `clip_epsilon`: clip_grad_norm_ scales by max_norm / (norm + 1e-6), Keras by max_norm / norm.
The NumPy reference runs either; each library matches it only under its own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from conformance import weights as weights_lib
from conformance.backends import build, supports
from conformance.core import lora as lora_lib
from conformance.core.config import Config
from conformance.core.lora import LoraConfig
from conformance.spec import families, presets, registry

TASKS = ("mlm", "causal_lm", "classification")
EPSILON_CONVENTIONS = ("bias_corrected", "eps_hat")
DTYPES = ("float64", "float32", "mixed_bfloat16", "mixed_float16")
LIBRARY_CONVENTIONS = {  # what each library's own optimizer and clipping do
    "torch": {"epsilon_convention": "bias_corrected", "clip_epsilon": 1e-6},
    "tf": {"epsilon_convention": "eps_hat", "clip_epsilon": 0.0},
}
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainConfig:
    task: str = "mlm"                   # "mlm", "causal_lm" or "classification": the loss
    steps: int = 5                      # optimizer updates
    micro_batch_size: int = 2
    accumulation_steps: int = 1         # k micro-batches per update, gradients averaged
    seq_len: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 2               # linear warmup from 0, then linear decay to 0 at total
    total_steps: int | None = None      # the schedule's length; None: `steps`
    weight_decay: float = 0.01          # AdamW's decoupled decay
    no_decay: tuple = ("bias", "gamma", "beta")  # weight leaves never decayed (Hugging Face: bias, LayerNorm)
    beta1: float = 0.9
    beta2: float = 0.999
    adam_epsilon: float = 1e-8
    epsilon_convention: str = "bias_corrected"  # "bias_corrected" (torch) or "eps_hat" (Keras)
    max_grad_norm: float | None = 1.0   # global-norm clipping; None: off
    clip_epsilon: float = 1e-6          # scale = min(1, max_norm / (norm + clip_epsilon)): torch 1e-6, Keras 0
    frozen_base: bool = False           # train the head only (embeddings and layers frozen)
    layer_decay: float = 1.0            # layer-wise lr: lr x layer_decay^(L - depth), embeddings depth 0
    mask_probability: float = 0.15      # MLM: the share of positions masked and predicted
    dropout_seed: int = 0               # seeds the dropout masks (conformance.core.dropout_masks)
    loss_scale: float = 2.0**15         # mixed_float16: the initial dynamic loss scale
    lora: LoraConfig | None = None      # train LoRA adapters on these targets only, every other weight frozen
    checkpointing: bool = False         # torch, tf: recompute each layer in backward (the reference keeps all)

    def __post_init__(self):
        _choice("task", self.task, TASKS)
        _choice("epsilon_convention", self.epsilon_convention, EPSILON_CONVENTIONS)
        for name in ("steps", "micro_batch_size", "accumulation_steps", "seq_len"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an int >= 0; received warmup_steps={self.warmup_steps!r}")
        if self.total_steps is not None:
            _positive_int("total_steps", self.total_steps)
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0; received learning_rate={self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0; received weight_decay={self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1); received {name}={getattr(self, name)!r}")
        if not self.adam_epsilon > 0:
            raise ValueError(f"TrainConfig.adam_epsilon must be > 0; received adam_epsilon={self.adam_epsilon!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be > 0 or None; received max_grad_norm={self.max_grad_norm!r}")
        if not self.clip_epsilon >= 0:
            raise ValueError(f"TrainConfig.clip_epsilon must be >= 0; received clip_epsilon={self.clip_epsilon!r}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"TrainConfig.layer_decay must be in (0, 1]; received layer_decay={self.layer_decay!r}")
        if not 0.0 < self.mask_probability <= 1.0:
            raise ValueError(f"TrainConfig.mask_probability must be in (0, 1]; "
                             f"received mask_probability={self.mask_probability!r}")
        if not self.loss_scale > 0:
            raise ValueError(f"TrainConfig.loss_scale must be > 0; received loss_scale={self.loss_scale!r}")
        if not isinstance(self.checkpointing, bool):
            raise ValueError(f"TrainConfig.checkpointing must be True or False; "
                             f"received checkpointing={self.checkpointing!r}")
        if self.lora is not None and not isinstance(self.lora, LoraConfig):
            raise ValueError(f"TrainConfig.lora must be None or a conformance.core.lora.LoraConfig; "
                             f"received lora={self.lora!r}")

    @property
    def total(self) -> int:
        return self.steps if self.total_steps is None else self.total_steps

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"TrainConfig.{name} must be one of {list(choices)}; received {name}={value!r}")


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"TrainConfig.{name} must be a positive int; received {name}={value!r}")


def for_framework(tcfg: TrainConfig, framework: str) -> TrainConfig:
    """`tcfg` with `framework`'s own AdamW epsilon and clipping conventions (numpy: unchanged)."""
    return tcfg.replace(**LIBRARY_CONVENTIONS.get(framework, {}))


# ------------------------------------------------------------------------------ parameter groups

@dataclass(frozen=True)
class Group:
    lr_scale: float      # x the scheduled learning rate
    weight_decay: bool   # decayed by AdamW
    trainable: bool      # updated at all


BASE = ("embeddings", "encoder", "layers")  # the pretrained body; everything else is the task head


def depth(name: str, num_layers: int) -> int:
    """Embeddings 0, layer i (encoder.i / layers.i) i + 1, the head (pooler, mlm, classifier,
    final_norm) num_layers: the same rate as the top layer."""
    top = name.split(".")[0]
    if top == "embeddings":
        return 0
    if top in ("encoder", "layers"):
        return int(name.split(".")[1]) + 1
    return num_layers


def trainable(name: str, tcfg: TrainConfig) -> bool:
    """Under LoRA only the adapters train; under `frozen_base` only the head."""
    if tcfg.lora is not None:
        return lora_lib.is_adapter(name)
    return not (tcfg.frozen_base and name.split(".")[0] in BASE)


def groups(cfg: Config, tcfg: TrainConfig) -> dict[str, Group]:
    """Canonical weight name -> Group, for every weight of `cfg`'s model (and its LoRA adapters)."""
    L = cfg.num_layers
    return {name: Group(lr_scale=tcfg.layer_decay ** (L - depth(name, L)),
                        weight_decay=name.rpartition(".")[2] not in tcfg.no_decay,
                        trainable=trainable(name, tcfg))
            for name in weights_lib.shapes(cfg, tcfg.lora)}


# ------------------------------------------------------------------------------ batches

def task_config(cfg: Config, task: str) -> Config:
    """The model config a task trains: the head its family declares for it (BERT's MLM head)."""
    family = families.FAMILIES.get(cfg.kind)
    if family is None or task not in family.tasks:
        trains = sorted(f.name for f in families.FAMILIES.values() if task in f.tasks)
        raise ValueError(f"task {task!r} trains a model of kind {trains}; received cfg.kind={cfg.kind!r}")
    return cfg.replace(head=family.tasks[task].head)


def make_batches(cfg: Config, tcfg: TrainConfig, seed: int = 0) -> list[dict]:
    """steps x accumulation_steps micro-batches: input_ids, attention_mask (row b pads its last b
    positions), token_type_ids (BERT) and labels (-100 where not predicted), from a seeded rng."""
    rng = np.random.default_rng(seed)
    B, T, V = tcfg.micro_batch_size, tcfg.seq_len, cfg.vocab_size
    if T > cfg.max_positions:
        raise ValueError(f"TrainConfig.seq_len must be <= cfg.max_positions={cfg.max_positions}; received seq_len={T}")
    batches = []
    family = families.get(cfg.kind)
    for _ in range(tcfg.steps * tcfg.accumulation_steps):
        batch = family.inputs(cfg, B, T, rng=rng)                   # input_ids, attention_mask, ... (B, T)
        ids, attend = batch["input_ids"], batch["attention_mask"].astype(bool)
        if tcfg.task == "mlm":
            masked = (rng.random((B, T)) < tcfg.mask_probability) & attend
            masked[:, 1] = True                                                      # >= 1 counted per row
            batch["labels"] = np.where(masked, ids, IGNORE_INDEX)
            batch["input_ids"] = np.where(masked, min(103, V - 1), ids)              # BERT's [MASK] id
        elif tcfg.task == "causal_lm":
            batch["labels"] = np.where(attend, ids, IGNORE_INDEX)
        else:
            batch["labels"] = rng.integers(0, cfg.num_labels, B)
        batches.append(batch)
    return batches


def check_batches(cfg: Config, tcfg: TrainConfig, batches: list[dict]) -> None:
    expected = tcfg.steps * tcfg.accumulation_steps
    if len(batches) != expected:
        raise ValueError(f"batches must hold steps x accumulation_steps = {expected} micro-batches; "
                         f"received {len(batches)}")
    classes = cfg.num_labels if tcfg.task == "classification" else cfg.vocab_size
    for i, batch in enumerate(batches):
        if "labels" not in batch or "input_ids" not in batch:
            raise ValueError(f"batches[{i}] must hold 'input_ids' and 'labels'; received keys {sorted(batch)}")
        ids, labels = np.asarray(batch["input_ids"]), np.asarray(batch["labels"])
        want = ids.shape[:1] if tcfg.task == "classification" else ids.shape
        layout = "(B,)" if tcfg.task == "classification" else "(B, T) like input_ids"
        if labels.shape != want:
            raise ValueError(f"batches[{i}]['labels'] must have shape {layout} = {want}; received shape {labels.shape}")
        counted = labels[labels != IGNORE_INDEX]
        if tcfg.task == "causal_lm":
            counted = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]
        if counted.size == 0:
            raise ValueError(f"batches[{i}]['labels'] must count at least one position (a label other than "
                             f"{IGNORE_INDEX}); received none (torch's loss would be NaN, Keras's 0)")
        if counted.min() < 0 or counted.max() >= classes:
            raise ValueError(f"batches[{i}]['labels'] must lie in [0, {classes}) or be {IGNORE_INDEX}; "
                             f"received values in [{counted.min()}, {counted.max()}]")


# ------------------------------------------------------------------------------ training

@dataclass
class TrainResult:
    weights: dict          # canonical name -> np.ndarray after the last step
    losses: list           # the mean loss of each update (over its micro-batches)
    lrs: list              # the base learning rate each update used
    grad_norms: list       # the global gradient norm before clipping


def trainer(framework: str, cfg: Config, weights: dict, tcfg: TrainConfig, dtype: str = "float64"):
    """A framework's `Trainer` on a freshly built model of `cfg` (with its task head)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; received dtype={dtype!r}")
    if framework in LIBRARY_CONVENTIONS:
        own = LIBRARY_CONVENTIONS[framework]
        if tcfg.epsilon_convention != own["epsilon_convention"]:
            raise ValueError(f"TrainConfig.epsilon_convention must be {own['epsilon_convention']!r} for {framework} "
                             f"(its own AdamW's; see for_framework); received "
                             f"epsilon_convention={tcfg.epsilon_convention!r}")
        if tcfg.max_grad_norm is not None and tcfg.clip_epsilon != own["clip_epsilon"]:
            raise ValueError(f"TrainConfig.clip_epsilon must be {own['clip_epsilon']!r} for {framework} (its own "
                             f"clipping's; see for_framework); received clip_epsilon={tcfg.clip_epsilon!r}")
    cfg = task_config(cfg, tcfg.task)
    copies = {name: np.array(value) for name, value in weights.items()}  # numpy_ref updates its arrays in place
    # the NumPy reference has no autograd graph to checkpoint; checkpointing changes no number
    built = build(framework, cfg, copies, dtype=dtype, training=True, lora=tcfg.lora,
                  checkpointing=tcfg.checkpointing and framework != "numpy")
    return built.backend.trainer(built, groups(cfg, tcfg), tcfg), built


def train(framework: str, cfg: Config, weights: dict, batches: list[dict], tcfg: TrainConfig,
          dtype: str = "float64") -> TrainResult:
    """`tcfg.steps` updates of `framework`'s model from `weights` on `batches`."""
    check_batches(task_config(cfg, tcfg.task), tcfg, batches)
    step, built = trainer(framework, cfg, weights, tcfg, dtype)
    k = tcfg.accumulation_steps
    losses, lrs, norms = [], [], []
    for s in range(tcfg.steps):
        loss, lr, norm = step.step(batches[s * k:(s + 1) * k])
        losses.append(loss), lrs.append(lr), norms.append(norm)
    return TrainResult(built.weights(), losses, lrs, norms)


def weight_errors(actual: dict, reference: dict) -> dict[str, float]:
    """Canonical name -> max |actual - reference| (in float64)."""
    if actual.keys() != reference.keys():
        raise ValueError(f"actual must hold the reference's weights; missing {sorted(reference.keys() - actual.keys())}, "
                         f"unexpected {sorted(actual.keys() - reference.keys())}")
    return {name: float(np.abs(np.asarray(actual[name], np.float64) - np.asarray(reference[name], np.float64)).max())
            for name in reference}


def worst(errors: dict[str, float]) -> tuple[str, float]:
    name = max(errors, key=errors.get)
    return name, errors[name]


def moved(before: dict, after: dict) -> dict[str, float]:
    """Canonical name -> max |after - before|: how far training moved each weight."""
    return weight_errors(after, before)


# ------------------------------------------------------------------------------ measurements

CASES = (("bert-tiny", "mlm"), ("bert-tiny", "classification"), ("gpt2-tiny", "causal_lm"))


def setup(preset: str | Config, task: str, tcfg: TrainConfig | None = None, seed: int = 0):
    """(model cfg with its task head, initial weights, batches) for a preset (or a Config) and task."""
    tcfg = tcfg or TrainConfig(task=task)
    cfg = task_config(presets.get(preset) if isinstance(preset, str) else preset, task)
    w = weights_lib.initialize(cfg, seed=seed)
    if tcfg.lora is not None:  # peft's start: A Kaiming-uniform, B zero
        w.update(lora_lib.initialize(lora_lib.adapters(weights_lib.shapes(cfg, tcfg.lora)), seed=seed))
    return cfg, w, make_batches(cfg, tcfg, seed=seed)


def drift(cases=CASES, frameworks=("numpy", "torch", "tf"), dtypes=("float64", "float32"), steps: int = 5,
          tcfg: TrainConfig | None = None) -> list[dict]:
    """Weights after `steps` updates in each framework and dtype against the float64 reference run
    with that framework's conventions: one row per (preset, task, framework, dtype) with the worst
    parameter, its max |error|, and how far training moved the weights (for scale)."""
    rows = []
    for preset, task in cases:
        base = (tcfg or TrainConfig()).replace(task=task, steps=steps)
        cfg, w, batches = setup(preset, task, base)
        references = {}
        for framework in frameworks:
            own = for_framework(base, framework)
            key = (own.epsilon_convention, own.clip_epsilon)
            if key not in references:
                references[key] = train("numpy", cfg, w, batches, own)
            ref = references[key]
            for dtype in dtypes:
                if (framework, dtype) == ("numpy", "float64") or supports(framework, None, dtype) is not None:
                    continue
                run = train(framework, cfg, w, batches, own, dtype=dtype)
                name, error = worst(weight_errors(run.weights, ref.weights))
                rows.append({"preset": preset, "task": task, "framework": framework, "dtype": dtype,
                             "steps": steps, "worst_param": name, "max_abs_error": error,
                             "moved": worst(moved(w, ref.weights))[1],
                             "loss_error": max(abs(a - b) for a, b in zip(run.losses, ref.losses))})
    return rows


def mixed_precision_drift(cases=CASES, frameworks=("torch", "tf"), dtypes=("mixed_bfloat16", "mixed_float16"),
                          steps: int = 5) -> list[dict]:
    """Weights after `steps` mixed-precision updates against the same framework's float32 run."""
    rows = []
    for preset, task in cases:
        base = TrainConfig(task=task, steps=steps)
        cfg, w, batches = setup(preset, task, base)
        for framework in frameworks:
            own = for_framework(base, framework)
            fp32 = train(framework, cfg, w, batches, own, dtype="float32")
            for dtype in dtypes:
                try:
                    run = train(framework, cfg, w, batches, own, dtype=dtype)
                except NotImplementedError as e:
                    rows.append({"preset": preset, "task": task, "framework": framework, "dtype": dtype,
                                 "unsupported": str(e)})
                    continue
                errors = weight_errors(run.weights, fp32.weights)
                name, error = worst(errors)
                rows.append({"preset": preset, "task": task, "framework": framework, "dtype": dtype, "steps": steps,
                             "worst_param": name, "max_abs_error": error, "moved": worst(moved(w, fp32.weights))[1],
                             "loss_error": max(abs(a - b) for a, b in zip(run.losses, fp32.losses))})
    return rows
