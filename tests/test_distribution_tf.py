"""TensorFlow's `tf.distribute.MirroredStrategy` on 2 logical CPU devices: a 2-replica `fit()` equals
the one-device run, and the replicas draw their own masks."""

import json
import os

import keras
import pytest

from conftest import REPO, run_python

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute is TensorFlow's")

# Logical devices must be set before TensorFlow initializes, hence a fresh process.
SCRIPT = r"""
import json
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np
import keras
import keras_d2v2

CLONES = 4
rng = np.random.default_rng(0)
images = rng.normal(size=(8, 32, 32, 3)).astype("float32")


def inputs(model):
    # Masks and mask noise made outside the step, so both runs see the same ones.
    masks = keras.ops.convert_to_numpy(model(images, training=True)["mask"]).reshape(8, CLONES, -1)
    num_masked = masks.shape[-1] - model.masking.num_visible(masks.shape[-1])
    noise = rng.normal(scale=0.01, size=(8, CLONES, num_masked, model.encoder.embed_dim)).astype("float32")
    return {"images": images, "mask": masks.astype("float32"), "mask_noise": noise}


def run(strategy, data=None):
    keras.utils.set_random_seed(0)  # initializers without their own seed draw from the global one
    with strategy.scope():
        model = keras_d2v2.Data2Vec2.image("tiny_test", seed=0)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
    data = data or inputs(model)
    history = model.fit(data, batch_size=8, epochs=3, shuffle=False, verbose=0)
    own = model.name + "/"
    weights = {v.path.removeprefix(own): keras.ops.convert_to_numpy(v) for v in model.weights}
    return history.history, weights, data, model


single, single_weights, data, _ = run(tf.distribute.get_strategy())
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
replicated, replicated_weights, _, model = run(mirrored, data)

# Masks drawn inside the step: the same image on both replicas must get different masks.
same_image = tf.data.Dataset.from_tensor_slices(np.repeat(images[:1], 2, axis=0)).batch(2)
batch = next(iter(mirrored.experimental_distribute_dataset(same_image)))
masks = mirrored.run(lambda x: model(x, training=True)["mask"], args=(batch,))
per_replica = [np.asarray(m) for m in mirrored.experimental_local_results(masks)]

print("RESULT " + json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "single": single,
    "replicated": replicated,
    "weight_diff": max(float(np.max(np.abs(single_weights[k] - replicated_weights[k]))) for k in single_weights),
    "updates": int(replicated_weights["num_updates"]),
    "mask_shapes": [list(m.shape) for m in per_replica],
    "replica_masks_equal": bool(np.array_equal(per_replica[0], per_replica[1])),
}))
"""


@pytest.fixture(scope="module")
def result():
    proc = run_python(["-c", SCRIPT], cwd=REPO, env=dict(os.environ, KERAS_BACKEND="tensorflow"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_two_replicas_match_one_device(result):
    assert result["replicas"] == 2
    single, replicated = result["single"], result["replicated"]
    assert len(single["loss"]) == 3 and single["loss"][0] != single["loss"][-1]
    for name in ("loss", "regression_loss", "cls_loss", "ema_decay"):
        assert replicated[name] == pytest.approx(single[name], rel=1e-4), name
    # The collapse monitors log the replicas' mean of their own batch's std: close, not equal.
    for name in ("target_std", "pred_std"):
        assert replicated[name] == pytest.approx(single[name], rel=1e-2), name
    assert result["weight_diff"] < 1e-4
    assert result["updates"] == 3


def test_replicas_draw_their_own_masks(result):
    assert result["mask_shapes"] == [[4, 64], [4, 64]]
    assert not result["replica_masks_equal"]
