"""Time the full data2vec 2.0 `fit()` training step of a named config, with analytic model FLOPs and MFU.

What is timed is `Data2Vec2.fit()` itself: masking, student forward on the visible tokens of every
clone, decoder, EMA teacher update, teacher forward, targets, loss, backward and the AdamW update,
all inside the step, plus whatever `fit()` does between steps (its callbacks included: the
package's `TrainingGuard` reads the loss after every step). The input batch is made once and kept
on the device (a `PyDataset` that returns the same device array every step; `tf.data` repeat on
TensorFlow), so host-to-device copies of fresh data do not enter the step; `--data numpy` feeds an
in-memory NumPy array through Keras' own adapter instead.

A step's time is the interval between two consecutive `on_train_batch_end` callbacks, taken once
the step's logs exist on the host (Keras converts them to Python floats before the callbacks, so
the step has finished on the device). The first `--warmup` steps (the compiling one included)
are left out; `step_ms` is the median of the rest (p10/p90/mean beside it), and compile seconds are the time
from the `fit()` call to the end of the first step, less one step. The package's `TrainingGuard`
reads the loss of every step; it is async-safe, so on JAX and PyTorch Keras does that on its
callback thread and keeps dispatching steps. Batch ends are then stamped on that thread, single
intervals jitter, and `step_ms` is the mean over the timed window (`step_ms_is` says which:
the median where the loop was synchronous). `--guard sync` runs the guard on the main thread after
every step (as before it was async-safe: what that sync costs); `--guard off` drops its per-step
check altogether.

    KERAS_BACKEND is set from --backend; run from the repository root:
    .venv/bin/python -u benchmarks/train_step.py --backend jax --config tiny --steps 10
    python3 benchmarks/train_step.py --backend torch --measure-peak            # bf16 matmul TFLOP/s
    python3 benchmarks/train_step.py --backend jax --config vitb --dtype bfloat16 --batch-size 64 \
        --peak-tflops 777.6 --profile 5

Prints one JSON line per run (`--measure-peak`: one line with `peak_tflops`); `--output FILE` also
appends it to FILE, atomically (the file is rewritten beside itself and moved into place, so a run
killed while writing leaves FILE as it was, never with a cut line). With `--profile N`
it then runs N more steps under the backend's profiler and prints a table of device time by
kernel/op and by category (matmul, attention, convolution, elementwise fusions, ...).

Model FLOPs per step (matmuls only, 2*m*n*k; LayerNorm, softmax, GELU, masking, loss and the
optimizer are not counted): the student encoder on the `num_visible + 1` tokens of each of the
`B * clone_batch` clones, the decoder (convs + projection) on all `T` tokens of each clone, the
patch embedding of the `B` images, all counted x3 (forward + backward), and the teacher (patch
embedding + encoder on `T + 1` tokens of each of the `B` images) counted x1. Attention counts
QK^T and AV (4 * N^2 * D per sequence and block). MFU = those FLOPs / `step_ms` /
`--peak-tflops` (take it from `--measure-peak` on the same device).

Experiments (what a change in the package would give, measured without editing it):
`--decoder-conv` picks the decoder's `conv_impl` or patches in an alternative grouped conv
(`shifted`: one grouped matmul per kernel tap; `torch_channels_last`: `F.conv2d` on the NHWC
tensor's channels-last view), `--cudnn-benchmark` turns on cuDNN's algorithm search (PyTorch),
`--guard sync|off` as above, `--jit-compile true` (torch.compile on PyTorch), `--data numpy`.

A config is a small function in CONFIGS that returns a `Bench`: the built model, the default batch
size, a function making one input batch, and a function giving the model FLOPs of one step.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import threading
import time
from typing import Callable

import numpy as np

DTYPE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


# ------------------------------------------------------------------------------------------- FLOPs
def _numel(variable):
    return int(np.prod(variable.shape))


def transformer_flops(blocks, tokens, dim):
    """Forward matmul FLOPs of `blocks` (`TransformerBlock`s) on one sequence of `tokens` tokens."""
    total = 0
    for block in blocks:
        weights = sum(_numel(layer.kernel) for layer in (block.qkv, block.attention_projection, block.fc1, block.fc2))
        total += 2 * tokens * weights + 4 * tokens * tokens * dim  # dense layers + QK^T and AV
    return total


def conv_decoder_flops(decoder, tokens):
    """Forward matmul FLOPs of a `ConvDecoder2D`/`ConvDecoder1D` on one sequence of `tokens` tokens.

    A stride-1 'same' conv costs 2 * numel(kernel) per output position (the kernel already has
    `in_channels / groups` input channels); the projection 2 * numel(kernel) per token."""
    convs = sum(_numel(kernel) for kernel in decoder.kernels)
    projections = sum(_numel(dense.kernel) for dense in decoder.projections)
    return 2 * tokens * (convs + projections)


def image_step_flops(model, batch):
    """Model FLOPs of one training step of an image `Data2Vec2` at batch size `batch`."""
    encoder = model.encoder
    dim, tokens, extra = encoder.embed_dim, encoder.num_tokens, encoder.num_extra_tokens
    clones = batch * model.masking.clone_batch
    blocks = encoder.prenet_blocks + encoder.blocks
    patch_embed = 2 * tokens * _numel(encoder.patch_embedding.projection.kernel)  # per image
    student = batch * patch_embed + clones * transformer_flops(blocks, model.num_visible + extra, dim)
    decoder = clones * conv_decoder_flops(model.decoder, tokens)
    teacher = batch * (patch_embed + transformer_flops(blocks, tokens + extra, dim))
    return {
        "student_fwd": student,
        "decoder_fwd": decoder,
        "teacher_fwd": teacher,
        "total": 3 * (student + decoder) + teacher,
    }


def audio_step_flops(model, batch, num_samples):
    """Model FLOPs of one training step of an audio `Data2Vec2` on `batch` clips of `num_samples`."""
    encoder = model.encoder
    dim, clones = encoder.embed_dim, batch * model.masking.clone_batch
    frames, cnn, length = encoder.output_length(num_samples), 0, num_samples
    for conv in encoder.feature_extractor.convs:
        length = (length - conv.kernel_size[0]) // conv.strides[0] + 1
        cnn += 2 * length * _numel(conv.kernel)
    local = batch * (cnn + 2 * frames * _numel(encoder.feature_projection.kernel))
    positions = 2 * frames * sum(_numel(kernel) for kernel in encoder.conv_positions.kernels)
    blocks = encoder.prenet_blocks + encoder.blocks
    visible = model.masking.num_visible(frames)
    student = local + clones * (positions + transformer_flops(blocks, visible, dim))
    decoder = clones * conv_decoder_flops(model.decoder, frames)
    teacher = batch * (positions + transformer_flops(blocks, frames, dim))
    return {
        "student_fwd": student,
        "decoder_fwd": decoder,
        "teacher_fwd": teacher,
        "total": 3 * (student + decoder) + teacher,
    }


# ------------------------------------------------------------------- decoder conv experiments
# Alternatives to the package's grouped conv, patched in by --decoder-conv to measure what a change
# in keras_d2v2/layers/conv_decoder.py would give. Each computes the same function as `ops.conv`
# with `kernel` `(k_h, k_w, C / groups, out)` (checked by --check-decoder-conv).
def grouped_conv2d_shifted(x, kernel, groups):
    """Stride-1 'valid' grouped conv as a sum over the k_h * k_w kernel taps of one grouped matmul
    each (no im2col tensor): `out += x[taps] @ W[tap]` per group."""
    from keras import ops

    k_h, k_w, group_in, out = kernel.shape
    height, width = x.shape[1] - k_h + 1, x.shape[2] - k_w + 1
    weights = ops.transpose(ops.reshape(kernel, (k_h, k_w, group_in, groups, out // groups)), (0, 1, 3, 2, 4))
    result = None
    for dy in range(k_h):
        for dx in range(k_w):
            window = ops.reshape(x[:, dy : dy + height, dx : dx + width, :], (-1, height, width, groups, group_in))
            term = ops.einsum("nhwgc,gcd->nhwgd", window, weights[dy, dx])
            result = term if result is None else result + term
    return ops.reshape(result, (-1, height, width, out))


def grouped_conv2d_torch_channels_last(x, kernel, groups):
    """PyTorch only: `F.conv2d` on the NHWC tensor viewed as NCHW (channels-last memory format, no
    copy), the output viewed back; Keras' `ops.conv` makes the input contiguous NCHW and back."""
    import torch

    out = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), kernel.permute(3, 2, 0, 1), groups=groups)
    return out.permute(0, 2, 3, 1)


