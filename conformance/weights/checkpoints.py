"""Hugging Face checkpoints in and out: `config.json` + `model.safetensors` <-> (Config, weights).

    cfg, w = from_hf("hf_dir")          # BERT (4 heads) or GPT-2, canonical names and layout
    to_hf(cfg, w, "out_dir")            # a directory `transformers.AutoModel*` loads cleanly

Every checkpoint quirk lives in the two `Architecture` tables below and nowhere else:
HF module names (`attention.self.query`, `LayerNorm`, `c_attn`, `ln_1`, `wte`), the
backbone prefix task classes add (`bert.`, `transformer.`), torch `Linear`'s `[out, in]`
layout against GPT-2's `Conv1D` that is already `[in, out]`, GPT-2's fused q/k/v
projection, tensors that duplicate a tied one (`lm_head.weight`), and buffers some
checkpoints carry (`attn.bias`). Model code never changes for a checkpoint.

Every numerics field is read from config.json (HF's own default when absent): a value
this project cannot reproduce (another activation, relative positions, a decoder BERT)
is a ValueError naming it, never silently approximated. Weights are read with
safetensors; a `pytorch_model.bin` only through `torch.load(weights_only=True)`, which
refuses anything but tensors, so nothing executable is ever unpickled.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conformance.spec import registry
from conformance import weights as weights_lib
from conformance.core.config import Config

# HF activation name -> Config.activation ("gelu_new" and "gelu_pytorch_tanh" are the same tanh formula)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATION_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
SHARED = {"use_bias": True, "position": "learned", "scale_embeddings": False}  # both HF families
LEGACY_LEAVES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}  # pre-2019 BERT files


@dataclass(frozen=True)
class Leaf:
    """One canonical parameter of a module <-> one HF tensor of the matching HF module."""
    canonical: str
    hf: str
    transpose: bool = False   # torch nn.Linear stores [out, in]; canonical kernels are [in, out]
    part: int | None = None   # slice `part` of 3 along the last axis of a fused q/k/v tensor

    def read(self, array):
        array = array.T if self.transpose else array
        return array if self.part is None else np.array_split(array, 3, axis=-1)[self.part]


LINEAR = (Leaf("kernel", "weight", transpose=True), Leaf("bias", "bias"))
CONV1D = (Leaf("kernel", "weight"), Leaf("bias", "bias"))  # GPT-2's Conv1D: already [in, out]
NORM = (Leaf("gamma", "weight"), Leaf("beta", "bias"))
EMBEDDING = (Leaf("table", "weight"),)
BIAS = (Leaf("bias", "bias"),)
FUSED_QKV = tuple(Leaf(f"{name}.{leaf}", hf, part=j) for j, name in enumerate(("query", "key", "value"))
                  for leaf, hf in (("kernel", "weight"), ("bias", "bias")))


@dataclass(frozen=True)
class Architecture:
    model_type: str
    classes: dict          # HF class -> Config.head; a head's first class is what to_hf writes by default
    base_class: str        # the HF class whose tensors carry no prefix
    prefix: str            # what task classes put before the backbone's tensors
    modules: dict          # canonical module -> (HF module, leaves); "{i}" a layer, "{base}" the prefix
    tied: dict             # HF tensor -> the canonical tensor it duplicates (not stored separately)
    buffers: tuple         # non-parameter HF tensors older files carry: read past, never written
    foreign: tuple         # tensors of heads no canonical model has (BERT's next-sentence head)
    fields: dict           # Config field <- (config.json key, HF's default)
    fixed: dict            # config.json key -> the only value this project reproduces
    constants: dict        # Config fields every checkpoint of this family shares


BERT = Architecture(
    model_type="bert",
    classes={"BertModel": "none", "BertForMaskedLM": "mlm",
             "BertForSequenceClassification": "classification", "BertForQuestionAnswering": "qa",
             "BertForPreTraining": "mlm"},
    base_class="BertModel", prefix="bert.",
    modules={
        "embeddings.token": ("{base}embeddings.word_embeddings", EMBEDDING),
        "embeddings.position": ("{base}embeddings.position_embeddings", EMBEDDING),
        "embeddings.segment": ("{base}embeddings.token_type_embeddings", EMBEDDING),
        "embeddings.norm": ("{base}embeddings.LayerNorm", NORM),
        "encoder.{i}.attention.query": ("{base}encoder.layer.{i}.attention.self.query", LINEAR),
        "encoder.{i}.attention.key": ("{base}encoder.layer.{i}.attention.self.key", LINEAR),
        "encoder.{i}.attention.value": ("{base}encoder.layer.{i}.attention.self.value", LINEAR),
        "encoder.{i}.attention.output": ("{base}encoder.layer.{i}.attention.output.dense", LINEAR),
        "encoder.{i}.attention_norm": ("{base}encoder.layer.{i}.attention.output.LayerNorm", NORM),
        "encoder.{i}.feed_forward.inner": ("{base}encoder.layer.{i}.intermediate.dense", LINEAR),
        "encoder.{i}.feed_forward.outer": ("{base}encoder.layer.{i}.output.dense", LINEAR),
        "encoder.{i}.feed_forward_norm": ("{base}encoder.layer.{i}.output.LayerNorm", NORM),
        "pooler": ("{base}pooler.dense", LINEAR),
        "mlm.transform": ("cls.predictions.transform.dense", LINEAR),
        "mlm.norm": ("cls.predictions.transform.LayerNorm", NORM),
        "mlm": ("cls.predictions", BIAS),
        "classifier": ("classifier", LINEAR),
        "qa": ("qa_outputs", LINEAR),
    },
    tied={"cls.predictions.decoder.weight": "embeddings.token.table", "cls.predictions.decoder.bias": "mlm.bias"},
    buffers=("{base}embeddings.position_ids", "{base}embeddings.token_type_ids"),
    foreign=("cls.seq_relationship.weight", "cls.seq_relationship.bias"),
    fields={"d_model": ("hidden_size", 768), "num_heads": ("num_attention_heads", 12),
            "d_ff": ("intermediate_size", 3072), "num_layers": ("num_hidden_layers", 12),
            "vocab_size": ("vocab_size", 30522), "max_positions": ("max_position_embeddings", 512),
            "type_vocab_size": ("type_vocab_size", 2), "layer_norm_eps": ("layer_norm_eps", 1e-12),
            "activation": ("hidden_act", "gelu"), "dropout": ("hidden_dropout_prob", 0.1)},
    fixed={"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False},
    constants={"kind": "bert", "norm_first": False, "causal": False, **SHARED},
)

GPT2 = Architecture(
    model_type="gpt2",
    classes={"GPT2LMHeadModel": "none", "GPT2Model": "none"},  # the canonical GPT-2 always has its tied head
    base_class="GPT2Model", prefix="transformer.",
    modules={
        "embeddings.token": ("{base}wte", EMBEDDING),
        "embeddings.position": ("{base}wpe", EMBEDDING),
        "layers.{i}.attention": ("{base}h.{i}.attn.c_attn", FUSED_QKV),
        "layers.{i}.attention.output": ("{base}h.{i}.attn.c_proj", CONV1D),
        "layers.{i}.attention_norm": ("{base}h.{i}.ln_1", NORM),
        "layers.{i}.feed_forward.inner": ("{base}h.{i}.mlp.c_fc", CONV1D),
        "layers.{i}.feed_forward.outer": ("{base}h.{i}.mlp.c_proj", CONV1D),
        "layers.{i}.feed_forward_norm": ("{base}h.{i}.ln_2", NORM),
        "final_norm": ("{base}ln_f", NORM),
    },
    tied={"lm_head.weight": "embeddings.token.table"},
    buffers=("{base}h.{i}.attn.bias", "{base}h.{i}.attn.masked_bias"),
    foreign=(),
    fields={"d_model": ("n_embd", 768), "num_heads": ("n_head", 12), "d_ff": ("n_inner", None),
            "num_layers": ("n_layer", 12), "vocab_size": ("vocab_size", 50257),
            "max_positions": ("n_positions", 1024), "layer_norm_eps": ("layer_norm_epsilon", 1e-5),
            "activation": ("activation_function", "gelu_new"), "dropout": ("resid_pdrop", 0.1)},
    fixed={"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False},
    constants={"kind": "gpt2", "norm_first": True, "causal": True, **SHARED},
)

ARCHITECTURES = {a.model_type: a for a in (BERT, GPT2)}


# -------------------------------------------------------------------------------- import

def from_hf(path, head: str | None = None) -> tuple[Config, dict[str, np.ndarray]]:
    """(Config, canonical weights) from a Hugging Face model directory.

    `head` overrides the head named by config.json's `architectures` (e.g. import a
    BertForMaskedLM checkpoint as head="none"). As `transformers` does, tensors of *other*
    heads of the family (a pooler or masked-LM head the chosen head lacks, BERT's
    next-sentence head in pretraining checkpoints such as bert-base-uncased) are left out
    with a warning that names them; any other unknown tensor is an error.
    """
    path = Path(path)
    if not path.is_dir():
        raise weights_lib.WeightsError(f"Hugging Face checkpoint directory not found: {path}")
    hf = _read_json(path / "config.json")
    arch, cls = _architecture(hf)
    cfg = config_from_hf(hf, arch, cls)
    if head is not None and head != cfg.head:
        if head not in set(arch.classes.values()):
            raise ValueError(f"head must be one of {sorted(set(arch.classes.values()))}; received head={head!r}")
        cfg = cfg.replace(head=head)
    tensors = {_modern(k): v for k, v in read_tensors(path).items()}
    prefix = arch.prefix if any(k.startswith(arch.prefix) for k in tensors) else ""
    rows = _rows(arch, cfg, prefix)
    w = {c: np.ascontiguousarray(leaf.read(tensors[h])) for c, h, leaf in rows if h in tensors}
    used = {h for _, h, _ in rows} | _buffers(arch, cfg, prefix)
    for h, c in arch.tied.items():
        used.add(h)
        if h in tensors and c in w and not np.array_equal(tensors[h], w[c]):
            raise ValueError(f"{path}: {h} differs from the tensor it is tied to ({c}); untied output "
                             f"heads are not supported")
    foreign = set(arch.foreign) | {h for other in set(arch.classes.values())
                                   for _, h, _ in _rows(arch, cfg.replace(head=other), prefix)}
    dropped = sorted((tensors.keys() - used) & foreign)
    if dropped:
        warnings.warn(f"{path}: {len(dropped)} tensors of other heads are not used by head={cfg.head!r}: "
                      f"{', '.join(dropped)}", stacklevel=2)
    w.update({h: tensors[h] for h in tensors.keys() - used - foreign})  # unexpected: check names them
    _check(cfg, w, rows, path)
    return cfg, w


def config_from_hf(hf: dict, arch: Architecture, cls: str) -> Config:
    """Read every numerics field; refuse values the canonical models do not implement."""
    for key, only in arch.fixed.items():
        if hf.get(key, only) != only:
            raise ValueError(f"config.json {key} must be {only!r} to import as {cls}; received {hf[key]!r}")
    values = {field: default if hf.get(key) is None else hf[key] for field, (key, default) in arch.fields.items()}
    if values["activation"] not in ACTIVATIONS:
        key = arch.fields["activation"][0]
        raise ValueError(f"config.json {key} must be one of {list(ACTIVATIONS)}; "
                         f"received {key}={values['activation']!r}")
    values["activation"] = ACTIVATIONS[values["activation"]]
    if values["d_ff"] is None:  # GPT-2's n_inner: null means 4 * n_embd
        values["d_ff"] = 4 * values["d_model"]
    head = arch.classes[cls]
    if head == "classification":
        values["num_labels"] = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    if cls != arch.base_class and not hf.get("tie_word_embeddings", True):
        raise ValueError(f"config.json tie_word_embeddings must be true for {cls} (the output head is the "
                         f"token table); received false")
    return Config(head=head, **arch.constants, **values)


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """model.safetensors, else pytorch_model.bin through torch.load(weights_only=True)."""
    safe, pickled = path / "model.safetensors", path / "pytorch_model.bin"
    if safe.is_file():
        return weights_lib.load(safe)
    if not pickled.is_file():
        raise weights_lib.WeightsError(f"no weights file in {path}: expected {safe.name} or {pickled.name}")
    import torch
    try:
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not a tensor container
        raise weights_lib.WeightsError(f"{pickled} cannot be loaded with torch.load(weights_only=True): "
                                       f"{str(e).splitlines()[0]}") from None
    return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
            for k, v in state.items()}


# -------------------------------------------------------------------------------- export

def to_hf(cfg: Config, w: dict[str, np.ndarray], path, architecture: str | None = None) -> Path:
    """Write config.json and model.safetensors for `architecture` (default: from cfg.head)."""
    from safetensors.numpy import save_file

    arch = _family(cfg.kind, "kind")
    choices = [c for c, head in arch.classes.items() if head == cfg.head]
    if not choices:
        raise ValueError(f"Config.head must be one of {sorted(set(arch.classes.values()))} for a Hugging Face "
                         f"{cfg.kind}; received head={cfg.head!r}")
    cls = architecture or choices[0]
    if cls not in choices:
        raise ValueError(f"architecture must be one of {choices} for a {cfg.kind} with head={cfg.head!r}; "
                         f"received architecture={cls!r}")
    for field, value in arch.constants.items():
        if getattr(cfg, field) != value:
            raise ValueError(f"Config.{field} must be {value!r} for a Hugging Face {cfg.kind}; "
                             f"received {getattr(cfg, field)!r}")
    weights_lib.check(cfg, w)
    rows = _rows(arch, cfg, "" if cls == arch.base_class else arch.prefix)
    grouped: dict[str, list] = {}
    for c, h, leaf in rows:
        grouped.setdefault(h, []).append((leaf, w[c]))
    tensors = {}
    for h, parts in grouped.items():
        leaf = parts[0][0]
        array = np.concatenate([a for _, a in parts], axis=-1) if leaf.part is not None else parts[0][1]
        tensors[h] = np.ascontiguousarray(array.T if leaf.transpose else array)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg, arch, cls), indent=2) + "\n")
    return path


def config_to_hf(cfg: Config, arch: Architecture, cls: str) -> dict:
    hf = {"architectures": [cls], "model_type": arch.model_type, **arch.fixed, "tie_word_embeddings": True}
    for field, (key, _) in arch.fields.items():
        hf[key] = getattr(cfg, field)
    hf[arch.fields["activation"][0]] = ACTIVATION_OUT[cfg.activation]
    if arch is BERT:
        hf["attention_probs_dropout_prob"] = cfg.dropout
        if cfg.head == "classification":
            hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
            hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    else:
        hf["embd_pdrop"] = hf["attn_pdrop"] = cfg.dropout
    return hf


# -------------------------------------------------------------------------------- helpers

def _rows(arch: Architecture, cfg: Config, prefix: str) -> list[tuple[str, str, Leaf]]:
    """(canonical name, HF name, leaf) for every canonical parameter of `cfg`."""
    shapes = registry.param_shapes(cfg)
    rows = []
    for module, (hf_module, leaves) in arch.modules.items():
        for i in range(cfg.num_layers) if "{i}" in module else [None]:
            for leaf in leaves:
                c = f"{module}.{leaf.canonical}".format(i=i)
                if c in shapes:
                    rows.append((c, f"{hf_module}.{leaf.hf}".format(i=i, base=prefix), leaf))
    return rows


def _buffers(arch, cfg, prefix) -> set[str]:
    return {b.format(i=i, base=prefix) for b in arch.buffers for i in range(cfg.num_layers)}


def _check(cfg, w, rows, path):
    """weights.check, with each canonical name followed by the HF tensor it came from."""
    try:
        weights_lib.check(cfg, w)
    except weights_lib.WeightsError as e:
        message = str(e)
        for c, h, leaf in rows:
            stored = ", stored [out, in]" if leaf.transpose else ""
            message = message.replace(f" {c}:", f" {c} (HF {h}{stored}):")
        raise weights_lib.WeightsError(f"checkpoint {path}: {message}") from None


def _modern(name: str) -> str:
    for old, new in LEGACY_LEAVES.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise weights_lib.WeightsError(f"no config.json in Hugging Face checkpoint directory {path.parent}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _family(model_type, arg="model_type") -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{arg} must be one of {list(ARCHITECTURES)} (supported architectures: "
                         f"{', '.join(c for a in ARCHITECTURES.values() for c in a.classes)}); "
                         f"received {arg}={model_type!r}")
    return ARCHITECTURES[model_type]


def _architecture(hf: dict) -> tuple[Architecture, str]:
    arch = _family(hf.get("model_type"))
    cls = (hf.get("architectures") or [arch.base_class])[0]
    if cls not in arch.classes:
        raise ValueError(f"config.json architectures must name one of {list(arch.classes)}; received {cls!r}")
    return arch, cls

