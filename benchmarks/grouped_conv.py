"""Forward+backward time of the decoder's grouped conv: native `ops.conv`, `grouped_conv2d_matmul`, and
`grouped_conv2d_per_group`, each over an input padded beforehand, and for odd kernels `native_same` and
`per_group_same`: the same convs padding their own (unpadded) input, which is what the decoder runs
(`per_group_same` on XLA:CPU, `native_same` elsewhere).

Why it exists: on CPU, XLA's gradient of a grouped convolution made the conv decoder dominate the
data2vec 2.0 step on JAX and TensorFlow; `ConvDecoder2D(conv_impl="auto")` uses the per-group form
there. Run once per backend:

    for b in jax tensorflow torch; do KERAS_BACKEND=$b .venv/bin/python benchmarks/grouped_conv.py; done

Prints one JSON line per implementation: median ms of `--runs` timed runs after one warm-up, and the
ratio to native in the same run; `--output FILE` also appends them to FILE, atomically (rewritten
beside itself and moved into place: a killed run leaves FILE as it was). Shapes default to the `tiny` preset's decoder at batch 256 x 4 clones.
"""

import argparse
import json
import time

import keras
import numpy as np
from keras import ops

from keras_d2v2.atomic_write import append_atomically
from keras_d2v2.layers.grouped_conv import grouped_conv2d_matmul, grouped_conv2d_per_group


def native(x, kernel, groups):
    return ops.conv(x, kernel, padding="valid")


def native_same(x, kernel, groups):
    return ops.conv(x, kernel, padding="same")


def per_group_same(x, kernel, groups):
    return grouped_conv2d_per_group(x, kernel, groups, padding="same")


def grad_function(fn, groups):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        g = jax.jit(jax.grad(lambda x, k: ops.sum(ops.square(fn(x, k, groups))), argnums=(0, 1)))
        return lambda x, k: jax.block_until_ready(g(x, k))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def g(x, k):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                loss = tf.reduce_sum(tf.square(fn(x, k, groups)))
            return tape.gradient(loss, [x, k])

        return lambda x, k: [t.numpy() for t in g(tf.constant(x), tf.constant(k))]
    import torch

    def g(x, k):
        x, k = torch.tensor(x, requires_grad=True), torch.tensor(k, requires_grad=True)
        torch.sum(torch.square(fn(x, k, groups))).backward()
        return x.grad, k.grad

    return g


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--side", type=int, default=7)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default=None, help="also append the JSON lines to this file, atomically")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    padded = args.side + args.kernel - 1
    x = rng.normal(size=(args.batch, padded, padded, args.channels)).astype("float32")
    before = args.kernel // 2
    unpadded = np.ascontiguousarray(x[:, before : before + args.side, before : before + args.side])
    k = rng.normal(size=(args.kernel, args.kernel, args.channels // args.groups, args.channels)).astype("float32")
    impls = [("native", native, x), ("grouped_matmul", grouped_conv2d_matmul, x), ("per_group", grouped_conv2d_per_group, x)]
    if args.kernel % 2:
        impls += [("native_same", native_same, unpadded), ("per_group_same", per_group_same, unpadded)]
    results = {}
    for name, fn, inputs in impls:
        run = grad_function(fn, args.groups)
        run(inputs, k)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            run(inputs, k)
            times.append(time.perf_counter() - start)
        results[name] = 1000 * float(np.median(times))
    settings = {key: value for key, value in vars(args).items() if key != "output"}
    lines = "".join(
        json.dumps({"backend": keras.backend.backend(), "impl": name, "fwd_bwd_ms": round(ms, 1),
                    "vs_native": round(ms / results["native"], 3), **settings}) + "\n"
        for name, ms in results.items()
    )
    print(lines, end="")
    if args.output:
        append_atomically(args.output, lines)


if __name__ == "__main__":
    main()
