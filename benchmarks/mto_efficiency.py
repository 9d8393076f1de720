"""Learning efficiency of masked token optimization (MTO): probe accuracy after every pre-training epoch.

What:      the judgement of MTO in its design (../shared/spec/mto.md, "How MTO is judged"). The tiny
           data2vec 2.0 ViT of recipes/pretrain_image.py (preset `tiny`, same AdamW, warm-up + cosine
           schedule and CLS weight) is pre-trained on Fashion-MNIST for a fixed epoch budget, once per
           variant and seed; before training and after every epoch the frozen student encoder
           (`model.encoder`, mean-pooled final tokens) is probed on the test split: k-NN (k=20, cosine,
           `knn_accuracy`) and a linear probe (`linear_probe_accuracy`, 100 epochs), both with a bank of
           labelled training images. Variants (Data2Vec2 keyword arguments, VARIANTS below):
             visible_only        the reference (masked tokens only at the decoder input, noise-filled)
             visible_only+mto    learnable mask token at the decoder input + data-singularity loss
             full_sequence       learnable mask token in the encoder (SimMIM style), no recalibration,
                                 no MTO loss
             full_sequence+mto   + attention recalibration, singularity loss, attention-entropy loss
           Reports per variant, mean +- std over seeds: final k-NN and linear accuracy; the first epoch
           at which the mean curve reaches the final mean accuracy of its mode's baseline (the paper
           claims MTO gets there in ~half the epochs), also per seed (paired by seed); the area under the
           accuracy-vs-epoch curve (trapezoid over epochs 0..E, divided by E) relative to the baseline's,
           paired by seed; seconds per pre-training epoch (probes excluded; the mean over epochs 2..E,
           so the first epoch's warm-up is left out) and its ratio to the baseline's.
Command:   KERAS_BACKEND=torch .venv/bin/python -u benchmarks/mto_efficiency.py --quick
           (default setting: python benchmarks/mto_efficiency.py, on a GPU)
Settings:  --quick: the first 5,120 training images, 3 epochs of 20 steps (batch 256), probes on 2,000
           test images with a 5,000-image bank, 3 seeds x 4 variants. Default: all 60,000 images, 20 epochs of
           235 steps, probes on the 10,000 test images with the 60,000-image bank, 3 seeds x 4 variants.
           --smoke: 256 images, 1 epoch, 1 seed, the 2 visible_only variants, seconds (the test suite).
           Any setting's numbers can be overridden (--epochs, --train-images, --seeds, --variants,
           --singularity-weight, --entropy-weight, --entropy-sign, --depth-weighting, ...).
Hardware:  --quick: 2 CPU cores, PyTorch (the fastest backend for this model on a CPU). Default: a GPU.
Time:      --quick: 25.8 min measured (2026-11-23, docs/mto.md), as estimated beforehand from these measurements (commit
           c0e1192, Keras 3.15.1, torch 2.13.0 CPU): one visible_only epoch of the quick subset (20 steps)
           15.5 s of training, each probe 5-7 s (features ~4 s, linear probe ~2 s); per training step at
           batch 256: visible_only 0.78-0.89 s, visible_only+mto 0.75 s, full_sequence 1.87 s,
           full_sequence+mto 3.2 s (the entropy term takes the attention probabilities from an explicit
           softmax instead of the fused attention kernel). So one seed
           is ~3 x (16 + 15 + 37 + 64) s of training + 16 probes x ~6 s = ~8 min. On cores shared with
           other work, the same epoch took 130-150 s (32 steps): keep the machine otherwise idle.
           Default setting: not measured (no GPU was available); on this CPU it would be ~26 min per
           epoch of all 4 variants, i.e. ~26 h.
Output:    a plain-text table on stdout; --out (default runs/mto_efficiency/) gets results.json (every
           number: per-run curves, per-epoch logs such as each loss term, seconds, the summary),
           rewritten after every run, and curves.png (k-NN and linear accuracy vs epoch, mean and a
           +-1 std band over seeds per variant; needs matplotlib: pip install 'keras-d2v2[bench]').
Caveat:    MTO as shipped is our reconstruction of the paper's stated mechanisms, not its exact losses.
           --quick trains 60 steps per run, so the EMA teacher (decay 0.999 rising to 0.9999) is still
           mostly its initialization (0.999**60 = 0.94 of it): it checks that the protocol runs and shows
           early trends; the default setting is the measurement.
Data:      `apt-get install dataset-fashion-mnist` (done by `make setup`); nothing is downloaded.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data import load_fashion_mnist, standardize_images  # noqa: E402
from keras_d2v2.evaluation import encoder_features, knn_accuracy, linear_probe_accuracy  # noqa: E402
from keras_d2v2.optimizers import warmup_cosine  # noqa: E402

PRESET = "tiny"
VARIANTS = {
    "visible_only": {},
    "visible_only+mto": {"mask_fill": "token", "singularity_loss_weight": 1.0},
    "full_sequence": {"student_mode": "full_sequence", "attention_recalibration": False},
    "full_sequence+mto": {
        "student_mode": "full_sequence",
        "attention_recalibration": True,
        "singularity_loss_weight": 1.0,
        "entropy_loss_weight": 0.1,
        "entropy_sign": 1.0,
    },
}
SETTINGS = {
    "full": dict(train_images=None, epochs=20, batch_size=256, probe_bank=None, probe_test=None, probe_epochs=100,
                 seeds="0,1,2", variants=",".join(VARIANTS)),
    "quick": dict(train_images=5120, epochs=3, batch_size=256, probe_bank=5000, probe_test=2000, probe_epochs=100,
                  seeds="0,1,2", variants=",".join(VARIANTS)),
    "smoke": dict(train_images=256, epochs=1, batch_size=128, probe_bank=512, probe_test=256, probe_epochs=5,
                  seeds="0", variants="visible_only,visible_only+mto"),
}
METRICS = ("knn", "linear")
MATPLOTLIB_MISSING = (
    "benchmarks/mto_efficiency.py draws its plot with matplotlib, which is not installed: "
    "pip install 'keras-d2v2[bench]' (or -r requirements-dev.txt), or pass --no-plot."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    setting = parser.add_mutually_exclusive_group()
    setting.add_argument("--quick", action="store_true", help="the 2-core CPU setting (under 30 min with PyTorch)")
    setting.add_argument("--smoke", action="store_true", help="seconds, to check that everything runs")
    parser.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--epochs", type=int, help="pre-training epochs (the budget)")
    parser.add_argument("--train-images", type=int, help="pre-train on the first N training images")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--probe-bank", type=int, help="labelled training images (the first N) for both probes")
    parser.add_argument("--probe-test", type=int, help="test images probed (the first N)")
    parser.add_argument("--probe-epochs", type=int, help="epochs of the linear probe's training")
    parser.add_argument("--singularity-weight", type=float, help="overrides singularity_loss_weight where a variant sets it")
    parser.add_argument("--entropy-weight", type=float, help="overrides entropy_loss_weight where a variant sets it")
    parser.add_argument("--entropy-sign", type=float, help="overrides entropy_sign where a variant sets it")
    parser.add_argument("--depth-weighting", choices=("shallow", "uniform", "deep"),
                        help="depth_weighting of the MTO variants (the model's default: shallow)")
    parser.add_argument("--out", default="runs/mto_efficiency", help="folder for results.json and curves.png")
    parser.add_argument("--no-plot", action="store_true", help="skip curves.png (and the matplotlib requirement)")
    args = parser.parse_args(argv)
    args.setting = "quick" if args.quick else "smoke" if args.smoke else "full"
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
    return args


def variant_kwargs(name, args):
    """The variant's Data2Vec2 keyword arguments with the command line's weight overrides applied."""
    kwargs = dict(VARIANTS[name])
    for key, value in (("singularity_loss_weight", args.singularity_weight),
                       ("entropy_loss_weight", args.entropy_weight), ("entropy_sign", args.entropy_sign)):
        if value is not None and key in kwargs:
            kwargs[key] = value
    if args.depth_weighting is not None and name != baseline_of(name):
        kwargs["depth_weighting"] = args.depth_weighting
    return kwargs


def baseline_of(name):
    """The variant without MTO in the same student mode."""
    return name.split("+")[0]


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


def probe(encoder, bank, test, seed, probe_epochs):
    """k-NN and linear-probe accuracy of a frozen encoder, and the seconds they took."""
    start = time.perf_counter()
    bank_features, test_features = encoder_features(encoder, bank[0]), encoder_features(encoder, test[0])
    knn = knn_accuracy(bank_features, bank[1], test_features, test[1], k=20)
    linear = linear_probe_accuracy(bank_features, bank[1], test_features, test[1], seed=seed, epochs=probe_epochs)
    return float(knn), float(linear), time.perf_counter() - start


def pretrain_and_probe(name, kwargs, seed, x_train, bank, test, args):
    """One (variant, seed): probes at init and after every epoch. Returns the run's record."""
    keras.utils.set_random_seed(seed)
    # As recipes/pretrain_image.py: the reference's CLS weight relative to the token loss.
    clones = keras_d2v2.presets.IMAGE_PRESETS[PRESET]["masking"]["clone_batch"]
    cls_loss_weight = 0.01 * 256 / (args.batch_size * clones)
    model = keras_d2v2.Data2Vec2.image(preset=PRESET, seed=seed, cls_loss_weight=cls_loss_weight, **kwargs)
    data = keras_d2v2.ShuffledBatches(x_train, batch_size=args.batch_size, seed=seed)
    steps_per_epoch = len(data)
    steps = args.epochs * steps_per_epoch
    schedule = warmup_cosine(
        args.learning_rate, total_steps=steps, warmup_epochs=args.warmup_epochs, steps_per_epoch=steps_per_epoch
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, beta_1=0.9, beta_2=0.95, weight_decay=0.05, global_clipnorm=4.0)
    )
    run = dict(variant=name, kwargs=kwargs, seed=seed, steps_per_epoch=steps_per_epoch, epoch=[0],
               knn=[], linear=[], seconds_per_epoch=[], probe_seconds=[], logs=[], error=None)
    knn, linear, probe_seconds = probe(model.encoder, bank, test, seed, args.probe_epochs)
    run["knn"].append(knn), run["linear"].append(linear), run["probe_seconds"].append(probe_seconds)
    print(f"  {name} seed {seed} epoch 0 (init): k-NN {100 * knn:.2f}%, linear {100 * linear:.2f}%", flush=True)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        history = model.fit(data, initial_epoch=epoch - 1, epochs=epoch, verbose=0)
        seconds = time.perf_counter() - start
        logs = {k: float(np.asarray(v[-1])) for k, v in history.history.items()}
        knn, linear, probe_seconds = probe(model.encoder, bank, test, seed, args.probe_epochs)
        run["epoch"].append(epoch), run["knn"].append(knn), run["linear"].append(linear)
        run["seconds_per_epoch"].append(seconds), run["probe_seconds"].append(probe_seconds), run["logs"].append(logs)
        terms = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k.endswith("loss"))
        print(f"  {name} seed {seed} epoch {epoch}: k-NN {100 * knn:.2f}%, linear {100 * linear:.2f}%, "
              f"{seconds:.1f} s training + {probe_seconds:.1f} s probes; {terms}", flush=True)
    return run


