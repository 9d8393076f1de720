"""Pre-train a tiny data2vec 2.0 speech model on the Asterisk voice prompts and probe it with k-NN.

What:      audio data2vec 2.0 (wav2vec 2.0 conv features, 1-D block masking of 50% of the 20 ms frames
           in spans of 5, 4 masks per clip, conv positions + ALiBi, EMA teacher, 1-D conv decoder)
           on 1 s segments of the Asterisk prompts: 3,386 real recordings (about 156 min) of 6 voices
           (5 speakers) in 5 languages, resampled from 8 to 16 kHz; the last piece of a clip is
           padded and masked out (`padding_mask`). Labels unused in pre-training. Then k-NN (k=20,
           cosine) on mean-pooled encoder outputs, for voice (6 classes) and language (5 classes),
           on segments of prompts held out by name (a prompt's recordings are all train or all
           test), against the same encoder at random init.
Command:   .venv/bin/python recipes/pretrain_audio.py          (JAX unless KERAS_BACKEND says otherwise)
Hardware:  2 CPU cores, no accelerator. Any backend: set KERAS_BACKEND=jax|tensorflow|torch.
Time:      minutes on 2 CPU cores with JAX; the measured run is in docs/results.md.
Expect:    k-NN of voice and language, random init vs pre-trained: the figures in docs/results.md,
           "Audio: tiny data2vec 2.0 on the Asterisk prompts" (seed 0).
Resume:    a killed run continues from its last finished epoch with the same command
           (state in runs/pretrain_audio_backup, removed when training ends).
Smoke:     --smoke runs one epoch on the segments of 60 clips, in seconds.
Data:      `apt-get install asterisk-core-sounds-{en,es,fr,it,ru}-wav asterisk-prompt-it-menardi-wav`
           (done by `make setup`); nothing is downloaded.
"""

import argparse
import os

# JAX compiles the whole step with XLA: on a 2-core CPU it runs a fit() step of this model several
# times faster than PyTorch.
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data.audio import ASTERISK_VOICES, asterisk_segments, load_asterisk_prompts  # noqa: E402
from keras_d2v2.evaluation import encoder_features, knn_accuracy  # noqa: E402

from common import compile_for_pretraining, initial_encoder_copy, pretrain, save_model  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=1.0, help="segment length")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default="runs/pretrain_audio.keras", help="where to save the model ('' to skip)")
    parser.add_argument(
        "--backup", default="runs/pretrain_audio_backup", help="resume state, kept until training ends ('' to skip)"
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check that everything runs")
    return parser.parse_args()


def features(encoder, audio, padding_mask):
    """Mean of the encoder's outputs over each segment's real frames, L2-normalized, (N, D)."""
    return encoder_features(encoder, {"audio": audio, "padding_mask": padding_mask}, batch_size=128)


def knn_table(encoders, train, test, labels):
    print(f"\nk-NN (k=20, cosine) top-1 on {len(test[0])} segments of held-out prompts")
    print(f"{'encoder':<26}" + "".join(f"{name:>12}" for name in labels))
    results = {}
    for name, encoder in encoders:
        train_features, test_features = features(encoder, *train[:2]), features(encoder, *test[:2])
        results[name] = {
            label: knn_accuracy(train_features, train[2][label], test_features, test[2][label]) for label in labels
        }
        print(f"{name:<26}" + "".join(f"{100 * results[name][label]:11.2f}%" for label in labels))
    return results


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    data = load_asterisk_prompts()
    if args.smoke:
        keep = np.random.default_rng(0).permutation(len(data["audio"]))[:60]
        data = {k: [v[i] for i in keep] for k, v in data.items()}
        args.epochs, args.batch_size = 1, 32
    segments = asterisk_segments(data, num_samples=int(args.seconds * 16000))
    audio, padding_mask, test = segments["audio"], segments["padding_mask"], segments["held_out"]
    split = lambda rows: (audio[rows], padding_mask[rows], {k: segments[k][rows] for k in ("voice", "language")})  # noqa: E731
    train_set, test_set = split(~test), split(test)

    model = keras_d2v2.Data2Vec2.audio(preset=args.preset, seed=args.seed)
    random_encoder = initial_encoder_copy(model)

    # Pre-training sees every segment, test prompts included (labels are never used); the probe
    # then fits on the training prompts only.
    batches = keras_d2v2.ShuffledBatches(
        {"audio": audio, "padding_mask": padding_mask}, batch_size=args.batch_size, seed=args.seed
    )
    # The reference's base audio optimizer: Adam, betas (0.9, 0.98), eps 1e-6, decoupled weight
    # decay 0.01 on every weight, no clipping.
    compile_for_pretraining(
        model, learning_rate=args.learning_rate, epochs=args.epochs, steps_per_epoch=len(batches),
        warmup_epochs=args.warmup_epochs, beta_2=0.98, epsilon=1e-6, weight_decay=0.01,
    )
    print(f"backend {keras.backend.backend()}, preset {args.preset!r}, {model.encoder.count_params():,} encoder "
          f"parameters, {len(audio)} segments of {args.seconds:g} s ({int(padding_mask.any(1).sum())} padded) from "
          f"{len(data['audio'])} clips of {len(ASTERISK_VOICES)} voices, {args.epochs} epochs of {len(batches)} steps")
    verbose = 1 if not args.smoke else 2
    _, seconds = pretrain(model, batches, epochs=args.epochs, backup_dir=args.backup, verbose=verbose)
    print(f"pre-training took {seconds:.0f} s")
    save_model(model, args.save)
    knn_table(
        [("random init", random_encoder), ("data2vec 2.0 pre-trained", model.encoder)],
        train_set,
        test_set,
        ("voice", "language"),
    )


if __name__ == "__main__":
    main()
