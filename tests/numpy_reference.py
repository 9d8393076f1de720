"""Independent NumPy implementations (float64) that the layers are checked against."""

import math

import numpy as np
from keras import ops


def numpy_layer_norm(x, eps, gamma=1.0, beta=0.0):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


def numpy_gelu(h):
    return 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))


def numpy_block(block, x, pre_ln, bias=None, return_probs=False):
    """A `TransformerBlock` in NumPy: `(out, ffn)`, and the attention probabilities with
    `return_probs`; `bias` is added to the attention logits."""
    w = {v.path.split("/")[-2] + "/" + v.path.split("/")[-1]: ops.convert_to_numpy(v).astype(np.float64) for v in block.weights}
    dense = lambda name, h: h @ w[f"{name}/kernel"] + w[f"{name}/bias"]  # noqa: E731
    norm = lambda name, h: numpy_layer_norm(h, block.norm_eps, w[f"{name}/gamma"], w[f"{name}/beta"])  # noqa: E731
    probs_seen = []

    def attention(h):
        b, t, d = h.shape
        heads = block.num_heads
        q, k, v = dense("qkv", h).reshape(b, t, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)
        if bias is not None:
            logits = logits + bias
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        probs_seen.append(probs)
        return dense("attention_projection", (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, d))

    mlp = lambda h: dense("fc2", numpy_gelu(dense("fc1", h)))  # noqa: E731
    if pre_ln:
        x = x + attention(norm("norm1", x))
        ffn = mlp(norm("norm2", x))
        out = x + ffn, ffn
    else:
        r = norm("norm1", x + attention(x))
        ffn = mlp(r)
        out = norm("norm2", r + ffn), ffn
    return (*out, probs_seen[0]) if return_probs else out
