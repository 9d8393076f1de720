"""Additive attention biases that hide keys: padding, and the pairs that MTO's recalibration forbids."""

from keras import ops

# Added to the attention logits of a hidden key. Finite, so that float16 and bfloat16 logits and
# rows whose every key is hidden stay NaN-free; exp(-1e4) is 0 in every float format.
HIDDEN_KEY_LOGIT = -1e4


def padding_attention_bias(padding_mask):
    """Additive bias `(N, 1, 1, T)` that hides padded keys, from a `(N, T)` mask (True = padding)."""
    return ops.cast(padding_mask, "float32")[:, None, None, :] * HIDDEN_KEY_LOGIT


def forbidden_pairs_bias(forbidden):
    """Additive bias `(N, 1, Q, K)` from a float `(N, Q, K)` array, 1 where query q may not see key k."""
    return (forbidden * HIDDEN_KEY_LOGIT)[:, None]
