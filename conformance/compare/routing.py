"""Routing agreement for mixtures of experts: where two frameworks may honestly choose differently.

A token's experts are its k largest router probabilities. When the k-th and the (k+1)-th are closer
than the two frameworks' rounding can separate (a near-tie), either choice is correct to the
tolerance, and the outputs at that token may then differ by a whole expert's contribution: far
outside any float tolerance, and no bug. So the comparison is in three parts:

1. near-ties, from the float64 reference's probabilities: the gap p_(k) - p_(k+1) of a token at
   most `margin(dtype)` (twice the dtype's tolerance at that probability: each side may be off by
   one tolerance). Counted per MoE layer and case, and reported;
2. the selections (the experts with a non-zero routing weight) must be the same at every token
   that is not a near-tie; a disagreement there is a routing bug, pinned to the layer's `routing` op;
3. outputs are compared at the tokens whose result no near-tie can reach: in a model a choice at
   (row b, position t) reaches position t and, through the causal attention of the layers above,
   every later position of row b (the last layer's, only its own token); in a lone MoE block only the
   token itself. Outputs that are not
   per token (the load-balancing loss) are compared only when there is no near-tie at all.

Exact ties (two identical router columns) are the plainest case: NumPy's stable sort and
tf.math.top_k take the lower expert index, torch.topk (and so `transformers`' router) promises no order
and on CPU takes another: correct implementations, different experts. Nothing in the math makes either
choice the right one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from conformance.compare.tolerance import TOLERANCES, compare_outputs


def margin(dtype: str, p) -> np.ndarray:
    """How close two probabilities near `p` may come before `dtype`'s rounding can order them either way."""
    tol = TOLERANCES[dtype]
    return 2 * (tol.atol + tol.rtol * np.abs(p) + tol.scale_rtol)


def selection(routing) -> np.ndarray:
    """(N, E) bool: the experts each token was routed to (a non-zero renormalized weight)."""
    return np.asarray(routing) != 0


def near_ties(probs, k: int, dtype: str) -> np.ndarray:
    """(N,) bool: tokens whose k-th and (k+1)-th router probabilities are within `margin`."""
    probs = np.asarray(probs, np.float64)
    if k >= probs.shape[-1]:  # every expert is chosen: nothing to break
        return np.zeros(probs.shape[0], bool)
    ranked = -np.sort(-probs, axis=-1)                                            # (N, E), descending
    return ranked[:, k - 1] - ranked[:, k] <= margin(dtype, ranked[:, k - 1])


def token_shape(inputs: dict) -> tuple:
    """(B, T): how the routed tokens of a run's inputs are laid out (a model's ids, a block's (B, T, D) x)."""
    return tuple(np.shape(inputs["input_ids"])) if "input_ids" in inputs else tuple(np.shape(inputs["x"])[:-1])


def moe_layers(records: dict) -> list[str]:
    """The trace prefixes of the MoE blocks in a trace ('layers.0.feed_forward.', or '' for a lone block)."""
    return [key[: -len("routing")] for key in records if key.split(".")[-1] == "routing" and
            f"{key[: -len('routing')]}probs" in records]


@dataclass
class Agreement:
    """The routing of one run against the reference's."""
    tokens: int                                      # routed tokens per layer
    ties: dict = field(default_factory=dict)         # layer prefix -> (N,) near-ties in the reference
    differ: dict = field(default_factory=dict)       # layer prefix -> (N,) the selections differ
    ambiguous: np.ndarray | None = None              # (B, T) outputs a near-tie can reach

    @property
    def near_tie_count(self) -> int:
        return int(sum(t.sum() for t in self.ties.values()))

    @property
    def differ_at_ties(self) -> int:
        return int(sum((self.differ[k] & self.ties[k]).sum() for k in self.ties))

    def unambiguous_disagreements(self) -> list[str]:
        """'{layer}routing token n' for every token whose selection differs without a near-tie."""
        return [f"{layer}routing token {int(n)}" for layer in self.ties
                for n in np.nonzero(self.differ[layer] & ~self.ties[layer])[0]]

    def summary(self) -> str:
        return (f"{self.near_tie_count} near-ties in {len(self.ties)} MoE layer(s) x {self.tokens} tokens; "
                f"choices differ at {self.differ_at_ties} of them and at "
                f"{len(self.unambiguous_disagreements())} unambiguous tokens")


def agreement(reference: dict, other: dict, k: int, dtype: str, batch_shape: tuple, mixes_tokens: bool) -> Agreement:
    """Compare the routing of two traces (`Built.trace` records) of the same inputs; `batch_shape` (B, T)
    the tokens' layout; `mixes_tokens`: attention spreads a token's result to the later positions of its row."""
    layers = moe_layers(reference)
    result = Agreement(tokens=int(np.prod(batch_shape)))
    ambiguous = np.zeros(batch_shape, bool)
    for i, layer in enumerate(layers):
        ties = near_ties(reference[f"{layer}probs"], k, dtype)
        result.ties[layer] = ties
        result.differ[layer] = (selection(reference[f"{layer}routing"]) != selection(other[f"{layer}routing"])).any(-1)
        tied = ties.reshape(batch_shape)
        spreads = mixes_tokens and i < len(layers) - 1  # no attention after the last layer's experts
        ambiguous |= np.maximum.accumulate(tied, axis=-1) if spreads else tied
    result.ambiguous = ambiguous
    return result


def unambiguous(out: dict, reference: dict, routing: Agreement) -> dict:
    """`out` where no near-tie reaches, the reference's values elsewhere; an output that is not per token is
    left out when any near-tie exists."""
    mask = routing.ambiguous
    kept = {}
    for key, value in out.items():
        value, ref = np.asarray(value), np.asarray(reference[key])
        if value.shape[: mask.ndim] == mask.shape:
            kept[key] = np.where(mask.reshape(*mask.shape, *([1] * (value.ndim - mask.ndim))), ref, value)
        elif not mask.any():
            kept[key] = value
    return kept


def compare_unambiguous(label: str, out: dict, reference: dict, dtype: str, routing: Agreement) -> list:
    """`compare_outputs` at the tokens no near-tie reaches (`unambiguous`)."""
    kept = unambiguous(out, reference, routing)
    return compare_outputs(label, kept, {k: reference[k] for k in kept}, dtype)
