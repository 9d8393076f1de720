"""Learning efficiency of masked token optimization (MTO), in the paper's form: each baseline for 2E
epochs, its MTO variant for E, same seeds; probes after every epoch; fine-tuning at the end.

What:      the judgement of MTO (docs/mto.md; ../shared/spec/mto.md, "How MTO is judged"). The tiny ViT
           of the main job (preset `tiny`, recipes/pretrain_image.py's AdamW, warm-up + cosine schedule
           over each run's own length, CLS weight) is pre-trained on Fashion-MNIST once per variant and
           seed. Before training and after every epoch the frozen student encoder (`model.encoder`,
           mean-pooled final tokens) is probed on the test split: k-NN (k=20, cosine) and a linear
           probe, with a bank of labelled training images. At the end of a run: k-NN and the linear
           probe with the full bank, and fine-tuning on the first `--finetune-labels` training labels
           (recipes/finetune_image.py's protocol at one rate). Variants (`VARIANTS`):
             d2v2            data2vec 2.0 as published: visible-only student, conv decoder (the reference)
             d2v2_tdec       the same with a pre-LN `TransformerDecoder` (masked tokens meet attention)
             d2v2_tdec+mto   + MTO: learnable token, recalibration, singularity, L_e, L_r in the decoder
             full_seq        every patch in the student (SimMIM-like), random masking 0.6, learnable token
             full_seq+mto    + MTO in the encoder: recalibration, positioned singularity, L_e, L_r
             mae             MAE: transformer decoder, per-patch normalized pixels, random masking 0.75, 1 mask
             mae+mto         + MTO in the decoder
           and the variants of the 2026-11-23 measurement (visible_only[+mto], full_sequence[+mto]).
           Reports, per variant over seeds (mean ± std): final probe and fine-tuning accuracy; per MTO
           variant against its baseline (paired by seed): the final difference (MTO at E minus baseline
           at 2E), the first epoch at which MTO reaches the baseline's final accuracy, the area under
           the accuracy curve over the epochs both ran (0..E) relative to the baseline's, and seconds
           per epoch; per baseline: training seconds and accuracy, and the accuracy each baseline had
           reached when the fastest one finished (data2vec 2.0 against MAE per second of training).
Command:   KERAS_BACKEND=torch .venv/bin/python -u benchmarks/mto_efficiency.py          (the protocol)
           ... --quick (minutes: the protocol's shape on 5,120 images), --smoke (seconds, the tests)
Settings:  full: all 60,000 training images, batch 64 (the main job's), E = 4 epochs (3,752 updates;
           baselines 8 epochs, 7,504 updates), 3 seeds x 7 variants; per-epoch probes with a 10,000-image
           bank on the 10,000 test images; final probes with the 60,000-image bank; fine-tuning on 2,000
           labels (30 epochs, batch 128, rate 1e-3, layer decay 0.65, drop path 0.1, smoothing 0.1).
           quick: 5,120 images, E = 2, 1 seed, 2,000-image probes, 500 fine-tuning labels x 5 epochs.
           smoke: 256 images, E = 1, d2v2_tdec and d2v2_tdec+mto. quick_2026_11: the 2026-11-23 run
           (4 earlier variants, 5,120 images, 3 epochs at batch 256 for every variant, no final stage;
           its linear figures predate the probe's normalization). Any number can be overridden.
Resume:    every finished run is appended to OUT/results.json at once; a run in progress saves its
           model (`model.save`, optimizer and EMA state included) and its curve under OUT/state/ after
           every epoch. The same command continues where a stop left off (a changed setting is refused;
           `--fresh` starts over). Seconds per epoch are the median step time x steps, so a pause (a
           SIGSTOP, a co-tenant) shifts them little; runs on shared cores still say so in the note.
Hardware:  2 CPU cores with PyTorch, or a GPU (`--setting full` there as well when one is lent).
Time:      full, 2 CPU cores: ~2 h of training per seed (d2v2 ~0.11 s per update, full_seq ~2.5x, mae
           ~0.4x) plus ~20 min of probes and fine-tuning: ~7 h for 3 seeds. quick: ~10 min. smoke: ~1 min.
Output:    a plain-text table on stdout; OUT (default runs/mto_efficiency/) gets results.json (every
           number: per-run curves, per-epoch logs such as each loss term, seconds, the summary) and
           curves.png (k-NN and linear accuracy against epoch and against training seconds; needs
           matplotlib: pip install 'keras-d2v2[bench]').
Caveat:    MTO as shipped is our reconstruction of the paper's stated mechanisms (docs/mto.md says
           which parts are public facts and which are our choices); one MTO setting per student is
           measured, chosen before the measurement.
Data:      `apt-get install dataset-fashion-mnist` (done by `make setup`); nothing is downloaded.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.atomic_write import replaced_atomically  # noqa: E402
from keras_d2v2.data import load_fashion_mnist, standardize_images  # noqa: E402
from keras_d2v2.evaluation import (  # noqa: E402
    encoder_features,
    fine_tuning_accuracy,
    knn_accuracy,
    linear_probe_accuracy,
)
from keras_d2v2.optimizers import warmup_cosine  # noqa: E402

PRESET = "tiny"
# One MTO setting, chosen before measuring: the learnable token, recalibration, the data-singularity
# term at the insertion point, L_e over the first half of the blocks and L_r over the rest.
MTO = dict(mask_fill="token", attention_recalibration=True, singularity_loss_weight=1.0,
           heterogeneity_loss_weight=1.0, rank_loss_weight=1.0, heterogeneity_measure="entropy")
TDEC = dict(decoder="transformer")
FULL_SEQ = dict(student_mode="full_sequence", masking="random", mask_prob=0.6)
MAE = dict(decoder="transformer", targets="pixels", masking="random", mask_prob=0.75, clone_batch=1, mask_fill="token")
VARIANTS = {
    "d2v2": {},
    "d2v2_tdec": TDEC,
    "d2v2_tdec+mto": {**TDEC, **MTO},
    "full_seq": FULL_SEQ,
    # Only the token term at the input (depth_weighting="none"): L_e and L_r shape the blocks.
    "full_seq+mto": {**FULL_SEQ, **MTO, "singularity_position": True, "depth_weighting": "none"},
    "mae": MAE,
    "mae+mto": {**MAE, **MTO},
    # The 2026-11-23 measurement's variants (docs/mto.md, "Earlier").
    "visible_only": {},
    "visible_only+mto": {"mask_fill": "token", "singularity_loss_weight": 1.0},
    "full_sequence": {"student_mode": "full_sequence", "attention_recalibration": False},
    "full_sequence+mto": {"student_mode": "full_sequence", "attention_recalibration": True,
                          "singularity_loss_weight": 1.0, "entropy_loss_weight": 0.1, "entropy_sign": 1.0},
}
PROTOCOL = "d2v2,d2v2_tdec,d2v2_tdec+mto,full_seq,full_seq+mto,mae,mae+mto"
FINETUNE = dict(finetune_epochs=30, finetune_batch_size=128, finetune_learning_rate=1e-3)
SETTINGS = {
    "full": dict(train_images=None, epochs=4, baseline_factor=2, batch_size=64, probe_bank=10_000, probe_test=None,
                 probe_epochs=100, final_bank=None, finetune_labels=2000, **FINETUNE, seeds="0,1,2", variants=PROTOCOL),
    "quick": dict(train_images=5120, epochs=2, baseline_factor=2, batch_size=64, probe_bank=2000, probe_test=2000,
                  probe_epochs=50, final_bank=5000, finetune_labels=500, finetune_epochs=5, finetune_batch_size=128,
                  finetune_learning_rate=1e-3, seeds="0", variants=PROTOCOL),
    "smoke": dict(train_images=256, epochs=1, baseline_factor=2, batch_size=64, probe_bank=512, probe_test=256,
                  probe_epochs=5, final_bank=512, finetune_labels=128, finetune_epochs=1, finetune_batch_size=64,
                  finetune_learning_rate=1e-3, seeds="0", variants="d2v2_tdec,d2v2_tdec+mto"),
    "quick_2026_11": dict(train_images=5120, epochs=3, baseline_factor=1, batch_size=256, probe_bank=5000,
                          probe_test=2000, probe_epochs=100, final_bank=0, finetune_labels=0, **FINETUNE,
                          seeds="0,1,2", variants="visible_only,visible_only+mto,full_sequence,full_sequence+mto"),
}
METRICS = ("knn", "linear")
FINAL_METRICS = ("knn", "linear", "finetune")
MATPLOTLIB_MISSING = (
    "benchmarks/mto_efficiency.py draws its plot with matplotlib, which is not installed: "
    "pip install 'keras-d2v2[bench]' (or -r requirements-dev.txt), or pass --no-plot."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default=None)
    parser.add_argument("--quick", action="store_true", help="--setting quick")
    parser.add_argument("--smoke", action="store_true", help="--setting smoke")
    parser.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--epochs", type=int, help="E: the MTO variants' epochs (baselines: E x --baseline-factor)")
    parser.add_argument("--baseline-factor", type=int, help="baselines train this many times E epochs (2: the paper)")
    parser.add_argument("--train-images", type=int, help="pre-train on the first N training images")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--probe-bank", type=int, help="labelled training images (the first N) of the per-epoch probes")
    parser.add_argument("--probe-test", type=int, help="test images probed (the first N)")
    parser.add_argument("--probe-epochs", type=int, help="epochs of the linear probe's training")
    parser.add_argument("--final-bank", type=int, help="bank of the final probes (0: no final stage)")
    parser.add_argument("--finetune-labels", type=int, help="labels fine-tuned on at the end (0: no fine-tuning)")
    parser.add_argument("--finetune-epochs", type=int)
    parser.add_argument("--finetune-batch-size", type=int)
    parser.add_argument("--finetune-learning-rate", type=float)
    parser.add_argument("--out", default="runs/mto_efficiency", help="folder for results.json, state/ and curves.png")
    parser.add_argument("--fresh", action="store_true", help="discard OUT's results and state and start over")
    parser.add_argument("--no-plot", action="store_true", help="skip curves.png (and the matplotlib requirement)")
    args = parser.parse_args(argv)
    if sum([args.quick, args.smoke, args.setting is not None]) > 1:
        parser.error("give one of --setting, --quick, --smoke")
    args.setting = "quick" if args.quick else "smoke" if args.smoke else args.setting or "full"
    for key, value in SETTINGS[args.setting].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    args.variants = names
    if not args.seeds:
        parser.error("--seeds needs at least one seed")
    if args.epochs < 1 or args.baseline_factor < 1:
        parser.error("--epochs and --baseline-factor must be >= 1")
    return args


def baseline_of(name):
    """The variant without MTO with the same student."""
    return name.split("+")[0]


def run_epochs(name, args):
    return args.epochs * (args.baseline_factor if name == baseline_of(name) else 1)


def device_description():
    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        elif backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return device.device_kind
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    except Exception:  # a description only; never fail a benchmark on it
        pass
    return f"CPU ({os.cpu_count()} cores visible, {platform.processor() or platform.machine()})"


# ------------------------------------------------------------------------------------------- a run
class StepTimes(keras.callbacks.Callback):
    """Wall seconds of every training step."""

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def on_train_begin(self, logs=None):
        self.seconds = []


def probe(encoder, bank, test, seed, probe_epochs):
    """k-NN and linear-probe accuracy of a frozen encoder, and the seconds they took."""
    start = time.perf_counter()
    bank_features, test_features = encoder_features(encoder, bank[0]), encoder_features(encoder, test[0])
    knn = knn_accuracy(bank_features, bank[1], test_features, test[1], k=20)
    linear = linear_probe_accuracy(bank_features, bank[1], test_features, test[1], seed=seed, epochs=probe_epochs)
    return float(knn), float(linear), time.perf_counter() - start


def build_model(name, kwargs, seed, steps, steps_per_epoch, args):
    keras.utils.set_random_seed(seed)
    extra = {}
    if kwargs.get("targets") != "pixels":
        # As recipes/pretrain_image.py: the reference's CLS weight relative to the token loss.
        clones = kwargs.get("clone_batch", keras_d2v2.presets.IMAGE_PRESETS[PRESET]["masking"]["clone_batch"])
        extra["cls_loss_weight"] = 0.01 * 256 / (args.batch_size * clones)
    model = keras_d2v2.Data2Vec2.image(preset=PRESET, seed=seed, **extra, **kwargs)
    schedule = warmup_cosine(
        args.learning_rate, total_steps=steps, warmup_epochs=args.warmup_epochs, steps_per_epoch=steps_per_epoch
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, beta_1=0.9, beta_2=0.95, weight_decay=0.05, global_clipnorm=4.0)
    )
    return model


def final_stage(model, seed, data, args):
    """Final probes with the full bank and fine-tuning on the first `finetune_labels` labels."""
    # final_bank None means the whole training set; 0 turns the final probes off.
    if args.final_bank == 0 and not args.finetune_labels:
        return None
    (x_train, y_train), test = data["train"], data["test"]
    start = time.perf_counter()
    final = {}
    if args.final_bank != 0:
        bank = (x_train[: args.final_bank], y_train[: args.final_bank])
        final["knn"], final["linear"], _ = probe(model.encoder, bank, test, seed, args.probe_epochs)
    if args.finetune_labels:
        encoder = model.export_encoder(drop_path_rate=0.1)
        keras.utils.set_random_seed(seed)
        classifier = keras_d2v2.ImageClassifier(encoder=encoder, num_classes=10)
        labelled = (x_train[: args.finetune_labels], y_train[: args.finetune_labels])
        final["finetune"], _ = fine_tuning_accuracy(
            classifier, labelled, test, epochs=args.finetune_epochs, batch_size=args.finetune_batch_size,
            learning_rate=args.finetune_learning_rate, warmup_epochs=min(3, args.finetune_epochs / 10),
            layer_decay=0.65, label_smoothing=0.1, optimizer_kwargs=dict(beta_1=0.9, beta_2=0.95, weight_decay=0.05),
            verbose=0,
        )
    final["seconds"] = time.perf_counter() - start
    return final


def pretrain_and_probe(name, kwargs, seed, data, args, state_dir):
    """One (variant, seed): probes at init and after every epoch, then the final stage; resumes from
    `state_dir` (the model after the last finished epoch and the curve so far). Returns the run's record."""
    x_pretrain, bank, test = data["pretrain"], data["bank"], data["test"]
    batches = keras_d2v2.ShuffledBatches(x_pretrain, batch_size=args.batch_size, seed=seed)
    steps_per_epoch, epochs = len(batches), run_epochs(name, args)
    run_path = os.path.join(state_dir, "run.json")
    if os.path.exists(run_path):
        with open(run_path) as f:
            run = json.load(f)
        model = keras.saving.load_model(os.path.join(state_dir, f"model_epoch{run['epoch'][-1]}.keras"))
        print(f"  {name} seed {seed}: resuming after epoch {run['epoch'][-1]} of {epochs}", flush=True)
    else:
        model = build_model(name, kwargs, seed, epochs * steps_per_epoch, steps_per_epoch, args)
        run = dict(variant=name, kwargs=kwargs, seed=seed, epochs=epochs, steps_per_epoch=steps_per_epoch, epoch=[0],
                   knn=[], linear=[], seconds_per_epoch=[], wall_seconds_per_epoch=[], probe_seconds=[], logs=[],
                   final=None, error=None)
        knn, linear, probe_seconds = probe(model.encoder, bank, test, seed, args.probe_epochs)
        run["knn"].append(knn), run["linear"].append(linear), run["probe_seconds"].append(probe_seconds)
        print(f"  {name} seed {seed} epoch 0 (init): k-NN {100 * knn:.2f}%, linear {100 * linear:.2f}%", flush=True)
    times = StepTimes()
    for epoch in range(run["epoch"][-1] + 1, epochs + 1):
        start = time.perf_counter()
        history = model.fit(batches, initial_epoch=epoch - 1, epochs=epoch, verbose=0, callbacks=[times])
        wall = time.perf_counter() - start
        # The median step: robust to a compile on the first step and to pauses.
        seconds = float(np.median(times.seconds)) * steps_per_epoch
        logs = {k: float(np.asarray(v[-1])) for k, v in history.history.items()}
        knn, linear, probe_seconds = probe(model.encoder, bank, test, seed, args.probe_epochs)
        run["epoch"].append(epoch), run["knn"].append(knn), run["linear"].append(linear)
        run["seconds_per_epoch"].append(seconds), run["wall_seconds_per_epoch"].append(wall)
        run["probe_seconds"].append(probe_seconds), run["logs"].append(logs)
        if epoch < epochs:
            # The model first, under its epoch: run.json names the newest complete pair.
            os.makedirs(state_dir, exist_ok=True)
            model.save(os.path.join(state_dir, f"model_epoch{epoch}.keras"))
            write_json(run_path, run)
            if epoch > 1:
                os.remove(os.path.join(state_dir, f"model_epoch{epoch - 1}.keras"))
        terms = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k.endswith("loss"))
        print(f"  {name} seed {seed} epoch {epoch}/{epochs}: k-NN {100 * knn:.2f}%, linear {100 * linear:.2f}%, "
              f"{seconds:.1f} s training ({wall:.1f} s wall) + {probe_seconds:.1f} s probes; {terms}", flush=True)
    run["final"] = final_stage(model, seed, data, args)
    if run["final"]:
        print(f"  {name} seed {seed} final: " + ", ".join(
            f"{k} {100 * v:.2f}%" for k, v in run["final"].items() if k != "seconds"), flush=True)
    return run