# ------------------------------------------------------------------------------------------ summary
def spread(values):
    """Mean and std (sample std, ddof=1; 0 for a single value) of a list, with the values."""
    values = [float(v) for v in values]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "values": values}


def auc(curve, epochs):
    """Area under the accuracy-vs-epoch curve over epochs 0..E (trapezoid), divided by E: the mean accuracy."""
    curve = np.asarray(curve, dtype=np.float64)
    return float(np.sum((curve[1:] + curve[:-1]) / 2) / epochs)


def first_epoch_reaching(curve, target):
    """First epoch >= 1 whose accuracy is >= target, or None."""
    for epoch, value in enumerate(curve):
        if epoch >= 1 and value >= target - 1e-12:
            return epoch
    return None


def steady_seconds(run):
    seconds = run["seconds_per_epoch"]
    return float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))


def summarize(runs, names, epochs):
    done = {(r["variant"], r["seed"]): r for r in runs if r["error"] is None}
    summary = {}
    for name in names:
        own = {seed: r for (variant, seed), r in done.items() if variant == name}
        if not own:
            summary[name] = {"seeds": [], "error": "no finished run"}
            continue
        seeds = sorted(own)
        base_name = baseline_of(name)
        base = {seed: r for (variant, seed), r in done.items() if variant == base_name}
        entry = {"seeds": seeds, "baseline": base_name if base else None,
                 "seconds_per_epoch": spread([steady_seconds(own[s]) for s in seeds]),
                 "probe_seconds": spread([np.mean(own[s]["probe_seconds"]) for s in seeds])}
        if base:
            ratio = entry["seconds_per_epoch"]["mean"] / np.mean([steady_seconds(r) for r in base.values()])
            entry["seconds_per_epoch_vs_baseline"] = float(ratio)
        for metric in METRICS:
            curves = np.array([own[s][metric] for s in seeds])
            m = {"curve_mean": curves.mean(0).tolist(),
                 "curve_std": (curves.std(0, ddof=1) if len(seeds) > 1 else np.zeros(curves.shape[1])).tolist(),
                 "final": spread(curves[:, -1]), "auc": spread([auc(c, epochs) for c in curves])}
            if base:
                base_curves = np.array([r[metric] for r in base.values()])
                target = float(base_curves[:, -1].mean())
                reached = first_epoch_reaching(curves.mean(0), target)
                paired = [s for s in seeds if s in base]
                m.update(
                    baseline_final=target,
                    epochs_to_baseline_final=reached,
                    fraction_of_budget=None if reached is None else reached / epochs,
                    epochs_to_baseline_final_per_seed={
                        str(s): first_epoch_reaching(own[s][metric], base[s][metric][-1]) for s in paired
                    },
                    relative_auc=spread([auc(own[s][metric], epochs) / auc(base[s][metric], epochs) for s in paired])
                    if paired else None,
                )
            entry[metric] = m
        summary[name] = entry
    return summary