DECODER_CONVS = {"shifted": grouped_conv2d_shifted, "torch_channels_last": grouped_conv2d_torch_channels_last}


def use_decoder_conv(model, name):
    """Sets the decoder's conv: a `conv_impl` of the package, or one of DECODER_CONVS patched in as
    the package's `grouped_conv2d_matmul` (then selected with conv_impl="grouped_matmul")."""
    from keras_d2v2.layers import grouped_conv

    if name in DECODER_CONVS:
        grouped_conv.grouped_conv2d_matmul = DECODER_CONVS[name]
        name = "grouped_matmul"
    model.decoder.conv_impl = name


def emit(record, output=None):
    """Prints `record` as one JSON line and, with `output`, appends that line to the file `output`
    atomically (`keras_d2v2.atomic_write.append_atomically`)."""
    line = json.dumps(record)
    print(line, flush=True)
    if output:
        from keras_d2v2.atomic_write import append_atomically

        append_atomically(output, line + "\n")


def check_decoder_convs(output=None):
    """Max abs difference of each DECODER_CONVS entry (that runs on this backend) to `ops.conv`."""
    from keras import ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 9, 32), dtype=np.float32)
    kernel = rng.standard_normal((3, 3, 8, 32), dtype=np.float32)
    reference = ops.convert_to_numpy(ops.conv(x, kernel, padding="valid"))
    for name, fn in DECODER_CONVS.items():
        if name.startswith("torch") and backend_name() != "torch":
            continue
        got = ops.convert_to_numpy(fn(ops.convert_to_tensor(x), ops.convert_to_tensor(kernel), 4))
        emit({"check": name, "backend": backend_name(), "max_abs_diff": float(np.max(np.abs(got - reference)))}, output)


