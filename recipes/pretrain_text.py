"""Pre-train a tiny text data2vec 2.0 on the Python documentation and probe which section a chunk is from.

What:      text data2vec 2.0 (random masking, 2 masks per block, EMA teacher of the blocks, 1-D conv
           decoder), preset `tiny` (dim 128, 4 blocks, 4 heads), on the Python 3.11 docs: a byte-level
           BPE tokenizer (8,192 ids) is trained on the training documents, which are cut into blocks of
           128 tokens (`<s> ... </s>`, a document's last block padded). Then a probe of which top-level
           section a block of an unseen document comes from (library, c-api, whatsnew, howto, reference,
           tutorial; 6 classes, test set balanced, chance 16.7%): k-NN (k=20, cosine) and a linear
           probe (logistic regression), on encoder outputs mean-pooled over the non-pad tokens,
           against the same encoder at random init.
Split:     every 5th document of each section (by sorted path) is held out for the probe's test set;
           the tokenizer and the pre-training see only the other documents.
Command:   KERAS_BACKEND=torch .venv/bin/python recipes/pretrain_text.py
Hardware:  2 CPU cores, no accelerator. Any backend: set KERAS_BACKEND=jax|tensorflow|torch.
Time:      minutes on 2 CPU cores with PyTorch (2 epochs of 582 steps), plus a minute or two of tokenizer,
           encoding and probes; the measured times are in docs/results.md.
Expect:    section probe, random init vs pre-trained, k-NN and linear: the figures in docs/results.md,
           "Tiny text data2vec 2.0 on the Python docs" (seed 0); at this scale pre-training does not
           yet beat random init on this task.
Resume:    after a crash or kill, the same command continues from the last finished epoch, exactly
           (state in runs/pretrain_text_backup, removed when training ends).
Saves:     the model (runs/pretrain_text.keras) and its tokenizer beside it
           (runs/pretrain_text_tokenizer/: vocab.json, merges.txt, tokenizer_config.json).
Smoke:     --smoke uses the start of 30 documents, a 300-id vocabulary and 2 training steps (under a
           minute with PyTorch).
Data:      `apt-get install python3.11-doc` (done by `make setup`); nothing is downloaded.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data import DOC_SECTIONS, held_out_documents, load_python_docs, section_classification  # noqa: E402
from keras_d2v2.evaluation import encoder_features, knn_accuracy, linear_probe_accuracy  # noqa: E402

from common import compile_for_pretraining, initial_encoder_copy, pretrain, save_model  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=0.2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--block-length", type=int, default=128)
    parser.add_argument("--probe-bank", type=int, default=1500, help="k-NN / linear-probe training blocks per class, at most")
    parser.add_argument("--probe-epochs", type=int, default=100, help="epochs of the linear probe's training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-blocks", type=int, default=None, help="pre-train on N blocks drawn at random")
    parser.add_argument("--save", default="runs/pretrain_text.keras", help="where to save the model ('' to skip)")
    parser.add_argument(
        "--backup", default="runs/pretrain_text_backup", help="resume state, kept until training ends ('' to skip)"
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check that everything runs")
    return parser.parse_args()


def probe_table(random_encoder, trained_encoder, train, test, seed, epochs):
    rows = []
    for name, encoder in (("random init", random_encoder), ("data2vec 2.0 pre-trained", trained_encoder)):
        train_features, test_features = encoder_features(encoder, train[0]), encoder_features(encoder, test[0])
        knn = knn_accuracy(train_features, train[1], test_features, test[1])
        linear = linear_probe_accuracy(train_features, train[1], test_features, test[1], seed=seed, epochs=epochs)
        rows.append((name, knn, linear))
    width = max(len(name) for name, *_ in rows)
    print(
        f"\nSection of a block from an unseen document ({len(DOC_SECTIONS)} classes, {len(test[0])} test blocks, "
        f"balanced; {len(train[0])} training blocks)"
    )
    print(f"{'encoder':<{width}}  k-NN (k=20)  linear probe")
    for name, knn, linear in rows:
        print(f"{name:<{width}}  {100 * knn:10.2f}%  {100 * linear:11.2f}%")
    return rows


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    texts, sections, _ = load_python_docs()
    held_out = held_out_documents(sections)
    if args.smoke:
        # The first 5 documents of each probed section (the 5th held out), their first 4,000 characters.
        keep = np.concatenate([np.flatnonzero(np.array(sections) == s)[:5] for s in DOC_SECTIONS])
        texts, sections, held_out = [texts[i][:4000] for i in keep], [sections[i] for i in keep], held_out[keep]
        args.vocab_size, args.epochs, args.probe_bank, args.probe_epochs = 300, 1, 40, 5
    train_texts = [t for t, h in zip(texts, held_out) if not h]

    start = time.time()
    tokenizer = keras_d2v2.ByteLevelBPETokenizer.train(
        train_texts, vocab_size=args.vocab_size, max_length=args.block_length
    )
    blocks, source = tokenizer.encode_chunks(texts, block_length=args.block_length)
    print(f"tokenizer: {tokenizer.vocabulary_size} ids from {len(train_texts)} training documents; "
          f"{len(blocks)} blocks of {args.block_length} tokens from {len(texts)} documents ({time.time() - start:.0f} s)")
    train_blocks = blocks[~held_out[source]]
    if args.smoke or args.train_blocks:
        subset = np.random.default_rng(args.seed).permutation(len(train_blocks))[: 64 if args.smoke else args.train_blocks]
        train_blocks = train_blocks[np.sort(subset)]

    model = keras_d2v2.Data2Vec2.text(
        preset=args.preset, vocab_size=tokenizer.vocabulary_size, max_positions=args.block_length, seed=args.seed
    )
    tokenizer.check_model(model)
    random_encoder = initial_encoder_copy(model)

    data = keras_d2v2.ShuffledBatches(train_blocks, batch_size=args.batch_size, seed=args.seed)
    steps_per_epoch = len(data)  # the last, partial batch included
    # The reference's text optimizer: Adam (0.9, 0.98), eps 1e-6, weight decay 0.01, clip 1.
    compile_for_pretraining(
        model, learning_rate=args.learning_rate, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=args.warmup_epochs, beta_2=0.98, epsilon=1e-6, weight_decay=0.01, global_clipnorm=1.0,
    )
    print(f"backend {keras.backend.backend()}, preset {args.preset!r}, {model.encoder.count_params():,} encoder "
          f"parameters, {len(train_blocks)} blocks, {args.epochs} epochs of {steps_per_epoch} steps")
    _, seconds = pretrain(
        model, data, epochs=args.epochs, backup_dir=args.backup, verbose=1 if sys.stdout.isatty() else 2
    )
    print(f"pre-training took {seconds:.0f} s")
    save_model(model, args.save, tokenizer=tokenizer)

    start = time.time()
    train, test = section_classification(blocks, source, sections, held_out, max_train_per_class=args.probe_bank,
                                         seed=args.seed)
    probe_table(random_encoder, model.encoder, train, test, args.seed, args.probe_epochs)
    print(f"probes took {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
