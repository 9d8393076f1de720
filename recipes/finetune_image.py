"""Fine-tune the pre-trained tiny data2vec 2.0 ViT on Fashion-MNIST, against the same ViT from random init.

What:      the reference's image fine-tuning (mae_image_classification): the student encoder of a
           pre-trained model (`Data2Vec2.export_encoder`), mean-pooled patch tokens -> LayerNorm ->
           linear head (`ImageClassifier`), AdamW (0.9, 0.95), weight decay 0.05 off 1-D weights,
           warm-up + cosine, label smoothing 0.1, drop path 0.1, layer-wise learning-rate decay 0.65
           (`LayerDecayAdamW`). The baseline is the same architecture from random init (for a seeded
           preset, the pre-training's own initial weights) trained the same way except without layer
           decay (which only makes sense for pre-trained blocks).
           Mixup, CutMix, RandAugment and random erasing are left out (ImageNet-scale regularizers).
           Reports test-split top-1 of both; with several --learning-rate values, each encoder's
           figure at the rate that does best on held-out training images.
Command:   make finetune   (= KERAS_BACKEND=torch .venv/bin/python recipes/finetune_image.py), after
           `make pretrain` has written runs/pretrain_image.keras (or pass --pretrained PATH).
           The comparison of docs/results.md: 2,000 labels, each encoder at its best rate, 3 seeds:
           recipes/finetune_image.py --train-labels 2000 --batch-size 128 --epochs 30 --warmup-epochs 3 \\
               --learning-rate 1e-3 3e-3 1e-2 --seed 0 1 2
Hardware:  2 CPU cores, no accelerator. Any backend: set KERAS_BACKEND=jax|tensorflow|torch.
Time:      minutes with PyTorch on 2 cores for the default (2 rows of 3 epochs x 235 steps); the
           2,000-label comparison (18 rows of 480 steps) takes several times longer. The measured times
           are in docs/results.md.
Expect:    mean test top-1, pre-trained vs from the same initial weights: the figures in docs/results.md,
           "Fine-tuning that model" (the 2,000-label comparison on the `make pretrain` model) and
           "Earlier: the batch-256 model, one seed" (the full-label default).
Smoke:     --smoke fine-tunes for one small epoch, in seconds (a fresh one-block model unless --pretrained).
Data:      `apt-get install dataset-fashion-mnist` (done by `make setup`); nothing is downloaded.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data import load_fashion_mnist, standardize_images  # noqa: E402
from keras_d2v2.evaluation import fine_tuning_accuracy, pick_learning_rates  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained", help="a Data2Vec2 image model (.keras); default runs/pretrain_image.keras, or with --smoke a "
        "fresh one-block model"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--learning-rate", type=float, nargs="+", default=[1e-3],
        help="peak learning rate; several values: each encoder is fine-tuned at each, and the one with the best "
        "accuracy on --validation-images held-out training images gives its test figure",
    )
    parser.add_argument("--validation-images", type=int, default=5000,
                        help="with several learning rates: the last N training images, never trained on")
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--layer-decay", type=float, default=0.65)
    parser.add_argument("--drop-path", type=float, default=0.1)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--train-labels", type=int, default=None, help="fine-tune on the first N labelled images only")
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0],
        help="seed of the head's init and the batch order (a seeded encoder, as the presets make, draws its drop "
        "path from its own seed); several: every row is run with each, the learning rate is chosen on the mean "
        "validation accuracy and the mean test accuracy over seeds is reported",
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check that everything runs")
    return parser.parse_args()


def fine_tune(make_encoder, learning_rate, layer_decay, train, evaluate_on, seed, args):
    """Fine-tunes a classifier on a fresh `make_encoder()`; returns its top-1 on each of `evaluate_on`."""
    encoder = make_encoder()
    # Seeded after the encoder, whose making may set a seed of its own: the head's init and the
    # batch order are then those of `seed`, the same for every row of that seed.
    keras.utils.set_random_seed(seed)
    classifier = keras_d2v2.ImageClassifier(encoder=encoder, num_classes=10)
    first, _ = fine_tuning_accuracy(
        classifier, train, evaluate_on[0], epochs=args.epochs, batch_size=args.batch_size, learning_rate=learning_rate,
        warmup_epochs=args.warmup_epochs, layer_decay=layer_decay, label_smoothing=args.label_smoothing,
        optimizer_kwargs=dict(beta_1=0.9, beta_2=0.95, weight_decay=0.05), verbose=1 if not args.smoke else 2,
    )
    others = [float((classifier.predict(x, batch_size=512, verbose=0).argmax(-1) == y).mean()) for x, y in evaluate_on[1:]]
    return [first] + others


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed[0])
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    select = len(args.learning_rate) > 1
    if select:
        x_val, y_val = x_train[-args.validation_images :], y_train[-args.validation_images :]
        x_train, y_train = x_train[: -args.validation_images], y_train[: -args.validation_images]
    if args.train_labels:
        x_train, y_train = x_train[: args.train_labels], y_train[: args.train_labels]
    if args.smoke:
        x_train, y_train, x_test, y_test = x_train[:256], y_train[:256], x_test[:256], y_test[:256]
        args.epochs, args.batch_size = 1, 128
        if select:
            x_val, y_val = x_val[:256], y_val[:256]
    if args.smoke and not args.pretrained:
        pretrained = keras_d2v2.Data2Vec2.image(
            preset="tiny", seed=args.seed[0], depth=1, prenet_depth=1, top_k=1, decoder_layers=1
        )
    else:
        path = args.pretrained or "runs/pretrain_image.keras"
        if not os.path.exists(path):
            raise SystemExit(f"--pretrained {path} does not exist; run `make pretrain` first.")
        pretrained = keras.saving.load_model(path)
    x_train, x_test = standardize_images(x_train), standardize_images(x_test)
    evaluate_on = [(x_test, y_test)]
    if select:
        evaluate_on.insert(0, (standardize_images(x_val), y_val))

    def random_encoder():
        # A seeded encoder (the presets seed theirs) starts from the pre-training's own initial
        # weights; an unseeded one from the global seed set here, the same at every learning rate.
        keras.utils.set_random_seed(args.seed[0] + 1)
        config = {**pretrained.encoder.get_config(), "drop_path_rate": args.drop_path, "name": "encoder"}
        encoder = type(pretrained.encoder).from_config(config)
        encoder.build()
        return encoder

    encoders = (
        ("data2vec 2.0 pre-trained", lambda: pretrained.export_encoder(drop_path_rate=args.drop_path), args.layer_decay),
        ("random init", random_encoder, 1.0),
    )
    print(f"backend {keras.backend.backend()}, {pretrained.encoder.count_params():,} encoder parameters, "
          f"{len(x_train)} labelled images, {args.epochs} epochs, learning rates {args.learning_rate}"
          + (f", chosen on {len(evaluate_on[0][1])} validation images" if select else ""))

    rows = []
    for name, make_encoder, decay in encoders:
        for learning_rate in args.learning_rate:
            for seed in args.seed:
                start = time.time()
                accuracies = fine_tune(make_encoder, learning_rate, decay, (x_train, y_train), evaluate_on, seed, args)
                rows.append((name, decay, learning_rate, seed, accuracies, time.time() - start))
    width = max(len(r[0]) for r in rows)
    print(f"\nFine-tuned top-1 on the Fashion-MNIST test split ({len(x_test)} images)")
    print(f"{'encoder':<{width}}  layer decay  peak lr  seed  " + ("validation  " if select else "") + "accuracy  time")
    for name, decay, learning_rate, seed, accuracies, seconds in rows:
        print(f"{name:<{width}}  {decay:11.2f}  {learning_rate:7.0e}  {seed:4d}  "
              + "".join(f"{100 * a:9.2f}%  " for a in accuracies) + f"{seconds:4.0f} s")
    best = pick_learning_rates((name, learning_rate, accuracies) for name, _, learning_rate, _, accuracies, _ in rows)
    over = f", mean of {len(args.seed)} seeds" if len(args.seed) > 1 else ""
    if select:
        print(f"At each encoder's best validation learning rate{over}: "
              + "; ".join(f"{name} {100 * acc[-1]:.2f}% (lr {lr:.0e})" for name, (lr, acc) in best.items()))
    elif over:
        print(f"Mean of {len(args.seed)} seeds: " + "; ".join(f"{name} {100 * acc[-1]:.2f}%" for name, (_, acc) in best.items()))
    return {name: acc[-1] for name, (_, acc) in best.items()}


if __name__ == "__main__":
    main()
