"""Mirrors `numpy_ref.mixtral`. No differences beyond the torch building blocks."""
from conformance.core import trace
from torch_impl.blocks import cache_length
from torch_impl.llama import Llama
from torch_impl.moe import load_balancing_loss


def aux_mask(attention_mask, past):
    return None if attention_mask is None else attention_mask[:, past:].reshape(-1)


class Mixtral(Llama):
    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """As `Llama.forward`, plus `aux_loss`: () the load-balancing loss of this call's routing."""
        past = cache_length(cache)
        out = super().forward(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        blocks = [layer.feed_forward for layer in self.layers]
        probs = [b.router_probs for b in blocks]                                # L x (N, E)
        aux = load_balancing_loss(probs, [b.router_index for b in blocks], aux_mask(attention_mask, past))
        return {**out, "aux_loss": trace.tap_for(self)("aux_loss", aux)}
