"""Mixtral (Jiang et al. 2024, "Mixtral of Experts"): a Mistral whose feed-forward is the sparse
mixture of experts (`numpy_ref.moe.SparseMoeBlock`, `cfg.feed_forward = "moe"`); everything else
is `numpy_ref.llama.Llama`'s. One output more, `aux_loss` (a scalar): the load-balancing loss over
every layer's routing, at the real tokens of `attention_mask` (the new ones, with a cache), as
`transformers`' MixtralForCausalLM returns it with output_router_logits=True.

Backward: d aux reaches each layer's router through its mean probabilities (`moe.load_balancing_backward`);
the blocks add it to their own dL/dp (`SparseMoeBlock.probs_grad`), then Llama's backward runs.
"""
import numpy as np

from conformance.core import trace
from numpy_ref import autograd
from numpy_ref.blocks import cache_length
from numpy_ref.llama import Llama
from numpy_ref.moe import load_balancing_backward, load_balancing_loss, top_k


def aux_mask(attention_mask, past):
    """(B T,) the real tokens of this call's T positions, past a cache of `past`; None without a mask."""
    return None if attention_mask is None else np.asarray(attention_mask)[:, past:].reshape(-1)


class Mixtral(Llama):
    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """As `Llama.forward`, plus `aux_loss`: () the load-balancing loss of this call's routing."""
        past = cache_length(cache)
        out = super().forward(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        blocks = [layer.feed_forward for layer in self.layers]
        probs = [b.router_probs for b in blocks]                                # L x (N, E)
        aux = load_balancing_loss(probs, [b.router_index for b in blocks], aux_mask(attention_mask, past))
        return {**out, "aux_loss": trace.tap_for(self)("aux_loss", np.asarray(aux, probs[0].dtype))}

    def backward(self, grad):
        saved = autograd.peek(self)
        d_aux = saved.tap("aux_loss", grad["aux_loss"])                         # ()
        blocks = [layer.feed_forward for layer in self.layers]
        probs = [autograd.peek(b).taps["probs"] for b in blocks]               # L x (N, E)
        indices = [top_k(p, b.k) for p, b in zip(probs, blocks)]
        mask = aux_mask(saved.inputs["attention_mask"], 0)  # backward runs without a cache
        for block, d_probs in zip(blocks, load_balancing_backward(d_aux, probs, indices, mask)):
            block.probs_grad = d_probs
        super().backward(grad)