# ------------------------------------------------------------------------------------------ summary
def spread(values):
    """Mean and std (sample std, ddof=1; 0 for a single value) of a list, with the values."""
    values = [float(v) for v in values]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "values": values}


def auc(curve, epochs):
    """Area under the accuracy-vs-epoch curve over epochs 0..`epochs` (trapezoid), divided by `epochs`."""
    curve = np.asarray(curve[: epochs + 1], dtype=np.float64)
    return float(np.sum((curve[1:] + curve[:-1]) / 2) / epochs)


def first_epoch_reaching(curve, target):
    """First epoch >= 1 whose accuracy is >= target, or None."""
    for epoch, value in enumerate(curve):
        if epoch >= 1 and value >= target - 1e-12:
            return epoch
    return None


def steady_seconds(run):
    return float(np.mean(run["seconds_per_epoch"]))


def accuracy_at_seconds(run, metric, seconds):
    """The run's probe accuracy after `seconds` of training, linear between epochs (None past its end)."""
    elapsed = np.concatenate([[0.0], np.cumsum(run["seconds_per_epoch"])])
    if seconds > elapsed[-1] + 1e-9:
        return None
    return float(np.interp(seconds, elapsed, run[metric]))


def final_value(run, metric):
    """The run's end-of-run figure: the final stage's where there is one, else the last probe's."""
    if run.get("final") and metric in run["final"]:
        return run["final"][metric]
    return run[metric][-1] if metric in METRICS else None


