"""Fine-tuning evaluation: train a whole classifier on labels, report test top-1, pick learning rates on validation."""

import keras
import numpy as np

from keras_d2v2.optimizers import LayerDecayAdamW, warmup_cosine


def fine_tuning_accuracy(
    classifier,
    train,
    test,
    *,
    epochs,
    batch_size,
    learning_rate,
    warmup_epochs,
    layer_decay=1.0,
    label_smoothing=0.0,
    optimizer_kwargs=None,
    verbose="auto",
):
    """Top-1 test accuracy after fine-tuning every weight of `classifier`.

    AdamW with linear warm-up then cosine decay to 0 (`warmup_cosine`), the reference's
    layer-wise learning-rate decay when `layer_decay < 1` (`LayerDecayAdamW`), cross-entropy with
    `label_smoothing`. 1-D weights are kept out of weight decay (the classifiers' `compile`).

    Args:
        classifier: an `ImageClassifier`, `AudioClassifier` or `TextClassifier`.
        train, test: `(inputs, labels)`; inputs as the classifier takes them (an array or, for
            audio with padding, a dict), labels int `(N,)` in `[0, classifier.num_classes)`.
        epochs, batch_size, learning_rate (the peak), warmup_epochs: the schedule.
        layer_decay: float in (0, 1]; 1 turns the layer-wise decay off (e.g. for a random init).
        label_smoothing: float.
        optimizer_kwargs: dict for `LayerDecayAdamW` (`beta_2`, `epsilon`, `weight_decay`, ...).
        verbose: `fit`'s verbosity.

    Returns:
        `(accuracy, history)`: float test top-1 and the `History` of `fit`.

    Example:
    >>> classifier = TextClassifier.from_pretrained("runs/pretrain_text.keras", num_classes=6)
    >>> accuracy, _ = fine_tuning_accuracy(classifier, (x, y), (x_test, y_test), epochs=5,
    ...                                    batch_size=32, learning_rate=1e-4, warmup_epochs=0.3)
    """
    labels = np.asarray(train[1])
    if labels.min() < 0 or labels.max() >= classifier.num_classes:
        raise ValueError(
            f"Training labels must lie in [0, {classifier.num_classes}) for this classifier, got "
            f"[{labels.min()}, {labels.max()}]."
        )
    steps_per_epoch = -(-len(labels) // batch_size)
    schedule = warmup_cosine(
        learning_rate, total_steps=epochs * steps_per_epoch, warmup_epochs=warmup_epochs, steps_per_epoch=steps_per_epoch
    )
    multipliers = classifier.layer_decay_multipliers(layer_decay) if layer_decay < 1 else None
    classifier.compile(
        optimizer=LayerDecayAdamW(schedule, lr_multipliers=multipliers, **(optimizer_kwargs or {})),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    one_hot = keras.utils.to_categorical(labels, classifier.num_classes)
    history = classifier.fit(train[0], one_hot, batch_size=batch_size, epochs=epochs, verbose=verbose)
    logits = classifier.predict(test[0], batch_size=max(batch_size, 256), verbose=0)
    return float((logits.argmax(-1) == np.asarray(test[1])).mean()), history


def pick_learning_rates(runs):
    """Each encoder's learning rate, chosen on validation: the model selection of the fine-tuning recipes.

    Args:
        runs: iterable of `(encoder, learning_rate, accuracies)`, one per fine-tuning run, where
            `accuracies` is a sequence whose first entry is measured on validation data (the choice
            is made on it alone) and whose other entries are on test sets. Runs of the same encoder
            and rate (one per seed, say) are averaged entry by entry before the choice.

    Returns:
        dict `{encoder: (learning_rate, mean_accuracies)}`, encoders in order of first appearance:
        the rate with the highest mean validation accuracy (the earliest listed, on a tie) and the
        means of every entry over that rate's runs.

    Example:
    >>> runs = [("pre-trained", 1e-3, [0.80, 0.79]), ("pre-trained", 3e-3, [0.83, 0.81]),
    ...         ("pre-trained", 3e-3, [0.81, 0.80])]
    >>> rate, accuracies = pick_learning_rates(runs)["pre-trained"]
    >>> rate
    0.003
    """
    grouped = {}
    for encoder, learning_rate, accuracies in runs:
        grouped.setdefault(encoder, {}).setdefault(learning_rate, []).append(np.asarray(accuracies, float))
    picked = {}
    for encoder, by_rate in grouped.items():
        means = {rate: np.mean(np.stack(runs_at_rate), axis=0) for rate, runs_at_rate in by_rate.items()}
        best = max(means, key=lambda rate: means[rate][0])  # max() keeps the first of equal keys
        picked[encoder] = (best, means[best])
    return picked
