"""Writes the `.keras` files and preset directories that tests/test_legacy_files.py loads.

They were written by keras_d2v2 at commit 70434b0, before the package was restructured, so that
the test proves files saved by earlier versions still load and compute the same outputs. Run
from the repository root at that commit: `KERAS_BACKEND=torch python tests/legacy/make_legacy_models.py`.
"""

import os

import keras
import numpy as np

from keras_d2v2 import AudioClassifier, Data2Vec2, ImageClassifier, TextClassifier

HERE = os.path.dirname(os.path.abspath(__file__))


def inputs(modality, model):
    rng = np.random.default_rng(0)
    clones = model.masking.clone_batch
    if modality == "image":
        source = {"images": rng.standard_normal((2, 32, 32, 3)).astype("float32")}
        tokens = 64
    elif modality == "text":
        source = {"tokens": rng.integers(4, 100, (2, 16)).astype("int32")}
        tokens = 16
    else:
        audio = rng.standard_normal((2, 8000)).astype("float32")
        padding = np.zeros((2, 8000), bool)
        padding[1, 6000:] = True
        source = {"audio": audio, "padding_mask": padding}
        tokens = model.encoder.output_length(8000)
    visible = model.masking.num_visible(tokens)
    mask = np.ones((2, clones, tokens), "float32")
    for row in mask.reshape(-1, tokens):
        row[rng.permutation(tokens)[:visible]] = 0.0
    return source, mask


def main():
    expected = {}
    builders = {
        "image": lambda: Data2Vec2.image(preset="tiny_test", seed=0),
        "image_mto": lambda: Data2Vec2.image(
            preset="tiny_test", seed=0, student_mode="full_sequence", attention_recalibration=True,
            singularity_loss_weight=0.1, entropy_loss_weight=0.1,
        ),
        "text": lambda: Data2Vec2.text(preset="tiny_test", seed=0),
        "audio": lambda: Data2Vec2.audio(preset="tiny_test", seed=0),
    }
    for name, build in builders.items():
        modality = name.split("_")[0]
        model = build()
        source, mask = inputs(modality, model)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
        model.fit(source, batch_size=2, epochs=1, verbose=0)
        x = dict(source, mask=mask)
        if name != "image_mto":
            num_masked = int(mask[0, 0].sum())
            x["mask_noise"] = np.random.default_rng(1).standard_normal(
                (2, model.masking.clone_batch, num_masked, model.embed_dim)).astype("float32") * 0.01
        outputs = model(x, training=False)
        padding = source.get("padding_mask")
        targets = model.teacher_targets(source[model.encoder.input_name], padding_mask=padding)
        for key, value in x.items():
            expected[f"{name}/input/{key}"] = np.asarray(value)
        expected[f"{name}/prediction"] = keras.ops.convert_to_numpy(outputs["prediction"])
        expected[f"{name}/targets"] = keras.ops.convert_to_numpy(targets)
        expected[f"{name}/num_updates"] = keras.ops.convert_to_numpy(model.num_updates)
        model.save(os.path.join(HERE, f"{name}.keras"))
        if name == "text":
            model.save_to_preset(os.path.join(HERE, "text_preset"))
        classifier_class = {"image": ImageClassifier, "text": TextClassifier, "audio": AudioClassifier}[modality]
        if name != "image_mto":
            classifier = classifier_class.from_pretrained(model, num_classes=3)
            features = source[model.encoder.input_name] if modality != "audio" else source
            expected[f"{name}_classifier/logits"] = keras.ops.convert_to_numpy(classifier(features, training=False))
            classifier.save(os.path.join(HERE, f"{name}_classifier.keras"))
    np.savez(os.path.join(HERE, "expected.npz"), **expected)


if __name__ == "__main__":
    main()