def summarize(runs, names):
    done = {(r["variant"], r["seed"]): r for r in runs if r["error"] is None}
    summary = {}
    for name in names:
        own = {seed: r for (variant, seed), r in done.items() if variant == name}
        if not own:
            summary[name] = {"seeds": [], "error": "no finished run"}
            continue
        seeds = sorted(own)
        epochs = own[seeds[0]]["epoch"][-1]
        base_name = baseline_of(name)
        base = {seed: r for (variant, seed), r in done.items() if variant == base_name}
        entry = {"seeds": seeds, "epochs": epochs, "baseline": base_name if base else None,
                 "seconds_per_epoch": spread([steady_seconds(own[s]) for s in seeds]),
                 "training_seconds": spread([sum(own[s]["seconds_per_epoch"]) for s in seeds]),
                 "probe_seconds": spread([np.mean(own[s]["probe_seconds"]) for s in seeds])}
        if base:
            ratio = entry["seconds_per_epoch"]["mean"] / np.mean([steady_seconds(r) for r in base.values()])
            entry["seconds_per_epoch_vs_baseline"] = float(ratio)
        paired = [s for s in seeds if s in base]
        for metric in FINAL_METRICS:
            values = [final_value(own[s], metric) for s in seeds]
            if any(v is None for v in values):
                continue
            m = {"end": spread(values)}
            if metric in METRICS:
                curves = np.array([own[s][metric] for s in seeds])
                m.update(curve_mean=curves.mean(0).tolist(),
                         curve_std=(curves.std(0, ddof=1) if len(seeds) > 1 else np.zeros(curves.shape[1])).tolist())
            if base and paired:
                base_end = [final_value(base[s], metric) for s in paired]
                m.update(baseline_end=spread(base_end),
                         end_minus_baseline=spread([final_value(own[s], metric) - b for s, b in zip(paired, base_end)]))
                if metric in METRICS:
                    target = float(np.mean([base[s][metric][-1] for s in paired]))
                    reached = first_epoch_reaching(np.mean([own[s][metric] for s in paired], axis=0), target)
                    m.update(
                        baseline_last_probe=target,
                        epochs_to_baseline_final=reached,
                        epochs_to_baseline_final_per_seed={
                            str(s): first_epoch_reaching(own[s][metric], base[s][metric][-1]) for s in paired
                        },
                        relative_auc=spread([auc(own[s][metric], epochs) / auc(base[s][metric], epochs) for s in paired]),
                    )
            entry[metric] = m
        summary[name] = entry
    summary["per_second"] = per_second(done, names)
    return summary


