"""Pre-train a tiny data2vec 2.0 ViT on Fashion-MNIST and measure what it learned with k-NN.

What:      image data2vec 2.0 (inverse block masking, 4 masks per image, EMA teacher, conv decoder)
           on the 60,000 Fashion-MNIST training images, labels unused; then k-NN (k=20, cosine) on
           mean-pooled encoder features, test split, against the same encoder at random init.
Command:   make pretrain            (= KERAS_BACKEND=torch .venv/bin/python recipes/pretrain_image.py)
Hardware:  2 CPU cores, no accelerator. Any backend: set KERAS_BACKEND=jax|tensorflow|torch.
Time:      minutes on 2 CPU cores with PyTorch (4 epochs of 938 steps); JAX and TensorFlow run the same
           script somewhat slower on a CPU. The measured times are in docs/results.md.
Expect:    k-NN top-1 well above the same encoder at its own initial weights: the figures in
           docs/results.md, "Main job: tiny ViT pre-trained on Fashion-MNIST" (seed 0).
Resume:    after a crash or kill, the same command continues from the last finished epoch, exactly
           (state in runs/pretrain_image_backup, removed when training ends).
Smoke:     --smoke runs 2 small steps on 256 images and a 512-image k-NN, in seconds.
Data:      `apt-get install dataset-fashion-mnist` (done by `make setup`); nothing is downloaded.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data import load_fashion_mnist, standardize_images  # noqa: E402
from keras_d2v2.evaluation import encoder_features, knn_accuracy  # noqa: E402

from common import (  # noqa: E402
    compile_for_pretraining,
    image_cls_loss_weight,
    initial_encoder_copy,
    pretrain,
    save_model,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=None, help="pre-train on the first N images only")
    parser.add_argument("--save", default="runs/pretrain_image.keras", help="where to save the model ('' to skip)")
    parser.add_argument(
        "--backup", default="runs/pretrain_image_backup", help="resume state, kept until training ends ('' to skip)"
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check that everything runs")
    return parser.parse_args()


def knn_table(random_encoder, trained_encoder, train, test):
    rows = []
    for name, encoder in (("random init", random_encoder), ("data2vec 2.0 pre-trained", trained_encoder)):
        accuracy = knn_accuracy(encoder_features(encoder, train[0]), train[1], encoder_features(encoder, test[0]), test[1])
        rows.append((name, accuracy))
    width = max(len(name) for name, _ in rows)
    print(f"\nk-NN (k=20, cosine) top-1 on the Fashion-MNIST test split ({len(test[0])} images)")
    print(f"{'encoder':<{width}}  accuracy")
    for name, accuracy in rows:
        print(f"{name:<{width}}  {100 * accuracy:6.2f}%")
    return dict(rows)


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    if args.train_images:
        x_train, y_train = x_train[: args.train_images], y_train[: args.train_images]
    if args.smoke:
        x_train, y_train, x_test, y_test = x_train[:256], y_train[:256], x_test[:512], y_test[:512]
        args.epochs, args.batch_size = 1, 128
    x_train, x_test = standardize_images(x_train), standardize_images(x_test)

    clone_batch = keras_d2v2.presets.IMAGE_PRESETS[args.preset]["masking"]["clone_batch"]
    cls_loss_weight = image_cls_loss_weight(clone_batch=clone_batch, batch_size=args.batch_size)
    model = keras_d2v2.Data2Vec2.image(preset=args.preset, seed=args.seed, cls_loss_weight=cls_loss_weight)
    random_encoder = initial_encoder_copy(model)

    data = keras_d2v2.ShuffledBatches(x_train, batch_size=args.batch_size, seed=args.seed)
    steps_per_epoch = len(data)  # the last, partial batch included
    # The reference's image optimizer: AdamW (0.9, 0.95), weight decay 0.05, clip 4.
    compile_for_pretraining(
        model, learning_rate=args.learning_rate, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=args.warmup_epochs, beta_2=0.95, weight_decay=0.05, global_clipnorm=4.0,
    )
    print(f"backend {keras.backend.backend()}, preset {args.preset!r}, {model.encoder.count_params():,} encoder "
          f"parameters, {len(x_train)} images, {args.epochs} epochs of {steps_per_epoch} steps")
    _, seconds = pretrain(model, data, epochs=args.epochs, backup_dir=args.backup, verbose=1 if not args.smoke else 2)
    print(f"pre-training took {seconds:.0f} s")
    save_model(model, args.save)
    knn_table(random_encoder, model.encoder, (x_train, y_train), (x_test, y_test))


if __name__ == "__main__":
    main()
