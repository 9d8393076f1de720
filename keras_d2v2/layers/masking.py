"""What the masking layers and the student share: argument checks, the visible-token count, and
the gathers between a mask and the visible tokens."""

from keras import ops


def mask_info(mask, num_visible):
    """Gather indices for a `(rows, T)` mask (1 = masked) with `num_visible` zeros in every row.

    Returns `(ids_keep, ids_restore)`: `ids_keep` (rows, num_visible) lists the visible
    positions in ascending order, and `ids_restore` is the inverse of the permutation
    "visible positions ascending, then masked positions ascending", so that
    `take_along_axis(concat([visible, masked]), ids_restore)` puts tokens back in place.
    """
    length = ops.shape(mask)[1]
    order_key = ops.cast(mask, "int32") * length + ops.arange(length, dtype="int32")[None, :]
    ids_shuffle = ops.argsort(order_key, axis=1)
    ids_restore = ops.argsort(ids_shuffle, axis=1)
    return ids_shuffle[:, :num_visible], ids_restore


def check_masking_args(mask_prob, clone_batch, block_length=1, mask_prob_adjust=0.0):
    """Raises a ValueError naming the first masking argument out of its range."""
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"`mask_prob` must be in (0, 1), got {mask_prob}.")
    if int(block_length) != block_length or block_length < 1:
        raise ValueError(f"`block_length` must be an integer >= 1, got {block_length}.")
    if mask_prob_adjust < 0:
        raise ValueError(f"`mask_prob_adjust` must be >= 0, got {mask_prob_adjust}.")
    if int(clone_batch) != clone_batch or clone_batch < 1:
        raise ValueError(f"`clone_batch` must be an integer >= 1, got {clone_batch}.")


def num_visible_tokens(mask_prob, num_tokens):
    """Visible tokens per row, `int(T * (1 - mask_prob))` as in the reference; at least 1, fewer than T."""
    visible = int(num_tokens * (1 - mask_prob))
    if visible < 1:
        raise ValueError(
            f"`mask_prob`={mask_prob} leaves no visible token out of {num_tokens}; "
            f"use a mask_prob below {1 - 1 / num_tokens:.4f}."
        )
    if visible >= num_tokens:
        raise ValueError(f"`mask_prob`={mask_prob} masks no token out of {num_tokens}.")
    return visible


def keep_top_k(scores, num_visible):
    """Mask `(rows, T)` (1 = masked) that keeps the `num_visible` highest scores of each row."""
    _, kept = ops.top_k(scores, num_visible, sorted=False)
    return 1.0 - ops.max(ops.one_hot(kept, scores.shape[1], dtype="float32"), axis=1)


def gather_tokens(x, ids):
    """`x[n, ids[n, k]]` for `x` of shape (N, T, D) and `ids` of shape (N, K)."""
    ids = ops.broadcast_to(ops.expand_dims(ids, -1), (ops.shape(ids)[0], ops.shape(ids)[1], x.shape[-1]))
    return ops.take_along_axis(x, ids, axis=1)