# ----------------------------------------------------------------------------------------- configs
@dataclasses.dataclass
class Bench:
    model: object
    batch_size: int  # default; --batch-size overrides
    make_batch: Callable  # (batch_size, numpy Generator) -> inputs for fit(), NumPy
    flops: Callable  # (model, batch_size) -> dict with "total" (and parts)


def _image_bench(model, batch_size):
    encoder = model.encoder

    def make_batch(batch, rng):
        shape = (batch, encoder.image_size, encoder.image_size, encoder.channels)
        return rng.standard_normal(shape, dtype=np.float32)

    return Bench(model=model, batch_size=batch_size, make_batch=make_batch, flops=image_step_flops)


def tiny(args):
    """The test fixture's model (32x32 images, 2+1 blocks of 32-d): a smoke test of the script."""
    import keras_d2v2

    return _image_bench(keras_d2v2.Data2Vec2.image(preset="tiny_test", seed=0), batch_size=8)


def image_cpu(args):
    """Issue 6's CPU bar config: ViT 384-d, 6 + 2 prenet blocks, 6 heads, 224x224 / 16, batch 8,
    4 clones, mask 0.8, decoder 384-d x 6 layers, kernel 3, 16 groups."""
    import keras_d2v2

    model = keras_d2v2.Data2Vec2.image(
        preset="base", embed_dim=384, depth=6, prenet_depth=2, num_heads=6, top_k=6, image_size=224,
        patch_size=16, clone_batch=4, mask_prob=0.8, decoder_dim=384, decoder_layers=6, decoder_kernel=3,
        decoder_groups=16, seed=0,
    )
    return _image_bench(model, batch_size=8)


