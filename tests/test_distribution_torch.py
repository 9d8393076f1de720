"""PyTorch DDP on CPU (gloo, 2 processes): the DDP training loop of docs/distribution.md gives the
one-process weights, and each rank draws its own masks."""

import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="DDP is PyTorch's")

SCRIPT = r"""
import json, os, sys
import numpy as np
import torch
import keras
import keras_d2v2

torch.set_num_threads(1)
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
CLONES = 4
rng = np.random.default_rng(0)
images = rng.normal(size=(8, 32, 32, 3)).astype("float32")
keras.utils.set_random_seed(0)
model = keras_d2v2.Data2Vec2.image("tiny_test", seed=0)
# Masks and mask noise drawn before the process group exists, so every rank (and the one-process
# run) trains on the same ones; from then on each rank draws its own.
masks = keras.ops.convert_to_numpy(model(images, training=True)["mask"]).reshape(8, CLONES, -1).astype("float32")
num_masked = masks.shape[-1] - model.masking.num_visible(masks.shape[-1])
noise = rng.normal(scale=0.01, size=(8, CLONES, num_masked, model.encoder.embed_dim)).astype("float32")
if world > 1:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
share = slice(rank * 8 // world, (rank + 1) * 8 // world)
x = {"images": torch.as_tensor(images[share]), "mask": torch.as_tensor(masks[share]),
     "mask_noise": torch.as_tensor(noise[share])}

# The loop of docs/distribution.md: DDP averages the gradients in backward().
ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
losses = []
for step in range(3):
    model.zero_grad()
    y_pred = ddp(x, training=True)
    loss = model.compute_loss(x=x, y_pred=y_pred, training=True)
    loss.backward()
    model.optimizer.apply([v.value.grad for v in model.trainable_weights], model.trainable_weights)
    losses.append(float(loss.detach()))

own_masks = keras.ops.convert_to_numpy(model(images[:1], training=True)["mask"])
np.savez(os.environ["OUT"], losses=np.array(losses), own_masks=own_masks,
         **{"w/" + v.path: keras.ops.convert_to_numpy(v) for v in model.weights})
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    base = dict(os.environ, KERAS_BACKEND="torch", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))

    def start(rank, world, name):
        env = dict(base, RANK=str(rank), WORLD_SIZE=str(world), OUT=str(out / f"{name}.npz"))
        return subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)

    for group in ([start(0, 1, "single")], [start(0, 2, "rank0"), start(1, 2, "rank1")]):
        for proc in group:
            _, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr[-4000:]
    return {name: dict(np.load(out / f"{name}.npz")) for name in ("single", "rank0", "rank1")}


def test_two_ranks_train_the_one_process_weights(runs):
    single, rank0, rank1 = runs["single"], runs["rank0"], runs["rank1"]
    assert single["losses"][0] != single["losses"][-1]
    # Each rank's loss is its share's: their mean is the one-process loss.
    np.testing.assert_allclose((rank0["losses"] + rank1["losses"]) / 2, single["losses"], rtol=1e-5)
    weights = [k for k in single if k.startswith("w/")]
    assert any(k.startswith("w/teacher/") for k in weights)
    for key in weights:
        np.testing.assert_allclose(rank0[key], single[key], atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)


def test_each_rank_draws_its_own_masks(runs):
    assert runs["rank0"]["own_masks"].shape == runs["rank1"]["own_masks"].shape
    assert not np.array_equal(runs["rank0"]["own_masks"], runs["rank1"]["own_masks"])
