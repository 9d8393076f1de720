"""Fine-tune the pre-trained tiny text data2vec 2.0 to tell Python-docs sections apart, against random init.

What:      the reference's text fine-tuning (fairseq RoBERTa's sentence classification, which data2vec 2.0
           uses for GLUE): the student encoder of `recipes/pretrain_text.py`'s model
           (`Data2Vec2.export_encoder`), the `<s>` position -> dense + tanh -> linear head
           (`TextClassifier`), Adam (0.9, 0.98), eps 1e-6, weight decay 0.1 off 1-D weights, warm-up
           + cosine (the reference decays linearly), every weight trained. The task is the pre-training
           recipe's probe: which of 6 top-level sections (library, c-api, whatsnew, howto, reference,
           tutorial) a 128-token block of an unseen document comes from (test set balanced, chance
           16.7%). The baseline is the same architecture from random init, trained the same way.
           Reports test top-1 of both.
Command:   KERAS_BACKEND=torch .venv/bin/python recipes/finetune_text.py, after recipes/pretrain_text.py
           has written runs/pretrain_text.keras and runs/pretrain_text_tokenizer/ (or pass --pretrained).
Hardware:  2 CPU cores, no accelerator. Any backend: set KERAS_BACKEND=jax|tensorflow|torch.
Time:      ~17 min with PyTorch on 2 cores (2 x 5 epochs x 210 steps; measured on a shared CPU).
Expect:    test top-1 61.11% pre-trained vs 50.43% random init (seed 0; docs/results.md,
           "Fine-tuning the text model").
Smoke:     --smoke fine-tunes a fresh one-block model on the start of 30 documents, in seconds.
Data:      `apt-get install python3.11-doc` (done by `make setup`); nothing is downloaded.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data import DOC_SECTIONS, held_out_documents, load_python_docs, section_classification  # noqa: E402
from keras_d2v2.evaluation import fine_tuning_accuracy  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained", help="a Data2Vec2 text model (.keras) with its tokenizer in <name>_tokenizer/; default "
        "runs/pretrain_text.keras, or with --smoke a fresh one-block model"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup-epochs", type=float, default=0.3)
    parser.add_argument("--train-per-class", type=int, default=1500, help="training blocks per section, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check that everything runs")
    return parser.parse_args()


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    texts, sections, _ = load_python_docs()
    held_out = held_out_documents(sections)
    if args.smoke:
        # As the pre-training smoke: the first 5 documents of each section (the 5th held out), cut short.
        keep = np.concatenate([np.flatnonzero(np.array(sections) == s)[:5] for s in DOC_SECTIONS])
        texts, sections, held_out = [texts[i][:4000] for i in keep], [sections[i] for i in keep], held_out[keep]
        args.epochs, args.train_per_class = 1, 40
    if args.smoke and not args.pretrained:
        tokenizer = keras_d2v2.ByteLevelBPETokenizer.train(
            [t for t, h in zip(texts, held_out) if not h], vocab_size=300, max_length=128
        )
        pretrained = keras_d2v2.Data2Vec2.text(
            preset="tiny", vocab_size=tokenizer.vocabulary_size, depth=1, top_k=1, seed=args.seed
        )
    else:
        path = args.pretrained or "runs/pretrain_text.keras"
        if not os.path.exists(path):
            raise SystemExit(f"--pretrained {path} does not exist; run recipes/pretrain_text.py first.")
        pretrained = keras.saving.load_model(path)
        tokenizer = keras_d2v2.ByteLevelBPETokenizer.load(os.path.splitext(path)[0] + "_tokenizer")
    tokenizer.check_model(pretrained)
    blocks, source = tokenizer.encode_chunks(texts, block_length=pretrained.encoder.max_positions)
    train, test = section_classification(
        blocks, source, sections, held_out, max_train_per_class=args.train_per_class, seed=args.seed
    )

    encoder = pretrained.export_encoder()
    # A seeded encoder (the presets seed theirs) starts from the pre-training's own initial weights.
    keras.utils.set_random_seed(args.seed + 1)
    random_encoder = type(encoder).from_config(encoder.get_config())
    random_encoder.build()
    print(f"backend {keras.backend.backend()}, {encoder.count_params():,} encoder parameters, "
          f"{len(train[0])} training blocks, {len(test[0])} test blocks, {args.epochs} epochs")

    rows = []
    for name, enc in (("data2vec 2.0 pre-trained", encoder), ("random init", random_encoder)):
        start = time.time()
        keras.utils.set_random_seed(args.seed)  # the same head init and batch order for both rows
        classifier = keras_d2v2.TextClassifier(encoder=enc, num_classes=len(DOC_SECTIONS))
        accuracy, _ = fine_tuning_accuracy(
            classifier, train, test, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs,
            optimizer_kwargs=dict(beta_1=0.9, beta_2=0.98, epsilon=1e-6, weight_decay=0.1),
            verbose=1 if not args.smoke else 2,
        )
        rows.append((name, accuracy, time.time() - start))
    width = max(len(r[0]) for r in rows)
    print(f"\nFine-tuned top-1: section of a block from an unseen document ({len(DOC_SECTIONS)} classes, "
          f"{len(test[0])} test blocks, balanced)")
    print(f"{'encoder':<{width}}  accuracy  time")
    for name, accuracy, seconds in rows:
        print(f"{name:<{width}}  {100 * accuracy:7.2f}%  {seconds:4.0f} s")
    return {name: accuracy for name, accuracy, _ in rows}


if __name__ == "__main__":
    main()
