"""Mirrors `numpy_ref.mixtral`. No differences beyond the Keras layer plumbing."""
from keras import ops

from conformance.core import trace
from tf_impl.blocks import cache_length
from tf_impl.llama import Llama
from tf_impl.moe import load_balancing_loss


def aux_mask(attention_mask, past):
    if attention_mask is None:
        return None
    return ops.reshape(attention_mask[:, past:] if past else attention_mask, (-1,))  # symbolic: no cache


class Mixtral(Llama):
    def call(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """As `Llama.call`, plus `aux_loss`: () the load-balancing loss of this call's routing."""
        past = cache_length(cache)
        out = super().call(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        blocks = [layer.feed_forward for layer in self.layers]
        probs = [b.router_probs for b in blocks]                                # L x (N, E)
        aux = load_balancing_loss(probs, [b.router_index for b in blocks], aux_mask(attention_mask, past))
        return {**out, "aux_loss": trace.tap_for(self)("aux_loss", aux)}
