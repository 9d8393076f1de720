"""keras.distribution on JAX with 8 virtual CPU devices: DataParallel and ModelParallel (the layout map of
`Data2Vec2.get_layout_map`, which recipes/pretrain_image_tpu.py uses) give the single-device loss and weights, and masks differ per replica."""

import json

import keras
import pytest

from conftest import REPO, run_python, virtual_devices_env

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution runs on JAX")

SCRIPT = r"""
import json, sys
import numpy as np
import keras
from keras import ops
import keras_d2v2

assert len(keras.distribution.list_devices()) == 8

def images(n=8):
    return np.random.default_rng(0).normal(size=(n, 32, 32, 3)).astype("float32")

def run(distribution):
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    model = keras_d2v2.Data2Vec2.image("tiny_test", seed=0)
    masks = ops.convert_to_numpy(model(images(), training=True)["mask"]).reshape(8, 4, -1)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
    history = model.fit(images(), batch_size=8, epochs=3, shuffle=False, verbose=0)
    own = model.name + "/"  # auto-numbered per model: left out of the keys
    weights = {v.path.removeprefix(own): ops.convert_to_numpy(v) for v in model.weights}
    layouts = {v.path.removeprefix(own): list(getattr(getattr(v.value, "sharding", None), "spec", ()))
               for v in model.weights}
    return history.history["loss"], masks, weights, layouts

devices = keras.distribution.list_devices()
single = run(None)
data = run(keras.distribution.DataParallel(devices=devices))
mesh = keras.distribution.DeviceMesh((4, 2), axis_names=("batch", "model"), devices=devices)
layout_map = keras_d2v2.Data2Vec2.get_layout_map(mesh)
model_parallel = run(keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))

def max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)

out = {
    "loss": [single[0], data[0], model_parallel[0]],
    "mask_equal_to_single": [bool(np.array_equal(single[1], data[1])), bool(np.array_equal(single[1], model_parallel[1]))],
    "distinct_masks_across_samples": int(len({m.tobytes() for m in data[1]})),
    "weight_diff": [max_diff(single[2], data[2]), max_diff(single[2], model_parallel[2])],
    "qkv_layout": model_parallel[3]["encoder/block0/qkv/kernel"],
    "teacher_fc2_layout": model_parallel[3]["teacher/block1/fc2/kernel"],
    "decoder_layout": model_parallel[3]["decoder/conv0_kernel"],
}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result():
    env = virtual_devices_env(8)
    proc = run_python(["-c", SCRIPT], cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_data_and_model_parallel_match_one_device(result):
    single, data, model = result["loss"]
    assert len(single) == 3 and single[0] != single[-1]
    for losses in (data, model):
        assert losses == pytest.approx(single, rel=1e-4)
    assert result["weight_diff"][0] < 1e-4 and result["weight_diff"][1] < 1e-4


def test_masks_differ_per_replica_and_match_one_device(result):
    assert result["mask_equal_to_single"] == [True, True]
    # 8 images on 8 devices: each replica's image gets its own masks.
    assert result["distinct_masks_across_samples"] == 8


def test_layout_map_shards_student_and_teacher_blocks(result):
    assert result["qkv_layout"] == [None, "model"]
    assert result["teacher_fc2_layout"] in (["model"], ["model", None])  # JAX drops trailing Nones
    assert result["decoder_layout"] == [None, None, None, "model"]