def vitb(args):
    """The `base` image preset: ViT-B/16 at 224 (10 + 2 prenet blocks), 16 clones, decoder 768-d x 6,
    the reference's published config."""
    import keras_d2v2

    return _image_bench(keras_d2v2.Data2Vec2.image(preset="base", seed=0), batch_size=64)


def audio_cpu(args):
    """Issue 6's CPU bar config: audio 256-d, 4 blocks, 4 heads, conv extractor with 256 channels
    (the reference's 7 layers), batch 4 x 2 s at 16 kHz, 4 clones, mask 0.5 in spans of 5,
    decoder 128-d x 4 layers, kernel 7."""
    import keras_d2v2
    from keras_d2v2.layers.conv_feature_extractor import BASE_FEATURE_LAYERS

    num_samples = 32000
    model = keras_d2v2.Data2Vec2.audio(
        preset="base", feature_layers=[(256, k, s) for _, k, s in BASE_FEATURE_LAYERS], embed_dim=256, depth=4,
        num_heads=4, top_k=4, clone_batch=4, mask_prob=0.5, block_length=5, decoder_dim=128, decoder_layers=4,
        decoder_kernel=7, seed=0,
    )

    def make_batch(batch, rng):
        return rng.standard_normal((batch, num_samples), dtype=np.float32)

    return Bench(
        model=model,
        batch_size=4,
        make_batch=make_batch,
        flops=lambda model, batch: audio_step_flops(model, batch, num_samples),
    )


CONFIGS = {"tiny": tiny, "image_cpu": image_cpu, "vitb": vitb, "audio_cpu": audio_cpu}


# ---------------------------------------------------------------------------------- backend helpers
def backend_name():
    import keras

    return keras.backend.backend()


def on_gpu():
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def device_string():
    backend = backend_name()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{device.device_kind}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    elif on_gpu():
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return f"gpu:{details.get('device_name', 'GPU')}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()}"


def backend_version():
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.__version__
    if backend == "torch":
        import torch

        return torch.__version__
    import tensorflow as tf

    return tf.__version__


def reset_peak_memory():
    if backend_name() == "torch" and on_gpu():
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes():
    """Peak device memory in use (GPU), or the process's peak RSS (CPU)."""
    backend = backend_name()
    if on_gpu():
        if backend == "jax":
            import jax

            return int(jax.devices()[0].memory_stats()["peak_bytes_in_use"])
        if backend == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated())
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def variable_bytes(variables):
    """Bytes held by `variables` (weights, EMA teacher, optimizer slots, counters)."""
    import keras

    def itemsize(variable):
        dtype = keras.backend.standardize_dtype(variable.dtype)
        return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize

    return sum(_numel(v) * itemsize(v) for v in variables)


def to_device(array):
    """`array` as the backend's own tensor on the default device (GPU if there is one)."""
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.device_put(array)
    if backend == "torch":
        import torch

        return torch.as_tensor(array, device="cuda" if torch.cuda.is_available() else "cpu")
    import tensorflow as tf

    return tf.constant(array)


def make_dataset(batch, num_steps, mode):
    """Returns `(x, fit_kwargs)` giving `num_steps` batches, all equal to `batch`."""
    import keras

    if mode == "numpy":
        return np.concatenate([batch] * num_steps), {"batch_size": len(batch), "shuffle": False}
    if backend_name() == "tensorflow":
        import tensorflow as tf

        return tf.data.Dataset.from_tensors(batch).repeat(), {"steps_per_epoch": num_steps}
    on_device = to_device(batch)

    class SameBatch(keras.utils.PyDataset):
        def __len__(self):
            return num_steps

        def __getitem__(self, index):
            return (on_device,)

    return SameBatch(), {}


