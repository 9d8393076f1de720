"""Fine-tune the pre-trained tiny text data2vec 2.0 to tell Python-docs sections apart, against random init.

What:      the reference's text fine-tuning (fairseq RoBERTa's sentence classification, which data2vec 2.0
           uses for GLUE): the student encoder of `recipes/pretrain_text.py`'s model
           (`Data2Vec2.export_encoder`), the `<s>` position -> dense + tanh -> linear head
           (`TextClassifier`), Adam (0.9, 0.98), eps 1e-6, weight decay 0.1 off 1-D weights, warm-up
           + cosine (the reference decays linearly), every weight trained. The task is the pre-training
           recipe's probe: which of 6 top-level sections (library, c-api, whatsnew, howto, reference,
           tutorial) a 128-token block of an unseen document comes from (test set balanced, chance
           16.7%). The baseline is the same architecture from random init, trained the same way.
           Reports test top-1 of both; with several --learning-rate values, each encoder's figure at
           the rate that does best on blocks of held-out training documents.
Command:   KERAS_BACKEND=torch .venv/bin/python recipes/finetune_text.py (make finetune-text), after
           recipes/pretrain_text.py has written runs/pretrain_text.keras and runs/pretrain_text_tokenizer/
           (or pass --pretrained). The comparison of docs/results.md, each encoder at its best rate:
           recipes/finetune_text.py --learning-rate 1e-4 3e-4 1e-3 --seed 0 1
Hardware:  2 CPU cores, no accelerator. Any backend: set KERAS_BACKEND=jax|tensorflow|torch.
Time:      minutes with PyTorch on 2 cores for the default (2 rows x 5 epochs x 210 steps); the comparison
           (12 rows of 188 steps x 5 epochs) takes several times longer. The measured times are in
           docs/results.md.
Expect:    the comparison: mean test top-1, pre-trained vs from the same initial weights, in
           docs/results.md, "Fine-tuning the text model" (the seeds disagree there). The default
           (lr 1e-3, one seed, all training blocks) has not been measured.
Smoke:     --smoke fine-tunes a fresh one-block model on the start of 36 documents, in seconds.
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
from keras_d2v2.evaluation import fine_tuning_accuracy, pick_learning_rates  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained", help="a Data2Vec2 text model (.keras) with its tokenizer in <name>_tokenizer/; default "
        "runs/pretrain_text.keras, or with --smoke a fresh one-block model"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--learning-rate", type=float, nargs="+", default=[1e-3],
        help="peak learning rate; several values: each encoder is fine-tuned at each, and the one with the best "
        "accuracy on validation blocks (from every 5th training document of each section, then never trained on) "
        "gives its test figure",
    )
    parser.add_argument("--warmup-epochs", type=float, default=0.3)
    parser.add_argument("--train-per-class", type=int, default=1500, help="training blocks per section, at most")
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0],
        help="seed of the head's init and the batch order (the first also draws the training blocks); several: "
        "every row is run with each, the learning rate is chosen on the mean validation accuracy and the mean "
        "test accuracy over seeds is reported",
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check that everything runs")
    return parser.parse_args()


def fine_tune(make_encoder, learning_rate, train, evaluate_on, seed, args):
    """Fine-tunes a `TextClassifier` on a fresh `make_encoder()`; returns its top-1 on each of `evaluate_on`."""
    encoder = make_encoder()
    # Seeded after the encoder, whose making may set a seed of its own: the head's init and the batch
    # order are then those of `seed`, the same for both encoders.
    keras.utils.set_random_seed(seed)
    classifier = keras_d2v2.TextClassifier(encoder=encoder, num_classes=len(DOC_SECTIONS))
    first, _ = fine_tuning_accuracy(
        classifier, train, evaluate_on[0], epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=learning_rate, warmup_epochs=args.warmup_epochs,
        optimizer_kwargs=dict(beta_1=0.9, beta_2=0.98, epsilon=1e-6, weight_decay=0.1),
        verbose=1 if not args.smoke else 2,
    )
    return [first] + [float((classifier.predict(x, verbose=0).argmax(-1) == y).mean()) for x, y in evaluate_on[1:]]


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed[0])
    texts, sections, _ = load_python_docs()
    held_out = held_out_documents(sections)
    if args.smoke:
        # The first 6 documents of each section, cut short: the 5th is held out for testing and, with
        # several learning rates, the 6th for validation.
        keep = np.concatenate([np.flatnonzero(np.array(sections) == s)[:6] for s in DOC_SECTIONS])
        texts, sections, held_out = [texts[i][:4000] for i in keep], [sections[i] for i in keep], held_out[keep]
        args.epochs, args.train_per_class = 1, 40
    if args.smoke and not args.pretrained:
        tokenizer = keras_d2v2.ByteLevelBPETokenizer.train(
            [t for t, h in zip(texts, held_out) if not h], vocab_size=300, max_length=128
        )
        pretrained = keras_d2v2.Data2Vec2.text(
            preset="tiny", vocab_size=tokenizer.vocabulary_size, depth=1, top_k=1, seed=args.seed[0]
        )
    else:
        path = args.pretrained or "runs/pretrain_text.keras"
        if not os.path.exists(path):
            raise SystemExit(f"--pretrained {path} does not exist; run recipes/pretrain_text.py first.")
        pretrained = keras.saving.load_model(path)
        tokenizer = keras_d2v2.ByteLevelBPETokenizer.load(os.path.splitext(path)[0] + "_tokenizer")
    tokenizer.check_model(pretrained)
    blocks, source = tokenizer.encode_chunks(texts, block_length=pretrained.encoder.max_positions)
    task = dict(max_train_per_class=args.train_per_class, seed=args.seed[0])
    train, test = section_classification(blocks, source, sections, held_out, **task)
    evaluate_on = [test]
    select = len(args.learning_rate) > 1
    if select:
        # Validation blocks come from whole documents, as the test blocks do: blocks of one document
        # share its vocabulary, so validating on blocks of training documents would flatter overfitting.
        validation_documents = np.zeros_like(held_out)
        validation_documents[~held_out] = held_out_documents([s for s, h in zip(sections, held_out) if not h])
        seen = ~held_out[source]
        train, validation = section_classification(blocks[seen], source[seen], sections, validation_documents, **task)
        evaluate_on.insert(0, validation)

    def random_encoder():
        # A seeded encoder (the presets seed theirs) starts from the pre-training's own initial weights.
        keras.utils.set_random_seed(args.seed[0] + 1)
        encoder = type(pretrained.encoder).from_config({**pretrained.encoder.get_config(), "name": "encoder"})
        encoder.build()
        return encoder

    encoders = (("data2vec 2.0 pre-trained", pretrained.export_encoder), ("random init", random_encoder))
    print(f"backend {keras.backend.backend()}, {pretrained.encoder.count_params():,} encoder parameters, "
          f"{len(train[0])} training blocks, {len(test[0])} test blocks, {args.epochs} epochs, learning rates "
          f"{args.learning_rate}" + (f", chosen on {len(evaluate_on[0][0])} validation blocks" if select else ""))

    rows = []
    for name, make_encoder in encoders:
        for learning_rate in args.learning_rate:
            for seed in args.seed:
                start = time.time()
                accuracies = fine_tune(make_encoder, learning_rate, train, evaluate_on, seed, args)
                rows.append((name, learning_rate, seed, accuracies, time.time() - start))
    width = max(len(r[0]) for r in rows)
    print(f"\nFine-tuned top-1: section of a block from an unseen document ({len(DOC_SECTIONS)} classes, "
          f"{len(test[0])} test blocks, balanced)")
    print(f"{'encoder':<{width}}  peak lr  seed  " + ("validation  " if select else "") + "accuracy  time")
    for name, learning_rate, seed, accuracies, seconds in rows:
        print(f"{name:<{width}}  {learning_rate:7.0e}  {seed:4d}  "
              + "".join(f"{100 * a:9.2f}%  " for a in accuracies) + f"{seconds:4.0f} s")
    best = pick_learning_rates((name, learning_rate, accuracies) for name, learning_rate, _, accuracies, _ in rows)
    over = f", mean of {len(args.seed)} seeds" if len(args.seed) > 1 else ""
    rate = "each encoder's best validation learning rate" if select else "the learning rate"
    print(f"Test top-1 at {rate}{over}: "
          + "; ".join(f"{name} {100 * acc[-1]:.2f}% (lr {lr:.0e})" for name, (lr, acc) in best.items()))
    return {name: acc[-1] for name, (_, acc) in best.items()}


if __name__ == "__main__":
    main()
