"""Fine-tune the pre-trained tiny speech data2vec 2.0 to tell the language (or voice) of a segment, against random init.

What:      the student encoder of `recipes/pretrain_audio.py`'s model (`Data2Vec2.export_encoder`) with
           an utterance head: encoder outputs averaged over each segment's real frames -> LayerNorm ->
           linear (`AudioClassifier`). The reference fine-tunes speech for recognition (CTC), which
           this package does not implement; its practice kept here: the conv feature extractor stays
           frozen (`feature_grad_mult 0`), Adam (0.9, 0.98), eps 1e-8, no weight decay. Task: the
           pre-training recipe's probe, on 1 s segments of the Asterisk prompts, with prompts held out
           by name: `--label language` (5 classes) or `voice` (6). The baseline is the same
           architecture from random init, trained the same way except that its feature extractor
           is trained too (a frozen random one would be no baseline). Reports test top-1 of both.
Command:   .venv/bin/python recipes/finetune_audio.py   (JAX unless KERAS_BACKEND says otherwise), after
           recipes/pretrain_audio.py has written runs/pretrain_audio.keras (or pass --pretrained).
Hardware:  2 CPU cores, no accelerator. Any backend: set KERAS_BACKEND=jax|tensorflow|torch.
Time:      minutes with JAX on 2 cores (2 x 3 epochs x 240 steps; longer with --train-feature-extractor);
           the measured times are in docs/results.md.
Expect:    test top-1, random init vs pre-trained (frozen extractor, and with --train-feature-extractor):
           the figures in docs/results.md, "Fine-tuning the speech model" (seed 0). This short CPU
           pre-training does not help this task.
Smoke:     --smoke fine-tunes a fresh one-block model on the segments of 60 clips, in seconds.
Data:      `apt-get install asterisk-core-sounds-{en,es,fr,it,ru}-wav asterisk-prompt-it-menardi-wav`
           (done by `make setup`); nothing is downloaded.
"""

import argparse
import os
import time

# JAX compiles the whole step with XLA, the fastest backend for this model on 2 CPU cores
# (recipes/pretrain_audio.py).
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data.audio import ASTERISK_VOICES, asterisk_segments, load_asterisk_prompts  # noqa: E402
from keras_d2v2.evaluation import fine_tuning_accuracy  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained", help="a Data2Vec2 audio model (.keras); default runs/pretrain_audio.keras, or with --smoke a "
        "fresh one-block model"
    )
    parser.add_argument("--label", choices=("language", "voice"), default="language")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--warmup-epochs", type=float, default=0.3)
    parser.add_argument("--seconds", type=float, default=1.0, help="segment length")
    parser.add_argument("--train-feature-extractor", action="store_true",
                        help="fine-tune the pre-trained conv feature extractor too (the reference keeps it frozen)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check that everything runs")
    return parser.parse_args()


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    data = load_asterisk_prompts()
    if args.smoke:
        keep = np.random.default_rng(0).permutation(len(data["audio"]))[:60]
        data = {k: [v[i] for i in keep] for k, v in data.items()}
        args.epochs = 1
    segments = asterisk_segments(data, num_samples=int(args.seconds * 16000))
    num_classes = len(ASTERISK_VOICES) if args.label == "voice" else len(set(data["language"]))
    split = lambda rows: ({"audio": segments["audio"][rows], "padding_mask": segments["padding_mask"][rows]},  # noqa: E731
                          segments[args.label][rows])
    train, test = split(~segments["held_out"]), split(segments["held_out"])

    if args.smoke and not args.pretrained:
        pretrained = keras_d2v2.Data2Vec2.audio(preset="tiny", depth=1, top_k=1, seed=args.seed)
    else:
        path = args.pretrained or "runs/pretrain_audio.keras"
        if not os.path.exists(path):
            raise SystemExit(f"--pretrained {path} does not exist; run recipes/pretrain_audio.py first.")
        pretrained = keras.saving.load_model(path)
    encoder = pretrained.export_encoder()
    # A seeded encoder (the presets seed theirs) starts from the pre-training's own initial weights.
    keras.utils.set_random_seed(args.seed + 1)
    random_encoder = type(encoder).from_config(encoder.get_config())
    random_encoder.build()
    print(f"backend {keras.backend.backend()}, {encoder.count_params():,} encoder parameters, "
          f"{len(train[1])} training and {len(test[1])} test segments of {args.seconds:g} s, "
          f"label {args.label} ({num_classes} classes), {args.epochs} epochs")

    rows = []
    freeze_pretrained = not args.train_feature_extractor
    for name, enc, freeze in (("data2vec 2.0 pre-trained", encoder, freeze_pretrained), ("random init", random_encoder, False)):
        start = time.time()
        keras.utils.set_random_seed(args.seed)  # the same head init and batch order for both rows
        enc.feature_extractor.trainable = not freeze
        classifier = keras_d2v2.AudioClassifier(encoder=enc, num_classes=num_classes)
        accuracy, _ = fine_tuning_accuracy(
            classifier, train, test, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs,
            optimizer_kwargs=dict(beta_1=0.9, beta_2=0.98, epsilon=1e-8, weight_decay=0.0),
            verbose=1 if not args.smoke else 2,
        )
        rows.append((name, "frozen" if freeze else "trained", accuracy, time.time() - start))
    width = max(len(r[0]) for r in rows)
    print(f"\nFine-tuned top-1, {args.label} of segments of held-out prompts ({len(test[1])} segments)")
    print(f"{'encoder':<{width}}  feature extractor  accuracy  time")
    for name, extractor, accuracy, seconds in rows:
        print(f"{name:<{width}}  {extractor:>17}  {100 * accuracy:7.2f}%  {seconds:4.0f} s")
    return {name: accuracy for name, _, accuracy, _ in rows}


if __name__ == "__main__":
    main()