# --------------------------------------------------------------------------------------- callbacks
def _timer_callback():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Host time at which each step's logs were available (so the step had finished)."""

        # With the other callbacks async-safe too, Keras then dispatches batch ends to a thread and
        # keeps the step loop asynchronous; each end still waits for its own logs.
        async_safe = True

        def __init__(self):
            super().__init__()
            self.ends = []
            self.last_logs = {}
            self.on_main_thread = True

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append((batch, time.perf_counter()))
            self.last_logs = dict(logs or {})
            self.on_main_thread &= threading.current_thread() is threading.main_thread()

    return StepTimer()


def _guard(mode):
    """The guard `--guard` passes to `fit()`, which otherwise adds the package's own ("on")."""
    import keras

    from keras_d2v2.callbacks import TrainingGuard

    class EpochEndGuard(TrainingGuard):
        on_train_batch_end = keras.callbacks.Callback.on_train_batch_end

    class SynchronousGuard(TrainingGuard):
        async_safe = False

    return {"on": [], "off": [EpochEndGuard()], "sync": [SynchronousGuard()]}[mode]


# ------------------------------------------------------------------------------------------ runs
def measure_peak(args):
    """Mean TFLOP/s of `--peak-size`^3 bf16 matmuls (10 timed after 3 warm-ups) in the backend."""
    n, runs = args.peak_size, 10
    backend = backend_name()
    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        a, b = (jnp.asarray(m, dtype=jnp.bfloat16) for m in (a_np, b_np))
        matmul = jax.jit(jnp.matmul)

        def run(count):
            out = None
            for _ in range(count):
                out = matmul(a, b)
            out.block_until_ready()

    elif backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        a, b = (torch.as_tensor(m, device=device).to(torch.bfloat16) for m in (a_np, b_np))

        def run(count):
            for _ in range(count):
                torch.matmul(a, b)
            if device == "cuda":
                torch.cuda.synchronize()

    else:
        import tensorflow as tf

        a, b = (tf.cast(tf.constant(m), tf.bfloat16) for m in (a_np, b_np))

        def run(count):
            out = None
            for _ in range(count):
                out = tf.matmul(a, b)
            out.numpy()

    run(3)
    start = time.perf_counter()
    run(runs)
    seconds = (time.perf_counter() - start) / runs
    return {
        "mode": "measure_peak", "backend": backend, "backend_version": backend_version(), "device": device_string(),
        "matmul": f"{n}x{n}x{n} bf16", "runs": runs, "ms": round(1000 * seconds, 3),
        "peak_tflops": round(2 * n**3 / seconds / 1e12, 1),
    }


