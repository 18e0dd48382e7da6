"""The NumPy reference: every component and model as plain, float64-capable NumPy.

This is the math, readable line by line; `torch_impl` and `tf_impl` mirror it name for
name. Its module tree is also the declaration of every canonical weight name and shape.
"""
from numpy_ref.activations import Activation, Dropout, Softmax
from numpy_ref.attention import MultiHeadAttention, ScaledDotProductAttention
from numpy_ref.bart import Bart
from numpy_ref.bert import Bert
from numpy_ref.deberta import Deberta
from numpy_ref.blocks import DecoderLayer, EncoderLayer
from numpy_ref.disentangled import DisentangledAttention
from numpy_ref.embeddings import (PositionEmbedding, SegmentEmbedding, SinusoidalPositionalEncoding,
                                  TokenEmbedding)
from numpy_ref.feed_forward import FeedForward, GatedFeedForward
from numpy_ref.gpt2 import GPT2
from numpy_ref.llama import Llama
from numpy_ref.linear import Linear
from numpy_ref.linear_attention import LinearAttention, PerformerAttention
from numpy_ref.mixtral import Mixtral
from numpy_ref.moe import SparseMoeBlock
from numpy_ref.normalization import LayerNorm, RMSNorm
from numpy_ref.patch_embedding import PatchEmbedding
from numpy_ref.relative_position import RelativePositionBias
from numpy_ref.rotary import RotaryEmbedding
from numpy_ref.t5 import T5
from numpy_ref.transformer import Transformer
from numpy_ref.vit import ViT

__all__ = ["Activation", "Bart", "Bert", "Deberta", "DecoderLayer", "DisentangledAttention", "Dropout",
           "EncoderLayer", "FeedForward", "GPT2", "GatedFeedForward", "LayerNorm", "Linear", "LinearAttention",
           "Llama", "Mixtral", "MultiHeadAttention", "PatchEmbedding", "PerformerAttention", "PositionEmbedding",
           "RMSNorm", "RelativePositionBias", "RotaryEmbedding", "ScaledDotProductAttention", "SegmentEmbedding",
           "SinusoidalPositionalEncoding", "Softmax", "SparseMoeBlock", "T5", "TokenEmbedding", "Transformer", "ViT"]
