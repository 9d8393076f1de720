"""Faults during training: the guard stops the run and the last checkpoint on disk stays good."""

import threading

import keras
import numpy as np
import pytest
from keras import ops

import keras_d2v2
from keras_d2v2 import Data2Vec2, InvalidInputBatch, TrainingDiverged, TrainingGuard
from keras_d2v2.data import ShuffledBatches


def tiny():
    keras.utils.set_random_seed(0)
    model = Data2Vec2.image(preset="tiny_test", seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
    return model


def images():
    return np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype("float32")


def state(model):
    return [ops.convert_to_numpy(v).copy() for v in model.variables + model.optimizer.variables]


class NaNInSecondEpoch(ShuffledBatches):
    def __getitem__(self, index):
        (batch,) = super().__getitem__(index)
        if self.epoch == 1 and index == 1:
            batch = batch.copy()
            batch[0, 0, 0, 0] = np.nan
        return (batch,)


class EpochEndState(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.states = []

    def on_epoch_end(self, epoch, logs=None):
        self.states.append(state(self.model))


def test_divergence_keeps_the_last_good_checkpoint_and_resumes_from_it(tmp_path):
    clean = tiny()
    clean.fit(ShuffledBatches(images(), batch_size=2, seed=0), epochs=2, verbose=0)

    faulted = tiny()
    recorder = EpochEndState()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    restored = "restored to those at the end of epoch 1 \\(update 3\\)"
    with pytest.raises(TrainingDiverged, match=f"became nan at update 5.*{restored}"):
        faulted.fit(NaNInSecondEpoch(images(), batch_size=2, seed=0), epochs=2, verbose=0, callbacks=[backup, recorder])
    assert len(recorder.states) == 1  # the diverging epoch never reached a checkpoint
    # In memory too, the model is back at the end of epoch 1: weights, optimizer, EMA and seed states.
    for a, b in zip(recorder.states[0], state(faulted)):
        np.testing.assert_array_equal(a, b)
    # A run resumed from that backup that diverges again is put back to the backup's state, not
    # to the fresh model it started as.
    again = tiny()
    with pytest.raises(TrainingDiverged, match=r"restored to those at the start of this `fit\(\)` \(update 3\)"):
        again.fit(NaNInSecondEpoch(images(), batch_size=2, seed=0), epochs=2, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    for a, b in zip(recorder.states[0], state(again)):
        np.testing.assert_array_equal(a, b)
    # ... and a second fit on clean data goes on from there as if nothing had happened.
    faulted.fit(ShuffledBatches(images(), batch_size=2, seed=0), initial_epoch=1, epochs=2, verbose=0)
    for a, b in zip(state(clean), state(faulted)):
        np.testing.assert_array_equal(a, b)

    resumed = tiny()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    assert len(recorder.states[0]) == len(state(resumed)) > 100
    for a, b in zip(recorder.states[0], state(resumed)):
        np.testing.assert_array_equal(a, b)
        assert np.isfinite(a).all()

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    resumed = tiny()
    resumed.fit(ShuffledBatches(images(), batch_size=2, seed=0), epochs=2, verbose=0, callbacks=[backup])
    for a, b in zip(state(clean), state(resumed)):
        np.testing.assert_array_equal(a, b)


def test_non_finite_weights_at_epoch_end_stop_before_any_checkpoint():
    model = tiny()
    guard = TrainingGuard()
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_end(0)  # all finite: nothing happens
    variable = model.encoder.trainable_variables[3]
    variable.assign(ops.convert_to_numpy(variable) * np.inf)
    with pytest.raises(TrainingDiverged, match=rf"`{variable.path}` holds NaN or inf at the end of epoch 1"):
        guard.on_epoch_end(0)
    assert model.stop_training


def test_the_guard_keeps_the_step_loop_asynchronous_and_still_stops_before_the_epoch_ends():
    if keras.backend.backend() == "tensorflow":
        pytest.skip("Keras runs every callback on the main thread on TensorFlow (not thread-safe).")

    class BatchEndThreads(keras.callbacks.Callback):
        async_safe = True

        def __init__(self):
            super().__init__()
            self.threads = set()

        def on_train_batch_end(self, batch, logs=None):
            self.threads.add(threading.current_thread())

    class ModelReadThreads(TrainingGuard):
        def __init__(self):
            super().__init__()
            self.threads = set()

        @property
        def model(self):
            self.threads.add(threading.current_thread())
            return super().model

    threads, guard, recorder = BatchEndThreads(), ModelReadThreads(), EpochEndState()
    x = images()
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="became nan at update 2"):
        tiny().fit(x, batch_size=2, epochs=2, verbose=0, shuffle=False, callbacks=[guard, threads, recorder])
    assert recorder.states == []  # the error was raised before the first epoch's end
    # Keras dispatches batch ends to a thread only when every callback, the guard included, is
    # async-safe.
    assert threads.threads and threading.main_thread() not in threads.threads
    # On JAX, reading `callback.model` writes the step's state back into the variables: from the
    # callback thread it would write buffers that the next step has already been given.
    assert guard.threads == {threading.main_thread()}


def test_divergence_in_the_first_epoch_restores_the_start_and_without_restore_leaves_the_nan():
    x = images()
    x[2, 0, 0, 0] = np.nan
    model = tiny()
    model.optimizer.build(model.trainable_variables)
    before = state(model)
    with pytest.raises(TrainingDiverged, match=r"restored to those at the start of this `fit\(\)` \(update 0\)"):
        model.fit(x, batch_size=2, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(before, state(model)):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(model.fit(images(), batch_size=2, epochs=1, verbose=0).history["loss"]).all()

    kept = tiny()
    with pytest.raises(TrainingDiverged, match="left as they are"):
        kept.fit(x, batch_size=2, epochs=1, verbose=0, shuffle=False,
                 callbacks=[TrainingGuard(restore_on_divergence=False)])
    assert any(np.isnan(a).any() for a in state(kept))


class Streamed(keras.utils.PyDataset):
    """A `PyDataset`: its values are unknown to `fit()` until each batch is drawn."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return (self.batches[index],)


def text_model():
    keras.utils.set_random_seed(0)
    model = Data2Vec2.text("tiny_test", seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    return model


@pytest.mark.parametrize("bad_id", [-1, 100])
def test_streamed_token_ids_outside_the_vocabulary_stop_at_their_batch_and_change_nothing(bad_id):
    rng = np.random.default_rng(0)
    batches = [rng.integers(4, 100, size=(2, 16)).astype("int32") for _ in range(3)]
    batches[1][0, 3] = bad_id
    model = text_model()
    model.optimizer.build(model.trainable_variables)
    before = state(model)
    with pytest.raises(InvalidInputBatch, match=r"`tokens` holds 1 ids outside the vocabulary \[0, 100\), by batch 2 of "
                       r"epoch 1 .*restored to those at the start"):
        model.fit(Streamed(batches), epochs=1, verbose=0, shuffle=False)  # (fit shuffles a PyDataset's batches)
    for a, b in zip(before, state(model)):
        np.testing.assert_array_equal(a, b)
    # The same ids as an array are refused before training, by the up-front check.
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.fit(np.concatenate(batches), batch_size=2, epochs=1, verbose=0)
    history = model.fit(Streamed(batches[:1] + batches[2:]), epochs=1, verbose=0).history
    assert history["invalid_token_ids"] == [0.0] and np.isfinite(history["loss"]).all()


def test_a_streamed_all_padding_audio_row_is_refused_with_the_array_paths_words():
    keras.utils.set_random_seed(0)
    model = Data2Vec2.audio("tiny_test", seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    audio = np.random.default_rng(0).normal(size=(2, 4000)).astype("float32")
    padding = np.zeros((2, 4000), bool)
    padding[1] = True
    with pytest.raises(InvalidInputBatch, match="1 rows of `audio` have fewer real samples than the receptive field"):
        model.fit(Streamed([{"audio": audio, "padding_mask": padding}]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="fewer than the receptive field"):
        model.fit({"audio": audio, "padding_mask": padding}, batch_size=2, epochs=1, verbose=0)


def test_input_checks_can_be_switched_off_and_are_saved():
    model = Data2Vec2.text("tiny_test", seed=0, input_checks=False)
    assert model.input_fault_trackers == {} and not model.get_config()["input_checks"]
    assert not Data2Vec2.from_config(model.get_config()).input_checks  # the off switch survives a round trip
    assert isinstance(keras_d2v2.InvalidInputBatch("x"), ValueError)


@pytest.mark.parametrize("pipeline", ["tf.data", "torch DataLoader"])
def test_every_streamed_pipeline_gets_the_check(pipeline):
    tokens = np.random.default_rng(0).integers(4, 100, size=(6, 16)).astype("int32")
    tokens[5, 0] = 100
    if pipeline == "tf.data":
        tf = pytest.importorskip("tensorflow")
        data = tf.data.Dataset.from_tensor_slices(tokens).batch(2)
    else:
        torch = pytest.importorskip("torch")
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(tokens)), batch_size=2)
    with pytest.raises(InvalidInputBatch, match="by batch 3 of epoch 1"):
        text_model().fit(data, epochs=1, verbose=0)
