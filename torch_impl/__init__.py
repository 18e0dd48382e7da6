"""The PyTorch mirror of `numpy_ref`: every component and model as a `torch.nn.Module`.

Mirrors `numpy_ref` name for name: the same classes, attributes, forward signatures, trace
taps and shape comments. Weights are `nn.Linear`, `nn.LayerNorm` and `nn.Embedding`
parameters; `conformance.weights.mapping` translates canonical names and layouts to this state_dict.
"""
from torch_impl.activations import Activation, Dropout, Softmax
from torch_impl.attention import MultiHeadAttention, ScaledDotProductAttention
from torch_impl.bart import Bart
from torch_impl.bert import Bert
from torch_impl.deberta import Deberta
from torch_impl.blocks import DecoderLayer, EncoderLayer
from torch_impl.disentangled import DisentangledAttention
from torch_impl.embeddings import (PositionEmbedding, SegmentEmbedding, SinusoidalPositionalEncoding,
                                   TokenEmbedding)
from torch_impl.feed_forward import FeedForward, GatedFeedForward
from torch_impl.gpt2 import GPT2
from torch_impl.llama import Llama
from torch_impl.linear import Linear
from torch_impl.linear_attention import LinearAttention, PerformerAttention
from torch_impl.mixtral import Mixtral
from torch_impl.moe import SparseMoeBlock
from torch_impl.normalization import LayerNorm, RMSNorm
from torch_impl.patch_embedding import PatchEmbedding
from torch_impl.relative_position import RelativePositionBias
from torch_impl.rotary import RotaryEmbedding
from torch_impl.t5 import T5
from torch_impl.transformer import Transformer
from torch_impl.vit import ViT

__all__ = ["Activation", "Bart", "Bert", "Deberta", "DecoderLayer", "DisentangledAttention", "Dropout",
           "EncoderLayer", "FeedForward", "GPT2", "GatedFeedForward", "LayerNorm", "Linear", "LinearAttention",
           "Llama", "Mixtral", "MultiHeadAttention", "PatchEmbedding", "PerformerAttention", "PositionEmbedding",
           "RMSNorm", "RelativePositionBias", "RotaryEmbedding", "ScaledDotProductAttention", "SegmentEmbedding",
           "SinusoidalPositionalEncoding", "Softmax", "SparseMoeBlock", "T5", "TokenEmbedding", "Transformer", "ViT"]
