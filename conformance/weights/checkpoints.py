"""Hugging Face checkpoints in and out: `config.json` + `model.safetensors` <-> (Config, weights).

    cfg, w = from_hf("hf_dir")          # BERT (4 heads) or GPT-2, canonical names and layout
    to_hf(cfg, w, "out_dir")            # a directory `transformers.AutoModel*` loads cleanly

Every checkpoint quirk lives in a family's `Checkpoint` table (`conformance.spec.families`)
and nowhere else:
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

import re

from conformance.core import files
from conformance.core.config import Config
from conformance.weights import canonical as weights_lib
from conformance.spec import families, registry
from conformance.spec.family import HF_ACTIVATION_OUT as ACTIVATION_OUT, HF_ACTIVATIONS as ACTIVATIONS, Checkpoint
from conformance.spec.leaves import Leaf, fuse, join, table_rows

LEGACY_LEAVES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}  # pre-2019 BERT files
ARCHITECTURES = {c.model_type: c for f in families.FAMILIES.values() for c in f.checkpoints}
# Config fields config.json must state: they size the weights, and transformers' default for a missing one
# (BERT-base's hidden_size 768) would describe another model. A key whose default is null (GPT-2's n_inner:
# 4 D) is optional by definition.
REQUIRED = ("d_model", "num_heads", "num_layers", "vocab_size", "d_ff")


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
    try:
        cfg = config_from_hf(hf, arch, cls)
    except ValueError as e:  # name the file, and the config.json key a Config field came from
        keys = [key for field, (key, _) in arch.fields.items() if f"Config.{field} " in str(e)]
        read = f" (read from config.json {keys[0]})" if keys else ""
        raise ValueError(f"{path / 'config.json'}: {e}{read}") from None
    if head is not None and head != cfg.head:
        if head not in set(arch.classes.values()):
            raise ValueError(f"head must be one of {sorted(set(arch.classes.values()))}; received head={head!r}")
        cfg = cfg.replace(head=head)
    tensors = {_modern(k): v for k, v in read_tensors(path).items()}
    prefix = arch.prefix if any(k.startswith(arch.prefix) for k in tensors) else ""
    for field, module in arch.optional.items():  # a part config.json does not record: is it in the file?
        held = [h for c, h, _ in _rows(arch, cfg.replace(**{field: True}), prefix) if c.startswith(f"{module}.")]
        if held:
            cfg = cfg.replace(**{field: any(h in tensors for h in held)})
    cfg = cfg.replace(**arch.refine(cfg, tensors, prefix))
    rows = _rows(arch, cfg, prefix)
    _check_layer_count(arch, cfg, hf, tensors, rows, prefix, path)
    w = {c: np.ascontiguousarray(leaf.to_canonical(tensors[h], cfg)) for c, h, leaf in rows if h in tensors}
    used = {h for _, h, _ in rows} | _buffers(arch, cfg, prefix)
    mapped = set(used)
    for h, c in arch.tied.items():
        h = h.format(base=prefix)
        if h in mapped:  # an untied head is a parameter of its own: mapped like any other
            continue
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


def config_from_hf(hf: dict, arch: Checkpoint, cls: str) -> Config:
    """Read every numerics field; refuse values the canonical models do not implement."""
    for key, only in arch.fixed.items():
        if hf.get(key) not in (None, only):  # null: unset, transformers' default
            raise ValueError(f"config.json {key} must be {only!r} to import as {cls}; received {hf[key]!r}")
    for field, (key, default) in arch.fields.items():
        if field in REQUIRED and default is not None and hf.get(key) is None:
            raise ValueError(f"config.json must give {key} (Config.{field}: it sizes the weights); received no {key}")
    values = {field: default if hf.get(key) is None else hf[key] for field, (key, default) in arch.fields.items()}
    if "activation" in values:  # else the family's `read` parses it (T5's feed_forward_proj)
        if values["activation"] not in ACTIVATIONS:
            key = arch.fields["activation"][0]
            raise ValueError(f"config.json {key} must be one of {list(ACTIVATIONS)}; "
                             f"received {key}={values['activation']!r}")
        values["activation"] = ACTIVATIONS[values["activation"]]
    values.update(arch.read(hf, cls))
    head = arch.classes[cls]
    if head in ("classification", "token_classification"):
        if not isinstance(hf.get("id2label", {}), dict):
            raise ValueError(f"config.json id2label must be an object {{id: label}}; received {hf['id2label']!r}")
        values["num_labels"] = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    if "tie_embeddings" not in arch.fields and cls != arch.base_class and not hf.get("tie_word_embeddings", True):
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
    return _read_file(pickled)


def _read_file(pickled: Path) -> dict[str, np.ndarray]:
    """A .safetensors file, or a torch pickle read with torch.load(weights_only=True): tensors only."""
    if pickled.suffix == ".safetensors":
        return weights_lib.load(pickled)
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

    arch = families.get(cfg.kind).checkpoint(cfg)
    if arch is None:
        raise ValueError(f"Config.kind must be a family with a Hugging Face checkpoint table "
                         f"{sorted(f.name for f in families.FAMILIES.values() if f.checkpoints)}; "
                         f"received kind={cfg.kind!r}")
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
    tensors = {h: np.ascontiguousarray(fuse([leaf for leaf, _ in parts], [a for _, a in parts], cfg))
               for h, parts in grouped.items()}
    path = files.directory(path, "Hugging Face checkpoint directory")
    files.write_all({path / "model.safetensors": lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}),
                     path / "config.json": json.dumps(config_to_hf(cfg, arch, cls), indent=2) + "\n"},
                    "Hugging Face checkpoint file")
    return path


def hf_names(cfg: Config, cls: str) -> dict[str, str]:
    """{canonical name: the `transformers` class `cls`'s state_dict key} (one key may hold a fused tensor)."""
    arch = families.get(cfg.kind).checkpoint(cfg)
    return {c: h for c, h, _ in _rows(arch, cfg, "" if cls == arch.base_class else arch.prefix)}


def config_to_hf(cfg: Config, arch: Checkpoint, cls: str) -> dict:
    hf = {"architectures": [cls], "model_type": arch.model_type, **arch.fixed, "tie_word_embeddings": True}
    for field, (key, _) in arch.fields.items():
        hf[key] = getattr(cfg, field)
    if "activation" in arch.fields:
        hf[arch.fields["activation"][0]] = ACTIVATION_OUT[cfg.activation]
    return {**hf, **arch.write(cfg, cls)}


# -------------------------------------------------------------------------------- original layouts

def from_original(path) -> tuple[Config, dict[str, np.ndarray]]:
    """(Config, canonical weights) from a model's original release directory (Meta's Llama:
    `params.json` and `consolidated.NN.pth` or `.safetensors`), in that release's own layout: Meta's
    weights rotate interleaved pairs, so the Config says `rotary_pairing="interleaved"`; `permute_rotary`
    gives the half-split weights transformers stores."""
    path = Path(path)
    if not path.is_dir():
        raise weights_lib.WeightsError(f"checkpoint directory not found: {path}")
    layouts = [(f, o) for f in families.FAMILIES.values() for o in f.originals if (path / o.params_file).is_file()]
    if not layouts:
        names = sorted({o.params_file for f in families.FAMILIES.values() for o in f.originals})
        raise weights_lib.WeightsError(f"no original-layout parameters file in {path}: expected one of {names}")
    family, layout = layouts[0]
    values = layout.read(_read_json(path / layout.params_file))
    files = sorted(path.glob("consolidated.*.safetensors")) or sorted(path.glob("consolidated.*.pth"))
    if len(files) != 1:
        raise weights_lib.WeightsError(f"{path}: expected one consolidated.NN file (one shard: merge tensor-parallel "
                                       f"shards first); received {[f.name for f in files] or 'none'}")
    tensors = _read_file(files[0])
    gate = next((v for k, v in tensors.items() if k.endswith("layers.0.feed_forward.w1.weight")), None)
    cfg = Config(**{**values, **({"d_ff": int(gate.shape[0])} if gate is not None else {})})
    rows = table_rows(layout.modules, registry.param_shapes(cfg))
    w = {c: np.ascontiguousarray(leaf.to_canonical(tensors[f"{external}.{leaf.external}"], cfg))
         for c, external, leaf in rows if f"{external}.{leaf.external}" in tensors}
    used = {f"{external}.{leaf.external}" for _, external, leaf in rows}
    w.update({k: v for k, v in tensors.items() if k not in used and not k.endswith("freqs")})  # check names them
    _check(cfg, w, [(c, f"{e}.{leaf.external}", leaf) for c, e, leaf in rows], path)
    return cfg, w


def permute_rotary(cfg: Config, w: dict, to: str = "half") -> tuple[Config, dict]:
    """The same model for the other rotary pairing: (cfg with `rotary_pairing=to`, weights).

    Interleaved pairs rotate features (2i, 2i + 1) of each head, the half split (i, i + Dh / 2).
    Reordering each head's query and key features [0, 2, 4, ..., 1, 3, 5, ...] turns one into the
    other (transformers' Llama conversion script does this to Meta's wq and wk); the scores, and
    everything after them, are unchanged. Keys permute per key/value head under GQA."""
    if to not in ("half", "interleaved"):
        raise ValueError(f"to must be 'half' or 'interleaved'; received to={to!r}")
    if cfg.rotary_pairing == to:
        return cfg, dict(w)
    Dh, Dr = cfg.head_dim, cfg.rotary_dim or cfg.head_dim
    order = np.concatenate([np.arange(0, Dr, 2), np.arange(1, Dr, 2), np.arange(Dr, Dh)])  # interleaved -> half
    if to == "interleaved":
        order = np.argsort(order)
    out = dict(w)
    for name, array in w.items():
        if re.search(r"attention\.(query|key)\.(kernel|bias)$|attention\.(query|key)_norm\.gamma$", name):
            heads = array.shape[-1] // Dh
            out[name] = np.ascontiguousarray(
                array.reshape(*array.shape[:-1], heads, Dh)[..., order].reshape(array.shape))
    return cfg.replace(rotary_pairing=to), out


# -------------------------------------------------------------------------------- helpers

def _rows(arch: Checkpoint, cfg: Config, prefix: str) -> list[tuple[str, str, Leaf]]:
    """(canonical name, HF name, leaf) for every canonical parameter of `cfg`."""
    return [(c, join(external, leaf.external).format(base=prefix), leaf)
            for c, external, leaf in table_rows(arch.table(cfg.head), registry.param_shapes(cfg))]


def _check_layer_count(arch, cfg, hf, tensors, rows, prefix, path):
    """The "{i}" blocks the tensors hold must be the ones config.json says (`Checkpoint.layers`): a
    count that disagrees (an ALBERT whose num_hidden_groups is not its number of layer groups) is one
    error naming the field, not a list of missing and unexpected tensors."""
    patterns = {re.compile(re.escape(f"{external}.".replace("{base}", prefix)).replace(re.escape("{i}"), r"(\d+)"))
                for external, _ in arch.table(cfg.head).values() if "{i}" in external}
    held = {int(m.group(1)) for name in tensors for p in patterns if (m := p.match(name))}
    expected = {int(i) for c, _, _ in rows for i in re.findall(r"^\w+\.(\d+)\.", c)}
    if patterns and held != expected:
        key = arch.fields[arch.layers][0]
        value = hf.get(key, arch.fields[arch.layers][1])
        raise ValueError(f"{path}: config.json {key}={value} (Config.{arch.layers}) needs the tensors of "
                         f"{len(expected)} layer block(s) {sorted(expected)}; the file holds {len(held)}: {sorted(held)}")


def _buffers(arch, cfg, prefix) -> set[str]:
    layers = {int(i) for name in registry.param_shapes(cfg) for i in re.findall(r"\.(\d+)\.", name)}
    return {b.format(i=i, base=prefix) for b in arch.buffers for i in layers or [0]}


def _check(cfg, w, rows, path):
    """weights.check, with each canonical name followed by the HF tensor it came from."""
    try:
        weights_lib.check(cfg, w)
    except weights_lib.WeightsError as e:
        message = str(e)
        for c, h, leaf in rows:
            stored = ", stored [out, in]" if leaf.layout == "transpose" else ""
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
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of the model's settings; received a JSON "
                         f"{type(data).__name__}")
    return data


def _family(model_type) -> Checkpoint:
    if model_type not in ARCHITECTURES:
        raise ValueError(f"model_type must be one of {list(ARCHITECTURES)} (supported architectures: "
                         f"{', '.join(c for a in ARCHITECTURES.values() for c in a.classes)}); "
                         f"received model_type={model_type!r}")
    return ARCHITECTURES[model_type]


def _architecture(hf: dict) -> tuple[Checkpoint, str]:
    arch = _family(hf.get("model_type"))
    cls = (hf.get("architectures") or [arch.base_class])[0]
    if cls not in arch.classes:
        raise ValueError(f"config.json architectures must name one of {list(arch.classes)}; received {cls!r}")
    return arch, cls

