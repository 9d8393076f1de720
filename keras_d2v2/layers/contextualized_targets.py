"""Contextualized targets: normalized average of the teacher's top-K FFN outputs."""

import keras
from keras import ops

TARGET_EPS = 1e-5


def instance_norm_over_tokens(x, eps=TARGET_EPS, weights=None):
    """Normalizes each channel over the token axis, per sample (`F.instance_norm` on `(B, D, T)`).
    With `weights` `(B, T)` (0 at padding), the statistics come from the weighted tokens only."""
    if weights is None:
        mean = ops.mean(x, axis=1, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=1, keepdims=True)
    else:
        w = weights[..., None]
        count = ops.maximum(ops.sum(w, axis=1, keepdims=True), 1.0)
        mean = ops.sum(x * w, axis=1, keepdims=True) / count
        var = ops.sum(ops.square(x - mean) * w, axis=1, keepdims=True) / count
    return (x - mean) * ops.rsqrt(var + eps)


def layer_norm_over_features(x, eps=TARGET_EPS):
    """Non-affine LayerNorm over the last axis."""
    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * ops.rsqrt(var + eps)


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ContextualizedTargets(keras.layers.Layer):
    """Builds regression targets from the teacher's per-block FFN outputs, always in float32.

    Takes the list of FFN outputs `(B, T, D)` of the teacher's main blocks (extra tokens such
    as CLS already removed), keeps the last `top_k`, optionally normalizes each one (instance
    norm over tokens per channel, or LayerNorm over features), averages them, and optionally
    normalizes the average (LayerNorm over features, or instance norm over tokens). All norms
    are non-affine with eps 1e-5. Images use per-layer instance norm + final LayerNorm; audio and
    base text use per-layer instance norm only. An optional `padding_mask` `(B, T)` (True at
    padding) keeps padded tokens out of the instance-norm statistics.

    Args:
        top_k: int, number of final blocks averaged (`average_top_k_layers`).
        instance_norm_target_layer: bool, per-layer instance norm over tokens.
        layer_norm_target_layer: bool, per-layer LayerNorm over features.
        layer_norm_targets: bool, final LayerNorm over features.
        instance_norm_targets: bool, final instance norm over tokens.

    Example:
    >>> targets = ContextualizedTargets(top_k=2, layer_norm_targets=True)
    >>> targets([np.ones((2, 4, 8)), np.zeros((2, 4, 8)), np.ones((2, 4, 8))]).shape
    (2, 4, 8)
    """

    def __init__(
        self,
        *,
        top_k=10,
        instance_norm_target_layer=True,
        layer_norm_target_layer=False,
        layer_norm_targets=True,
        instance_norm_targets=False,
        **kwargs,
    ):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if int(top_k) != top_k or top_k < 1:
            raise ValueError(f"`top_k` must be an integer >= 1, got {top_k}.")
        self.top_k = int(top_k)
        self.instance_norm_target_layer = instance_norm_target_layer
        self.layer_norm_target_layer = layer_norm_target_layer
        self.layer_norm_targets = layer_norm_targets
        self.instance_norm_targets = instance_norm_targets

    def call(self, layer_results, padding_mask=None):
        if len(layer_results) < self.top_k:
            raise ValueError(
                f"`top_k`={self.top_k} is larger than the number of blocks ({len(layer_results)})."
            )
        # The reference includes padding in the token statistics; here padding never counts.
        weights = None if padding_mask is None else 1.0 - ops.cast(padding_mask, "float32")
        total = None
        for y in layer_results[-self.top_k :]:
            y = ops.cast(y, "float32")
            if self.instance_norm_target_layer:
                y = instance_norm_over_tokens(y, weights=weights)
            if self.layer_norm_target_layer:
                y = layer_norm_over_features(y)
            total = y if total is None else total + y
        y = total / self.top_k
        if self.layer_norm_targets:
            y = layer_norm_over_features(y)
        if self.instance_norm_targets:
            y = instance_norm_over_tokens(y, weights=weights)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape[-1]

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            top_k=self.top_k,
            instance_norm_target_layer=self.instance_norm_target_layer,
            layer_norm_target_layer=self.layer_norm_target_layer,
            layer_norm_targets=self.layer_norm_targets,
            instance_norm_targets=self.instance_norm_targets,
        )
        return config
