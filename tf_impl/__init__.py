"""The Keras 3 mirror of `numpy_ref`: every component a `keras.layers.Layer`, every model a
`keras.Model`, written with `keras.ops` only.

Its variables carry the canonical names (`tf_impl._layer.named_weights`), so its weight mapping
is the identity.
"""
import conformance  # noqa: F401  (first: its import hook keeps TensorFlow's load-time lines off stderr)
from tf_impl.activations import Activation, Dropout, Softmax
from tf_impl.attention import MultiHeadAttention, ScaledDotProductAttention
from tf_impl.bart import Bart
from tf_impl.bert import Bert
from tf_impl.deberta import Deberta
from tf_impl.blocks import DecoderLayer, EncoderLayer
from tf_impl.disentangled import DisentangledAttention
from tf_impl.embeddings import (PositionEmbedding, SegmentEmbedding, SinusoidalPositionalEncoding,
                                TokenEmbedding)
from tf_impl.feed_forward import FeedForward, GatedFeedForward
from tf_impl.gpt2 import GPT2
from tf_impl.llama import Llama
from tf_impl.linear import Linear
from tf_impl.linear_attention import LinearAttention, PerformerAttention
from tf_impl.mixtral import Mixtral
from tf_impl.moe import SparseMoeBlock
from tf_impl.normalization import LayerNorm, RMSNorm
from tf_impl.patch_embedding import PatchEmbedding
from tf_impl.relative_position import RelativePositionBias
from tf_impl.rotary import RotaryEmbedding
from tf_impl.t5 import T5
from tf_impl.transformer import Transformer
from tf_impl.vit import ViT

__all__ = ["Activation", "Bart", "Bert", "Deberta", "DecoderLayer", "DisentangledAttention", "Dropout",
           "EncoderLayer", "FeedForward", "GPT2", "GatedFeedForward", "LayerNorm", "Linear", "LinearAttention",
           "Llama", "Mixtral", "MultiHeadAttention", "PatchEmbedding", "PerformerAttention", "PositionEmbedding",
           "RMSNorm", "RelativePositionBias", "RotaryEmbedding", "ScaledDotProductAttention", "SegmentEmbedding",
           "SinusoidalPositionalEncoding", "Softmax", "SparseMoeBlock", "T5", "TokenEmbedding", "Transformer", "ViT"]
