"""Pre-train data2vec 2.0 on images over every accelerator of a host with JAX: Colab TPU, TPU VM, multi-GPU.

What:      image data2vec 2.0 with `keras.distribution`: `DataParallel` over all devices (each device
           takes batch / devices images; masks are drawn per image, so every replica's differ), or
           with --model-parallel N a `ModelParallel` mesh (devices/N data x N model) whose `LayoutMap`
           shards every transformer block of student and teacher Megatron-style (qkv and fc1
           column-wise, the attention projection and fc2 row-wise) and the conv decoder's channels.
           bfloat16 compute (`mixed_bfloat16`, targets and loss in float32), `steps_per_execution`
           steps per host round trip. Data: Fashion-MNIST with the `tiny` preset (default), or any
           3-channel preset on an image folder (--image-folder DIR, a tf.data pipeline with the
           reference's augmentation: random-resized crop to the preset's size, flip, ImageNet norm).
           Ends with k-NN (k=20) of the student on the Fashion-MNIST test split when that is the data.
Command:   KERAS_BACKEND=jax python recipes/pretrain_image_tpu.py                      (tiny, Fashion-MNIST)
           KERAS_BACKEND=jax python recipes/pretrain_image_tpu.py --preset base --image-folder /data/train \\
               --batch-size 256 --epochs 100 --model-parallel 2
           On Colab: Runtime -> TPU, `pip install keras-d2v2[jax] tensorflow-cpu`, then the command.
Hardware:  any number of JAX devices on one host (TPU v5e-1 on Colab, v5e-8 on Kaggle / TPU VMs, GPUs);
           on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 makes 8 devices to try it.
Time:      not measured on a TPU (none was available to this project); on 2 CPU cores with 8 virtual
           devices, --smoke takes about a minute (mostly XLA compilation).
Expect:    not measured. The distribution changes where the work runs, not what is computed
           (tests/test_distribution.py checks loss and weights against one device), but this recipe
           differs from recipes/pretrain_image.py in batch size (256 at lr 2e-3, which suits many
           devices, against 64 at lr 1e-3), bfloat16 compute and whole batches only. Expect a k-NN
           figure near the single-device recipe's at batch 256 and at batch 64 (docs/results.md,
           "Main job: tiny ViT pre-trained on Fashion-MNIST"), not the same one.
Smoke:     --smoke: 8 steps of batch 16 on 128 images, data parallel over all devices (or the mesh).
Data:      `apt-get install dataset-fashion-mnist` (done by `make setup`), or your own image folder.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data import load_fashion_mnist, standardize_images  # noqa: E402
from keras_d2v2.evaluation import encoder_features, knn_accuracy  # noqa: E402

from common import compile_for_pretraining, image_cls_loss_weight, pretrain, save_model  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-folder", help="pre-train on the images of this folder (any preset)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch, split over the data axis")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--model-parallel", type=int, default=1, help="devices per model replica (1 = data parallel)")
    parser.add_argument("--dtype", default="mixed_bfloat16", help="dtype policy, e.g. mixed_bfloat16 or float32")
    parser.add_argument("--steps-per-execution", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default="runs/pretrain_image_tpu.keras", help="where to save the model ('' to skip)")
    parser.add_argument("--smoke", action="store_true", help="seconds, to check that everything runs")
    return parser.parse_args()


def distribution(model_parallel):
    devices = keras.distribution.list_devices()
    if model_parallel == 1:
        return keras.distribution.DataParallel(devices=devices), len(devices)
    if len(devices) % model_parallel:
        raise SystemExit(f"--model-parallel {model_parallel} must divide the number of devices ({len(devices)}).")
    data_parallel = len(devices) // model_parallel
    mesh = keras.distribution.DeviceMesh((data_parallel, model_parallel), axis_names=("batch", "model"), devices=devices)
    layout_map = keras_d2v2.Data2Vec2.get_layout_map(mesh)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"), data_parallel


def image_folder_batches(args, image_size, channels):
    """The reference's pre-training input: random-resized crops (scale 0.2-1, bicubic), flips and
    ImageNet normalization of the folder's images, in whole batches; and the steps per epoch."""
    import tensorflow as tf

    from keras_d2v2.data import load_image_folder, pretraining_augmentation

    images = load_image_folder(args.image_folder, image_size=None, channels=channels, labels=None, seed=args.seed)
    steps = len(images.file_paths) // args.batch_size
    if steps == 0:
        raise SystemExit(f"--image-folder has {len(images.file_paths)} images, fewer than one batch ({args.batch_size}).")
    augment = pretraining_augmentation(image_size, seed=args.seed)
    batches = images.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE), steps