def _seed_everything(seed):
    """What `keras.utils.set_random_seed` does, without importing TensorFlow on the other backends
    (it would add ~1 GB to the host RSS reported on CPU)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    if backend_name() == "torch":
        import torch

        torch.manual_seed(seed)
    elif backend_name() == "tensorflow":
        import tensorflow as tf

        tf.random.set_seed(seed)


def _sig(value, digits=4):
    return float(f"{value:.{digits}g}")


def run_bench(args):
    import keras

    keras.config.set_dtype_policy(DTYPE_POLICIES[args.dtype])
    if args.cudnn_benchmark:
        import torch

        torch.backends.cudnn.benchmark = True  # cuDNN times its algorithms per shape and keeps the fastest
    _seed_everything(0)
    build_start = time.perf_counter()
    bench = CONFIGS[args.config](args)
    model = bench.model
    if args.decoder_conv is not None:
        use_decoder_conv(model, args.decoder_conv)
    build_s = time.perf_counter() - build_start
    batch_size = args.batch_size or bench.batch_size
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3, beta_2=0.95, weight_decay=0.05, global_clipnorm=4.0),
        jit_compile=jit,
    )
    batch = bench.make_batch(batch_size, np.random.default_rng(0))
    num_steps = args.warmup + args.steps
    x, fit_kwargs = make_dataset(batch, num_steps, args.data)
    timer = _timer_callback()
    callbacks = [timer] + _guard(args.guard)
    reset_peak_memory()
    fit_start = time.perf_counter()
    model.fit(x, epochs=1, verbose=0, callbacks=callbacks, **fit_kwargs)
    ends = [t for _, t in sorted(timer.ends)]
    if len(ends) != num_steps:
        raise RuntimeError(f"Expected {num_steps} steps, timed {len(ends)}.")
    steps_ms = 1000 * np.diff(ends)[args.warmup - 1 :]  # durations of steps warmup .. warmup + steps - 1
    # Batch ends stamped on Keras' callback thread jitter one by one while the window's mean stays
    # exact; report that.
    statistic = "median" if timer.on_main_thread else "mean"
    step_ms = float(np.mean(steps_ms) if statistic == "mean" else np.median(steps_ms))
    first_step_s = ends[0] - fit_start
    flops = bench.flops(model, batch_size)
    tflops = flops["total"] / 1e12
    achieved = tflops / (step_ms / 1000)
    loss = timer.last_logs.get("loss")
    peak_bytes, state_bytes = peak_memory_bytes(), variable_bytes(model.variables + model.optimizer.variables)
    result = {
        "backend": backend_name(),
        "config": args.config,
        "dtype": args.dtype,
        "batch": batch_size,
        "samples_per_s": round(batch_size / (step_ms / 1000), 2),
        "step_ms": round(step_ms, 2),
        "step_ms_is": statistic,
        "step_ms_p10": round(float(np.percentile(steps_ms, 10)), 2),
        "step_ms_p90": round(float(np.percentile(steps_ms, 90)), 2),
        "step_ms_mean": round(float(np.mean(steps_ms)), 2),
        "timed_steps": len(steps_ms),
        "warmup_steps": args.warmup,
        "compile_s": round(first_step_s - step_ms / 1000, 2),
        "build_s": round(build_s, 2),
        "peak_mem_gib": round(peak_bytes / 2**30, 3),
        "peak_mem_kind": "device" if on_gpu() else "host_rss",
        "state_mem_gib": round(state_bytes / 2**30, 3),
        "peak_mem_mib_per_sample": round((peak_bytes - state_bytes) / batch_size / 2**20, 1),
        "device": device_string(),
        "model_tflops_per_step": _sig(tflops),
        "achieved_tflops": _sig(achieved),
        "peak_tflops": args.peak_tflops,
        "mfu": None if not args.peak_tflops else _sig(achieved / args.peak_tflops),
        "tflops_split": {k: _sig(v / 1e12) for k, v in flops.items() if k != "total"},
        "params_m": round(sum(_numel(v) for v in model.trainable_variables) / 1e6, 2),
        "loss": None if loss is None else round(float(loss), 5),
        "jit_compile": getattr(model, "jit_compile", None),
        "data": args.data,
        "guard": args.guard,
        "decoder_conv": args.decoder_conv or model.decoder.conv_impl,
        "cudnn_benchmark": args.cudnn_benchmark,
        "keras": keras.__version__,
        "backend_version": backend_version(),
        "python": platform.python_version(),
    }
    emit(result, args.output)
    if args.profile:
        profile(model, batch, args)
    return result


# ------------------------------------------------------------------------------------------ profile
CATEGORIES = (  # (category, substrings of a lower-cased kernel/op name), first match wins
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("convolution (cuDNN)", ("convolution", "conv2d", "conv_", "wgrad", "dgrad", "fprop", "implicit_gemm", "winograd", "nhwcslice",
                             "tensortransform", "nchwtonhwc", "nhwctonchw")),
    ("matmul", ("gemm", "nvjet", "cutlass", "matmul", "dot", "cublas", "aten::mm", "aten::bmm")),
    ("memcpy/memset", ("memcpy", "memset")),
    ("copy/cast/transpose", ("copy", "transpose", "convert", "contiguous")),
    ("sort/topk/gather/scatter", ("sort", "topk", "top_k", "gather", "scatter", "index", "take")),
    ("reduction/norm", ("reduce", "reduction", "norm", "sum", "mean")),
)


def categorize(name):
    lower = name.lower()
    for category, keys in CATEGORIES:
        if any(key in lower for key in keys):
            return category
    if "fusion" in lower or "elementwise" in lower or "loop" in lower:
        return "elementwise/fusion"
    return "other"


def busy_time(intervals):
    """Length of the union of `(start, end)` intervals (kernels on several streams may overlap)."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    return total + (0.0 if current_end is None else current_end - current_start)