def per_second(done, names):
    """The baselines at equal training time: each one's probe accuracy when the fastest finished
    (over the seeds every baseline with a finished run has)."""
    baselines = [n for n in names if n == baseline_of(n) and any(variant == n for variant, _ in done)]
    seeds = sorted(set.intersection(*[{s for (v, s) in done if v == n} for n in baselines])) if baselines else []
    if len(baselines) < 2 or not seeds:
        return None
    budget = min(np.mean([sum(done[(n, s)]["seconds_per_epoch"]) for s in seeds]) for n in baselines)
    table = {"seconds": float(budget), "seeds": seeds}
    for n in baselines:
        table[n] = {metric: spread([accuracy_at_seconds(done[(n, s)], metric, budget) for s in seeds])
                    for metric in METRICS}
    return table


def percent(stat):
    return f"{100 * stat['mean']:6.2f} ± {100 * stat['std']:.2f}"


def print_tables(summary, names):
    width = max(len(n) for n in names)
    print("\nEnd of each run, mean ± std over seeds (%): last probe (k-NN, linear: final stage's bank where there is "
          "one), fine-tuning; training seconds")
    print(f"{'variant':<{width}}  seeds  epochs  {'k-NN':>15}  {'linear':>15}  {'fine-tune':>15}  "
          f"{'s/epoch':>13}  vs base")
    for name in names:
        entry = summary[name]
        if not entry["seeds"]:
            print(f"{name:<{width}}  {entry['error']}")
            continue
        cells = [percent(entry[m]["end"]) if m in entry else "-" for m in FINAL_METRICS]
        sec, vs = entry["seconds_per_epoch"], entry.get("seconds_per_epoch_vs_baseline")
        print(f"{name:<{width}}  {len(entry['seeds']):>5}  {entry['epochs']:>6}  " + "  ".join(f"{c:>15}" for c in cells)
              + f"  {sec['mean']:7.1f} ± {sec['std']:.1f}  {'' if vs is None else format(vs, '.2f') + 'x'}")
    print("\nMTO at E against its baseline at 2E (paired by seed): end-of-run difference in points (MTO - baseline),\n"
          "first epoch at which the MTO curve reaches the baseline's last probe (per seed in brackets, '-' = not\n"
          "reached), area under the curve over the epochs both ran relative to the baseline's")
    print(f"{'variant':<{width}}  {'metric':<9}  {'difference':>15}  {'epoch reached':>18}  {'AUC ratio':>13}")
    for name in names:
        entry = summary[name]
        if not entry["seeds"] or entry["baseline"] is None or name == entry["baseline"]:
            continue
        for metric in FINAL_METRICS:
            m = entry.get(metric, {})
            if "end_minus_baseline" not in m:
                continue
            reached = ratio = ""
            if metric in METRICS:
                first = m["epochs_to_baseline_final"]
                per_seed = ",".join("-" if e is None else str(e) for e in m["epochs_to_baseline_final_per_seed"].values())
                reached = f"{'-' if first is None else first} [{per_seed}]"
                ratio = f"{m['relative_auc']['mean']:.3f} ± {m['relative_auc']['std']:.3f}"
            print(f"{name:<{width}}  {metric:<9}  {percent(m['end_minus_baseline']):>15}  {reached:>18}  {ratio:>13}")
    table = summary.get("per_second")
    if table:
        print(f"\nBaselines at equal training time ({table['seconds']:.0f} s, when the fastest finished; seeds "
              f"{table['seeds']}): probe accuracy (%)")
        for name in names:
            if name in table:
                print(f"{name:<{width}}  k-NN {percent(table[name]['knn'])}  linear {percent(table[name]['linear'])}")
    print("\nAccuracy per epoch, mean ± std over seeds (%); epoch 0 is the initialization")
    for metric in METRICS:
        print(f"{'k-NN' if metric == 'knn' else 'linear'}")
        for name in names:
            entry = summary[name]
            if entry["seeds"] and metric in entry:
                m = entry[metric]
                print(f"{name:<{width}}  " + "  ".join(
                    f"{100 * mu:6.2f} ± {100 * sd:4.2f}" for mu, sd in zip(m["curve_mean"], m["curve_std"])))