def percent(stat):
    return f"{100 * stat['mean']:6.2f} ± {100 * stat['std']:.2f}"


def print_tables(summary, names, epochs):
    width = max(len(n) for n in names)
    print(f"\nFinal accuracy after {epochs} epochs, mean ± std over seeds (%), and pre-training seconds per epoch")
    print(f"{'variant':<{width}}  seeds  {'k-NN (k=20)':>15}  {'linear probe':>15}  {'s/epoch':>13}  vs base")
    for name in names:
        entry = summary[name]
        if not entry["seeds"]:
            print(f"{name:<{width}}  {entry['error']}")
            continue
        sec = entry["seconds_per_epoch"]
        vs = entry.get("seconds_per_epoch_vs_baseline")
        print(f"{name:<{width}}  {len(entry['seeds']):>5}  {percent(entry['knn']['final']):>15}  "
              f"{percent(entry['linear']['final']):>15}  {sec['mean']:7.1f} ± {sec['std']:.1f}  "
              f"{'' if vs is None else format(vs, '.2f') + 'x'}")
    print(f"\nEfficiency against the baseline of the same student mode (epoch budget {epochs}): first epoch at which\n"
          "the mean curve reaches the baseline's mean final accuracy (per seed, paired, in brackets; '-' = not\n"
          "reached), and the area under the accuracy-vs-epoch curve relative to the baseline's (mean ± std)")
    print(f"{'variant':<{width}}  {'baseline':<{width}}  {'k-NN: epoch':>22}  {'AUC ratio':>13}  "
          f"{'linear: epoch':>22}  {'AUC ratio':>13}")
    for name in names:
        entry = summary[name]
        if not entry["seeds"] or entry["baseline"] is None:
            continue
        cells = []
        for metric in METRICS:
            m = entry[metric]
            reached = "not reached" if m["epochs_to_baseline_final"] is None else str(m["epochs_to_baseline_final"])
            per_seed = ",".join("-" if e is None else str(e) for e in m["epochs_to_baseline_final_per_seed"].values())
            ratio = m["relative_auc"]
            cells.append(f"{reached + ' [' + per_seed + ']':>22}")
            ratio_text = "" if ratio is None else f"{ratio['mean']:.3f} ± {ratio['std']:.3f}"
            cells.append(f"{ratio_text:>13}")
        print(f"{name:<{width}}  {entry['baseline']:<{width}}  " + "  ".join(cells))
    print("\nAccuracy per epoch, mean ± std over seeds (%); epoch 0 is the initialization")
    for metric in METRICS:
        print(f"{'k-NN' if metric == 'knn' else 'linear':<{width}}  " + "  ".join(f"{e:>13}" for e in range(epochs + 1)))
        for name in names:
            entry = summary[name]
            if entry["seeds"]:
                m = entry[metric]
                print(f"{name:<{width}}  " + "  ".join(
                    f"{100 * mu:6.2f} ± {100 * sd:4.2f}" for mu, sd in zip(m["curve_mean"], m["curve_std"])))