def print_kernel_table(durations_us, counts, busy_us, wall_s, steps, title):
    total = sum(durations_us.values())
    print(f"\n== {title}: {steps} steps; under the profiler wall {1000 * wall_s / steps:.1f} ms/step; device busy "
          f"(union of kernel intervals) {busy_us / 1000 / steps:.1f} ms/step; kernel time summed "
          f"{total / 1000 / steps:.1f} ms/step")
    by_category = {}
    for name, us in durations_us.items():
        by_category[categorize(name)] = by_category.get(categorize(name), 0.0) + us
    print(f"{'category':<28}{'ms/step':>10}{'%':>7}")
    for category, us in sorted(by_category.items(), key=lambda kv: -kv[1]):
        print(f"{category:<28}{us / 1000 / steps:>10.2f}{100 * us / total:>7.1f}")
    print(f"\n{'ms/step':>9}{'%':>6}{'calls/step':>11}  name (top 40 by summed kernel time)")
    for name, us in sorted(durations_us.items(), key=lambda kv: -kv[1])[:40]:
        print(f"{us / 1000 / steps:>9.3f}{100 * us / total:>6.1f}{counts[name] / steps:>11.1f}  {name[:150]}")
    sys.stdout.flush()


def profile(model, batch, args):
    """Runs `args.profile` more fit() steps under the backend's profiler and prints where time goes."""
    import tempfile

    backend = backend_name()
    steps = args.profile
    x, fit_kwargs = make_dataset(batch, steps, args.data)
    callbacks = _guard(args.guard)
    if backend == "jax":
        import glob
        import gzip

        import jax

        log_dir = tempfile.mkdtemp(prefix="jax_trace_")
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # Python frames make the traced steps several times slower
        start = time.perf_counter()
        with jax.profiler.trace(log_dir, create_perfetto_trace=True, profiler_options=options):
            model.fit(x, epochs=1, verbose=0, callbacks=callbacks, **fit_kwargs)
        wall = time.perf_counter() - start
        path = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
        with gzip.open(path, "rt") as f:
            trace = json.load(f)
        events = trace["traceEvents"] if isinstance(trace, dict) else trace
        pids = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
        tids = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
        device_pids = {pid for pid, name in pids.items() if "/device:" in name and "CPU" not in name.upper().split("/DEVICE:")[-1][:3]}
        if not device_pids:  # CPU run: XLA's thunk/op events on the host threads
            device_pids = {pid for pid, name in pids.items() if "host" in name.lower() or "cpu" in name.lower()}
        durations, counts, intervals = {}, {}, []
        for e in events:
            if e.get("ph") != "X" or e.get("pid") not in device_pids or str(e.get("name", "")).startswith("$"):
                continue  # "$..." are Python frames of the host tracer
            thread = tids.get((e["pid"], e.get("tid")), "")
            if on_gpu() and "stream" not in thread.lower():
                continue  # GPU: kernels live on the stream lines (others are XLA op / module summaries)
            durations[e["name"]] = durations.get(e["name"], 0.0) + float(e.get("dur", 0.0))
            counts[e["name"]] = counts.get(e["name"], 0) + 1
            intervals.append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))))
        print("trace threads:", sorted({f"{pids.get(p, p)} | {t}" for (p, _), t in tids.items() if p in device_pids})[:30])
        print(f"\njax trace: {path}; processes {sorted(set(pids.values()))}")
        print_kernel_table(durations, counts, busy_time(intervals), wall, steps, f"jax profile ({args.config}, {args.dtype}, batch {len(batch)})")
    elif backend == "torch":
        import torch
        from torch.profiler import ProfilerActivity

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu() else [])
        start = time.perf_counter()
        with torch.profiler.profile(activities=activities) as prof:
            model.fit(x, epochs=1, verbose=0, callbacks=callbacks, **fit_kwargs)
            if on_gpu():
                torch.cuda.synchronize()
        wall = time.perf_counter() - start
        sort_key = "self_device_time_total" if on_gpu() else "self_cpu_time_total"
        print(f"\n== torch profile ({args.config}, {args.dtype}): {steps} steps, wall {1000 * wall / steps:.1f} ms/step")
        print(prof.key_averages().table(sort_by=sort_key, row_limit=40, max_name_column_width=70))
        if on_gpu():
            durations, counts, intervals = {}, {}, []
            for event in prof.events():
                if event.device_type == torch.autograd.DeviceType.CUDA:
                    us = getattr(event, "device_time", None)
                    us = event.cuda_time if us is None else us
                    durations[event.name] = durations.get(event.name, 0.0) + us
                    counts[event.name] = counts.get(event.name, 0) + 1
                    intervals.append((event.time_range.start, event.time_range.end))
            print_kernel_table(durations, counts, busy_time(intervals), wall, steps, f"torch CUDA kernels ({args.config}, {args.dtype})")
    else:
        print("--profile is implemented for jax and torch only.")