def plot(summary, runs, names, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per student: its baseline dashed, with MTO solid.
    modes = list(dict.fromkeys(baseline_of(name) for name in names))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    fig.suptitle(title, fontsize=9)
    for ax, metric, label in zip(axes, METRICS, ("k-NN (k=20, cosine)", "linear probe")):
        for name in names:
            entry = summary[name]
            if not entry["seeds"]:
                continue
            mean, std = np.array(entry[metric]["curve_mean"]), np.array(entry[metric]["curve_std"])
            x = np.arange(len(mean))
            color = f"C{modes.index(baseline_of(name)) % 10}"
            ax.plot(x, 100 * mean, "--" if name == baseline_of(name) else "-", color=color, marker="o", markersize=3,
                    label=f"{name} ({len(entry['seeds'])} seed{'s' if len(entry['seeds']) > 1 else ''})")
            ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), color=color, alpha=0.15, linewidth=0)
        ax.set(title=f"{label}, Fashion-MNIST test", xlabel="pre-training epoch", ylabel="top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    for run in runs:
        if run["error"] is None:
            name = run["variant"]
            elapsed = np.concatenate([[0.0], np.cumsum(run["seconds_per_epoch"])])
            ax.plot(elapsed, 100 * np.array(run["knn"]), "--" if name == baseline_of(name) else "-",
                    color=f"C{modes.index(baseline_of(name)) % 10}", alpha=0.6, linewidth=1)
    ax.set(title="k-NN against training seconds (every run)", xlabel="training seconds", ylabel="top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path, record):
    with replaced_atomically(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, allow_nan=False)


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(args, n_pretrain, n_bank, n_test, n_final):
    return dict(train_images=n_pretrain, epochs=args.epochs, baseline_factor=args.baseline_factor,
                batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs,
                probe_bank=n_bank, probe_test=n_test, probe_epochs=args.probe_epochs, knn_k=20, final_bank=n_final,
                finetune_labels=args.finetune_labels, finetune_epochs=args.finetune_epochs,
                finetune_batch_size=args.finetune_batch_size, finetune_learning_rate=args.finetune_learning_rate)


def main(argv=None):
    args = parse_args(argv)
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        sys.exit(MATPLOTLIB_MISSING)
    results_path = os.path.join(args.out, "results.json")
    if args.fresh:
        shutil.rmtree(os.path.join(args.out, "state"), ignore_errors=True)
        if os.path.exists(results_path):
            os.remove(results_path)
    os.makedirs(args.out, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, x_test = standardize_images(x_train), standardize_images(x_test)
    data = dict(pretrain=x_train[: args.train_images], bank=(x_train[: args.probe_bank], y_train[: args.probe_bank]),
                test=(x_test[: args.probe_test], y_test[: args.probe_test]), train=(x_train, y_train))
    final_bank = len(x_train[: args.final_bank]) if args.final_bank != 0 else 0
    kwargs = {name: dict(VARIANTS[name]) for name in args.variants}
    config = describe(args, len(data["pretrain"]), len(data["bank"][0]), len(data["test"][0]), final_bank)
    device = device_description()
    record = dict(benchmark="mto_efficiency", setting=args.setting, backend=keras.backend.backend(), device=device,
                  keras_version=keras.__version__, preset=PRESET, config=config, variants=kwargs, runs=[], summary={},
                  wall_seconds=0.0, commits=[git_commit()])
    if os.path.exists(results_path):
        with open(results_path) as f:
            earlier = json.load(f)
        if earlier.get("config") != config or earlier.get("backend") != record["backend"]:
            sys.exit(f"{results_path} holds a run with other settings ({earlier.get('config')}, backend "
                     f"{earlier.get('backend')}); pass --fresh to start over or --out for another folder.")
        record["runs"], record["wall_seconds"] = earlier["runs"], earlier.get("wall_seconds", 0.0)
        record["variants"] = {**earlier.get("variants", {}), **kwargs}
        record["commits"] = list(dict.fromkeys(earlier.get("commits", []) + record["commits"]))
    finished = {(r["variant"], r["seed"]) for r in record["runs"] if r["error"] is None}
    print(f"backend {keras.backend.backend()} on {device}; setting {args.setting}: {config}; seeds {args.seeds}; "
          f"{len(finished)} runs already in {results_path}", flush=True)
    for name in args.variants:
        print(f"  {name} ({run_epochs(name, args)} epochs): {kwargs[name]}")

    start = time.time() - record["wall_seconds"]
    # Seeds outer: a run stopped early has every variant for the first seeds.
    for seed in args.seeds:
        for name in args.variants:
            if (name, seed) in finished:
                continue
            state_dir = os.path.join(args.out, "state", f"{name}__seed{seed}")
            try:
                run = pretrain_and_probe(name, kwargs[name], seed, data, args, state_dir)
            except Exception as error:  # record it and go on with the other runs
                print(f"  {name} seed {seed} FAILED: {type(error).__name__}: {error}", flush=True)
                run = dict(variant=name, kwargs=kwargs[name], seed=seed, error=f"{type(error).__name__}: {error}")
            run["commit"] = record["commits"][-1]
            record["runs"] = [r for r in record["runs"] if (r["variant"], r["seed"]) != (name, seed)] + [run]
            record["summary"] = summarize(record["runs"], args.variants)
            record["wall_seconds"] = time.time() - start
            write_json(results_path, record)
            shutil.rmtree(state_dir, ignore_errors=True)

    record["summary"] = summarize(record["runs"], args.variants)
    write_json(results_path, record)
    print_tables(record["summary"], args.variants)
    print(f"\n{len(record['runs'])} runs in {record['wall_seconds'] / 60:.1f} min; wrote {results_path}")
    if not args.no_plot:
        plot_path = os.path.join(args.out, "curves.png")
        title = (f"tiny ViT, {config['train_images']} Fashion-MNIST images, batch {args.batch_size}, MTO {args.epochs} "
                 f"epochs, baselines {args.epochs * args.baseline_factor}; probes: {config['probe_bank']}-image bank, "
                 f"{config['probe_test']} test images; mean ± std over seeds; {record['backend']} on {record['device']}")
        plot(record["summary"], record["runs"], args.variants, plot_path, title)
        print(f"wrote {plot_path}")
    failed = [f"{r['variant']} seed {r['seed']}" for r in record["runs"] if r["error"] is not None]
    if failed:
        sys.exit(f"failed runs: {', '.join(failed)} (errors in {results_path})")


if __name__ == "__main__":
    main()
