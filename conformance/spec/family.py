"""A model family, declared once: everything the harness knows about it, as data.

One `Family` per module in `conformance.spec.families` holds the registry entry and its
variants, the presets, the inputs of a whole-model run, the training tasks and their heads,
the Hugging Face checkpoint table, the keras-hub table, the walkthrough and how a streamed run
takes the model apart (`Stack`). Every harness
feature (weights, checkpoints, costs, training, reports, ONNX, explain) reads these fields;
none asks which family it is looking at.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from conformance.core.config import Config
from conformance.spec.entry import Entry


@dataclass(frozen=True)
class Task:
    """A training objective: the head the model needs for it (`Config.head`). Its loss has the task's
    name in every mirror's `training.LOSSES`; its labels come from `conformance.training.make_batches`."""
    head: str


# Hugging Face activation names <-> Config.activation ("gelu_new" and "gelu_pytorch_tanh" are the same tanh formula)
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                  "silu": "silu"}
HF_ACTIVATION_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint layout: config.json fields and tensor names <-> Config and canonical names.

    `modules` maps a canonical module to (HF module, leaves); in both, "{i}" stands for a layer
    index and "{base}" for `prefix` (what task classes put before the backbone's tensors)."""
    model_type: str
    classes: dict          # HF class -> Config.head; a head's first class is what to_hf writes by default
    base_class: str        # the HF class whose tensors carry no prefix
    prefix: str
    modules: dict
    tied: dict             # HF tensor -> the canonical tensor it duplicates (not stored separately)
    buffers: tuple         # non-parameter HF tensors older files carry: read past, never written
    foreign: tuple         # tensors of heads no canonical model has (BERT's next-sentence head)
    fields: dict           # Config field <- (config.json key, HF's default)
    fixed: dict            # config.json key -> the only value this project reproduces
    constants: dict        # Config fields every checkpoint of this family shares
    read: Callable[[dict, str], dict] = lambda hf, cls: {}   # more Config fields from (config.json, class)
    write: Callable[[Config, str], dict] = lambda cfg, cls: {}  # more config.json keys for (cfg, class)
    head_modules: dict = field(default_factory=dict)  # head -> entries of `modules` its classes name otherwise
    #                                                   (RoBERTa's classifier.dense is the pooler of ours)
    layers: str = "num_layers"  # the Config field that counts the "{i}" blocks the tensors hold (ALBERT's groups)
    masked_queries: bool = False  # its models mask padded queries too (DeBERTa: mask_i mask_j): those rows see
    #                               no key, zeros here and a uniform average in transformers
    init: Callable[[Config, str], dict] = lambda cfg, cls: {}   # the class's constructor arguments config.json
    #                                                             does not hold (ViTModel's add_pooling_layer)
    optional: dict = field(default_factory=dict)  # Config field <- canonical module: True iff the file holds the
    #                                               module's tensors, where the model would have it (a pooler)
    call: dict = field(default_factory=dict)      # Config field -> the forward argument of transformers that
    #                                               it is (interpolate_pos_encoding): how a call runs, not a file's
    refine: Callable[[Config, dict, str], dict] = lambda cfg, tensors, prefix: {}  # Config fields the tensors
    #       decide (cfg as config.json reads, the file's tensors, its prefix): a head of its own, a bias not zero
    adjust: Callable = lambda model, cfg: model  # the class built from config.json, given cfg's parameters where
    #       its constructor has others (transformers 5.24 ties T5's head whatever the config says)
    hidden_states: dict = field(default_factory=dict)  # transformers' hidden-state tuple -> (our trace name of its
    #       first entry, of entry i + 1 ("{i}" the layer), of its last one or None: the last layer's output)

    def table(self, head: str) -> dict:
        """`modules` as the classes of `head` name them."""
        return {**self.modules, **self.head_modules.get(head, {})}


@dataclass(frozen=True)
class Original:
    """A model's original release layout, not Hugging Face's (Meta's `params.json` + `consolidated.NN.pth`):
    its tensor names (`modules`, as in `Checkpoint`) and its parameters file read into Config fields."""
    name: str              # "meta"
    params_file: str       # the file in the directory that says which layout it is
    modules: dict
    read: Callable[[dict], dict]


@dataclass(frozen=True)
class KerasHub:
    """A keras-hub backbone with the canonical weights mapped in: the second, independent oracle.

    `modules` maps a canonical module to (keras-hub variable path, leaves), "{i}" a layer index."""
    backbone: str          # the class in keras_hub.models
    modules: dict
    numerics: dict         # Config fields keras-hub hard-codes: a reference rebuilt with these is its math
    required: dict         # Config fields the backbone cannot express otherwise: anything else is refused
    dims: Callable[[Config], dict]  # the backbone's constructor arguments for a Config
    inputs: dict           # our input name -> (keras-hub input name, the value when left out: "ones"/"zeros")
    outputs: dict          # our output key -> the backbone's output key (None: it returns one tensor)
    tied_logits: bool = False  # logits = the token embedding reversed on the last output, as its CausalLM does
    model_type: str = ""   # the Checkpoint model_type whose configs it reproduces ("": the family's only one)
    absent: tuple = ()     # canonical weights it has no variable for and computes as zeros (RoBERTa's segment
    #                        row; a pooler whose output it does not return): compared with them zeroed
    extra: tuple = ()      # its variable paths (prefixes) no canonical weight maps: left as built, their
    #                        outputs not compared (ELECTRA's pooled_dense, a pooler transformers' model lacks)
    padded_positions: bool = True  # False: its outputs at padded positions are its own (other positions, no
    #                                query mask), compared at the attended positions only
    layouts: dict = field(default_factory=dict)  # our input -> the axis order keras-hub takes it in (ViT's images
    #                                              channels last: (0, 2, 3, 1))


@dataclass(frozen=True)
class Step:
    """One step of a walkthrough: a trace name of the reference and what happens there."""
    op: str             # e.g. "encoder.0.attention.probs"
    says: str           # one line
    library: str = ""   # what the libraries' own layers do differently here, one line


@dataclass(frozen=True)
class Walkthrough:
    """`tmirror explain` for a model: a small config, readable inputs, the steps worth reading, and
    which library layers check which outputs (the family's `transformers` class from `Checkpoint`
    at `transformers_steps`; torch layers from `conformance.oracles.layers` at `layer_oracles`)."""
    summary: str
    config: dict                       # overrides of the registry's tiny config
    inputs: dict                       # input name -> nested list, the example
    steps: tuple
    shows: tuple = ()                  # the Config fields worth printing beside d_model
    transformers_steps: dict = field(default_factory=dict)  # trace name -> (output field, index or None)
    transformers_dtype: str = "float64"  # the tolerance row transformers' values are held to there ...
    transformers_why: str = ""           # ... and why, where it is not float64's
    layer_oracles: dict = field(default_factory=dict)       # module path -> conformance.oracles.layers function
    capture: str | None = None         # module paths whose call inputs the layer oracles need


@dataclass(frozen=True)
class Decoding:
    """How `conformance.generate` drives a model of a family that `generates`: what its forward takes.

    Decoder-only (`encoder_decoder=False`): the prompt starts every sequence. A call is
    `model(input_ids=(N, t), attention_mask=(N, t), position_ids=(N, t))`; with the cache,
    `Built.step(new_ids, cache, attention_mask=(N, past + new), position_ids=(N, new))`. The mask
    is passed only when the prompt has padding, `position_ids` only where `position_ids` is True:
    then positions are cumsum(mask) - 1 (pads at 0) and a left-padded prompt is allowed; a model
    without them numbers positions 0.. itself, so its prompts must be unpadded.

    Encoder-decoder (`encoder_decoder=True`): the prompt is the encoder's input; every sequence
    starts with the decoder start token. Without the cache a call is
    `model(input_ids=source, attention_mask=source_mask, decoder_input_ids=(N, t))`. With it
    (`cache=True`), the first `Built.step(cache=cache, input_ids=source, attention_mask=source_mask,
    decoder_input_ids=(N, t))` runs the encoder once and keeps in each decoder layer's cache dict
    what cross-attention needs (its keys and values, and the source mask) beside the growing
    self-attention keys and values; later steps pass only `decoder_input_ids=(N, 1)`.

    Either way the cache is a list of dicts of framework tensors whose axis 0 is the sequence:
    beam search reorders every entry with `Built.reorder_cache`, so a model may keep anything there.
    `cache=False`: the model keeps none, and generation recomputes every step (`use_cache=False`).
    """
    position_ids: bool = False
    encoder_decoder: bool = False
    cache: bool = True


def _no_options(cfg: Config, i: int) -> dict:
    return {}


def _reads_nothing(cfg: Config) -> tuple:
    return ()


@dataclass(frozen=True)
class Stack:
    """A model taken apart for a streamed run (`conformance.report.stream`): its embeddings, its
    layers one at a time, its head. Each part is the model's own code run alone: the embeddings
    submodule and the `head` method (everything after the last layer) of the model built with no
    layers and only the vocabulary rows at hand, and each layer as the class the model builds it
    from. So a part's trace names are the whole model's, and a layer run alone is the layer the
    whole model runs: the streamed and whole-model traces agree name by name and number by number.

    `rows`: tables the embeddings look up, read only at the ids of an input (a 128k-row table
    costs B T rows). `vocabulary`: parameters with a vocabulary axis; when the head reads one
    (its own modules' parameters and `head_reads`), it runs in chunks of the vocabulary and its
    `logits` trace names and outputs are put back together along their last axis."""
    layers: str                                 # the attribute holding the layers: trace names `layers.{i}.*`
    embedding_call: Callable[[dict], tuple]     # the model's inputs -> (args, kwargs) of the embeddings call
    layer_call: Callable[[dict], dict]          # the model's inputs -> keyword arguments of every layer call
    layer: str = "EncoderLayer"                 # each layer's class, by the same name in every mirror
    layer_options: Callable[[Config, int], dict] = _no_options  # layer i's constructor arguments after cfg
    embeddings: str = "embeddings"              # the submodule that makes the first hidden state
    rows: dict = field(default_factory=dict)    # table -> the input whose ids pick its rows
    vocabulary: dict = field(default_factory=dict)  # parameter -> its vocabulary axis
    head_reads: Callable[[Config], tuple] = _reads_nothing  # parameters of other modules the head reads
    logits: tuple = ("logits",)                 # the head's trace names and outputs along the vocabulary


@dataclass(frozen=True)
class Family:
    entry: Entry
    presets: dict[str, Config]
    run_inputs: dict = field(default_factory=dict)  # the input maker's options for a whole-model run
    tasks: dict[str, Task] = field(default_factory=dict)  # training task -> Task
    pretraining: str | None = None     # the task `tmirror report --train` trains with
    generates: bool = False            # `conformance.generate` drives it, as `decoding` says
    decoding: Decoding = Decoding()
    checkpoints: tuple = ()           # its Hugging Face layouts (`Checkpoint`), one per model_type
    originals: tuple = ()             # original release layouts (`Original`), e.g. Meta's
    keras_hub: tuple = ()             # keras-hub backbones (`KerasHub`), by the model_type each reproduces
    walkthrough: Walkthrough | None = None
    variant_walkthroughs: dict = field(default_factory=dict)  # variant -> Walkthrough: a variant worth reading alone
    base_preset: str | None = None     # the full-size preset the docs quote and the --full tier runs
    stack: Stack | None = None         # how a streamed run takes it apart; None: it cannot be streamed

    @property
    def name(self) -> str:
        return self.entry.name

    def inputs(self, cfg: Config, batch: int, length: int, seed: int = 0, rng=None) -> dict[str, np.ndarray]:
        """The inputs of a whole-model run (`tmirror report`, ONNX export, costs, training batches): every
        input the model takes, drawn from `rng` (default: seeded by `seed`)."""
        rng = np.random.default_rng(seed) if rng is None else rng
        return self.entry.make_inputs(cfg, rng, batch, length, **self.run_inputs)

    def checkpoint(self, cfg: Config) -> Checkpoint | None:
        """The Hugging Face layout `cfg` writes as: `cfg.checkpoint`'s, else the family's first; None: none."""
        tables = {c.model_type: c for c in self.checkpoints}
        if cfg.checkpoint and cfg.checkpoint not in tables:
            raise ValueError(f"Config.checkpoint must be one of the {self.name} family's Hugging Face model types "
                             f"{list(tables)} (or ''); received checkpoint={cfg.checkpoint!r}")
        return tables.get(cfg.checkpoint) or next(iter(tables.values()), None)

    def keras_hub_table(self, cfg: Config) -> KerasHub | None:
        """The keras-hub backbone that reproduces `cfg`'s checkpoint type, or None where keras-hub has none."""
        hf = self.checkpoint(cfg)
        model_type = hf.model_type if hf else ""
        return next((t for t in self.keras_hub if t.model_type in ("", model_type)), None)

    def transformers_class(self, cfg: Config) -> str | None:
        """The `transformers` class with exactly `cfg`'s parameters, or None where it has none."""
        hf = self.checkpoint(cfg)
        if hf is None or any(getattr(cfg, field) != value for field, value in hf.constants.items()):
            return None
        return next((cls for cls, head in hf.classes.items() if head == cfg.head), None)