def main():
    args = parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit("keras.distribution runs on the JAX backend: set KERAS_BACKEND=jax.")
    # The distribution must be set before any Keras object is created.
    dist, data_parallel = distribution(args.model_parallel)
    keras.distribution.set_distribution(dist)
    keras.mixed_precision.set_dtype_policy(args.dtype)
    keras.utils.set_random_seed(args.seed)
    if args.smoke:
        args.epochs, args.batch_size, args.steps_per_execution = 1, 16, 1
    if args.batch_size % data_parallel:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the {data_parallel} data-parallel devices.")

    preset = keras_d2v2.presets.IMAGE_PRESETS[args.preset]["encoder"]
    if not args.image_folder and (preset["image_size"], preset["channels"]) != (28, 1):
        raise SystemExit(f"Preset {args.preset!r} takes {preset['image_size']}px images: pass --image-folder.")
    labelled = None
    if args.image_folder:
        data, steps_per_epoch = image_folder_batches(args, preset["image_size"], preset["channels"])
    else:
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
        if args.smoke:
            x_train, y_train, x_test, y_test = x_train[:128], y_train[:128], x_test[:256], y_test[:256]
        x_train, x_test = standardize_images(x_train), standardize_images(x_test)
        labelled = (x_train, y_train), (x_test, y_test)
        # Whole batches only: every step's batch must split evenly over the data-parallel devices.
        x_train = x_train[: len(x_train) // args.batch_size * args.batch_size]
        data = keras_d2v2.ShuffledBatches(x_train, batch_size=args.batch_size, seed=args.seed)
        steps_per_epoch = len(data)
    cls_loss_weight = image_cls_loss_weight(
        clone_batch=keras_d2v2.presets.IMAGE_PRESETS[args.preset]["masking"]["clone_batch"], batch_size=args.batch_size
    )
    model = keras_d2v2.Data2Vec2.image(preset=args.preset, seed=args.seed, cls_loss_weight=cls_loss_weight)

    # The optimizer of recipes/pretrain_image.py.
    compile_for_pretraining(
        model, learning_rate=args.learning_rate, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=args.warmup_epochs, beta_2=0.95, weight_decay=0.05, global_clipnorm=4.0,
        steps_per_execution=args.steps_per_execution,
    )
    print(f"{len(keras.distribution.list_devices())} devices ({keras.distribution.list_devices()[0]} ...), "
          f"{type(dist).__name__}, data axis {data_parallel}, dtype {args.dtype}; preset {args.preset!r}, "
          f"{args.epochs} epochs of {steps_per_epoch} steps of {args.batch_size} images")
    history, seconds = pretrain(model, data, epochs=args.epochs, verbose=1 if not args.smoke else 2)
    print(f"pre-training took {seconds:.0f} s; final loss {history.history['loss'][-1]:.4f}")
    save_model(model, args.save)
    if labelled is not None:
        (x_bank, y_bank), (x_test, y_test) = labelled
        accuracy = knn_accuracy(encoder_features(model.encoder, x_bank), y_bank,
                                encoder_features(model.encoder, x_test), y_test, k=min(20, len(x_bank)))
        print(f"k-NN (k=20, cosine) top-1 on the Fashion-MNIST test split ({len(x_test)} images): {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()