# -------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("jax", "torch", "tensorflow"), default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps, the first (compiling) one included")
    parser.add_argument("--dtype", choices=sorted(DTYPE_POLICIES), default="float32",
                        help="float32, or the mixed_bfloat16 / mixed_float16 Keras policy")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU; see --measure-peak")
    parser.add_argument("--measure-peak", action="store_true", help="only time a bf16 matmul and print its TFLOP/s")
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                        help="Model.compile(jit_compile=...): XLA on jax/tensorflow, torch.compile on torch")
    parser.add_argument("--data", choices=("device", "numpy"), default="device",
                        help="device: one batch kept on the device; numpy: an in-memory array through Keras' adapter")
    parser.add_argument("--guard", choices=("on", "sync", "off"), default="on",
                        help="on: the package's async-safe TrainingGuard; sync: the same check on the main thread "
                             "after every step; off: no per-step check")
    parser.add_argument("--decoder-conv", choices=("auto", "native", "grouped_matmul", "per_group") + tuple(DECODER_CONVS),
                        default=None, help="experiment: the decoder's conv_impl, or an alternative patched in")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch: torch.backends.cudnn.benchmark = True (experiment; Keras leaves it off)")
    parser.add_argument("--check-decoder-conv", action="store_true", help="only compare the alternatives to ops.conv")
    parser.add_argument("--allow-tf-import", action="store_true",
                        help="jax/torch: let Keras import TensorFlow if installed (blocked by default)")
    parser.add_argument("--profile", type=int, default=0, help="after timing, profile this many more steps")
    parser.add_argument("--output", default=None,
                        help="also append the JSON line(s) to this file, atomically (never a cut line)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.backend == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    elif not args.allow_tf_import:
        # Keras' serializer imports TensorFlow whenever it is installed (as in this repo's .venv),
        # which adds ~0.5-1 GB to the host RSS reported on CPU; a JAX/PyTorch user without TF
        # never pays that. Block it (Keras treats TF as unavailable).
        sys.modules.setdefault("tensorflow", None)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.measure_peak:
        emit(measure_peak(args), args.output)
        return
    if args.check_decoder_conv:
        check_decoder_convs(args.output)
        return
    if args.cudnn_benchmark and args.backend != "torch":
        raise SystemExit("--cudnn-benchmark is a PyTorch setting")
    if args.warmup < 1:
        raise SystemExit("--warmup must be >= 1 (the first step compiles)")
    run_bench(args)


if __name__ == "__main__":
    main()