def plot(summary, names, epochs, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per student mode: its baseline dashed, with MTO solid.
    modes = list(dict.fromkeys(baseline_of(name) for name in names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    fig.suptitle(title, fontsize=9)
    for ax, metric, label in zip(axes, METRICS, ("k-NN (k=20, cosine)", "linear probe")):
        for name in names:
            entry = summary[name]
            if not entry["seeds"]:
                continue
            mean, std = np.array(entry[metric]["curve_mean"]), np.array(entry[metric]["curve_std"])
            x = np.arange(len(mean))
            color = f"C{modes.index(baseline_of(name)) % 10}"
            seeds = len(entry["seeds"])
            ax.plot(x, 100 * mean, "--" if name == baseline_of(name) else "-", color=color, marker="o", markersize=3,
                    label=f"{name} ({seeds} seed{'s' if seeds > 1 else ''})")
            ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), color=color, alpha=0.15, linewidth=0)
        ax.set(title=f"{label}, Fashion-MNIST test", xlabel="pre-training epoch", ylabel="top-1 accuracy (%)")
        ax.set_xticks(range(epochs + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path, record):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        sys.exit(MATPLOTLIB_MISSING)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, x_test = standardize_images(x_train), standardize_images(x_test)
    bank = (x_train[: args.probe_bank], y_train[: args.probe_bank])
    test = (x_test[: args.probe_test], y_test[: args.probe_test])
    x_pretrain = x_train[: args.train_images]
    kwargs = {name: variant_kwargs(name, args) for name in args.variants}
    device = device_description()
    print(f"backend {keras.backend.backend()} on {device}; setting {args.setting}: {len(x_pretrain)} pre-training "
          f"images, {args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}; probes: {len(bank[0])}-image "
          f"bank, {len(test[0])} test images, linear probe {args.probe_epochs} epochs", flush=True)
    for name in args.variants:
        print(f"  {name}: {kwargs[name]}")

    record = dict(
        benchmark="mto_efficiency", setting=args.setting, backend=keras.backend.backend(), device=device,
        keras_version=keras.__version__, preset=PRESET,
        config=dict(train_images=len(x_pretrain), epochs=args.epochs, batch_size=args.batch_size,
                    learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs, seeds=args.seeds,
                    probe_bank=len(bank[0]), probe_test=len(test[0]), probe_epochs=args.probe_epochs, knn_k=20),
        variants=kwargs, runs=[], summary={},
    )
    start = time.time()
    # Seeds outer: a run stopped early has every variant for the first seeds.
    for seed in args.seeds:
        for name in args.variants:
            try:
                run = pretrain_and_probe(name, kwargs[name], seed, x_pretrain, bank, test, args)
            except Exception as error:  # record it and go on with the other runs
                print(f"  {name} seed {seed} FAILED: {type(error).__name__}: {error}", flush=True)
                run = dict(variant=name, kwargs=kwargs[name], seed=seed, error=f"{type(error).__name__}: {error}")
            record["runs"].append(run)
            record["summary"] = summarize(record["runs"], args.variants, args.epochs)
            record["wall_seconds"] = time.time() - start
            write_json(results_path, record)

    print_tables(record["summary"], args.variants, args.epochs)
    print(f"\n{len(record['runs'])} runs in {record['wall_seconds'] / 60:.1f} min; wrote {results_path}")
    if not args.no_plot:
        plot_path = os.path.join(args.out, "curves.png")
        config = record["config"]
        title = (f"data2vec 2.0 tiny ViT, {config['train_images']} images x {args.epochs} epochs, batch "
                 f"{args.batch_size}; probes: {config['probe_bank']}-image bank, {config['probe_test']} test images; "
                 f"mean ± std over seeds; {record['backend']} on {record['device']}")
        plot(record["summary"], args.variants, args.epochs, plot_path, title)
        print(f"wrote {plot_path}")
    failed = [f"{r['variant']} seed {r['seed']}" for r in record["runs"] if r["error"] is not None]
    if failed:
        sys.exit(f"failed runs: {', '.join(failed)} (errors in {results_path})")


if __name__ == "__main__":
    main()
