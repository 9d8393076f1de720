"""benchmarks/: mto_efficiency.py's summary arithmetic on known curves and its --smoke mode end to end;
train_step.py on a tiny config."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_d2v2.data import FASHION_MNIST_DIR

from conftest import REPO, run_python


def load_benchmark():
    spec = importlib.util.spec_from_file_location("mto_efficiency", REPO / "benchmarks" / "mto_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(variant, seed, knn, seconds):
    return dict(variant=variant, seed=seed, knn=knn, linear=[a - 0.1 for a in knn], seconds_per_epoch=seconds,
                probe_seconds=[1.0] * len(knn), error=None)


def test_summary_on_known_curves():
    bench = load_benchmark()
    runs = [
        fake_run("visible_only", 0, [0.5, 0.6, 0.7, 0.8], [9.0, 2.0, 2.0]),
        fake_run("visible_only", 1, [0.5, 0.62, 0.72, 0.78], [9.0, 2.0, 2.0]),
        fake_run("visible_only+mto", 0, [0.5, 0.7, 0.8, 0.85], [9.0, 3.0, 3.0]),
        fake_run("visible_only+mto", 1, [0.5, 0.68, 0.77, 0.79], [9.0, 3.0, 3.0]),
        dict(variant="full_sequence", seed=0, error="RuntimeError: boom"),
    ]
    summary = bench.summarize(runs, ["visible_only", "visible_only+mto", "full_sequence"], epochs=3)
    base, mto = summary["visible_only"], summary["visible_only+mto"]
    assert summary["full_sequence"] == {"seeds": [], "error": "no finished run"}

    assert mto["baseline"] == "visible_only" and mto["seeds"] == [0, 1]
    np.testing.assert_allclose(mto["knn"]["final"]["mean"], 0.82)
    np.testing.assert_allclose(mto["knn"]["final"]["std"], np.std([0.85, 0.79], ddof=1))
    np.testing.assert_allclose(mto["knn"]["curve_mean"], [0.5, 0.69, 0.785, 0.82])
    # Baseline final mean 0.79: the MTO mean curve first reaches it at epoch 3 of 3 (0.785 < 0.79 at epoch 2).
    assert mto["knn"]["baseline_final"] == pytest.approx(0.79)
    assert mto["knn"]["epochs_to_baseline_final"] == 3
    assert mto["knn"]["fraction_of_budget"] == pytest.approx(1.0)
    # Paired by seed: seed 0 needs 0.8 (reached at epoch 2), seed 1 needs 0.78 (epoch 3: 0.79).
    assert mto["knn"]["epochs_to_baseline_final_per_seed"] == {"0": 2, "1": 3}
    # The area is the trapezoid over epochs 0..3 divided by 3, and its ratio is paired by seed.
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    area = lambda c: float(trapezoid(c) / 3)  # noqa: E731
    expected = [area([0.5, 0.7, 0.8, 0.85]) / area([0.5, 0.6, 0.7, 0.8]),
                area([0.5, 0.68, 0.77, 0.79]) / area([0.5, 0.62, 0.72, 0.78])]
    np.testing.assert_allclose(mto["knn"]["relative_auc"]["values"], expected)
    assert base["knn"]["relative_auc"]["mean"] == pytest.approx(1.0)
    # Seconds per epoch leave out the first epoch (warm-up); their ratio is to the baseline's.
    assert mto["seconds_per_epoch"]["mean"] == pytest.approx(3.0)
    assert mto["seconds_per_epoch_vs_baseline"] == pytest.approx(1.5)
    # A curve that never reaches the baseline's final accuracy says so.
    assert bench.first_epoch_reaching([0.9, 0.1, 0.2], 0.5) is None


def test_variant_overrides():
    bench = load_benchmark()
    args = bench.parse_args(["--smoke", "--variants", "full_sequence,full_sequence+mto", "--singularity-weight", "0.5",
                             "--entropy-sign", "-1", "--depth-weighting", "deep"])
    assert args.variants == ["full_sequence", "full_sequence+mto"] and args.seeds == [0] and args.epochs == 1
    assert bench.variant_kwargs("full_sequence", args) == bench.VARIANTS["full_sequence"]
    mto = bench.variant_kwargs("full_sequence+mto", args)
    assert (mto["singularity_loss_weight"], mto["entropy_sign"], mto["depth_weighting"]) == (0.5, -1.0, "deep")
    assert mto["entropy_loss_weight"] == bench.VARIANTS["full_sequence+mto"]["entropy_loss_weight"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "visible_only,nonsense"])


def test_missing_matplotlib_fails_before_training(monkeypatch, tmp_path):
    bench = load_benchmark()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    with pytest.raises(SystemExit, match=r"pip install 'keras-d2v2\[bench\]'.*--no-plot"):
        bench.main(["--smoke", "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="runs once, on PyTorch (the benchmark's backend)")
@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_mto_efficiency_smoke(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "mto_efficiency.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 0
    names = ["visible_only", "visible_only+mto"]
    assert record["setting"] == "smoke" and list(record["variants"]) == names
    assert [(r["variant"], r["seed"], r["error"]) for r in record["runs"]] == [(n, 0, None) for n in names]
    for run in record["runs"]:
        assert run["epoch"] == [0, 1]
        for key in ("knn", "linear", "probe_seconds"):
            assert len(run[key]) == 2 and all(math.isfinite(v) for v in run[key])
        assert len(run["seconds_per_epoch"]) == 1 and run["seconds_per_epoch"][0] > 0
        assert all(0.0 <= a <= 1.0 for a in run["knn"] + run["linear"])
        assert all(math.isfinite(v) for v in run["logs"][0].values()) and "loss" in run["logs"][0]
    assert "singularity_loss" in record["runs"][1]["logs"][0]
    mto = record["summary"]["visible_only+mto"]
    assert mto["baseline"] == "visible_only"
    for metric in ("knn", "linear"):
        m = mto[metric]
        for key in ("curve_mean", "curve_std", "final", "auc", "baseline_final", "epochs_to_baseline_final",
                    "epochs_to_baseline_final_per_seed", "relative_auc"):
            assert key in m
        assert all(math.isfinite(v) for v in m["curve_mean"] + m["curve_std"])
        assert math.isfinite(m["final"]["mean"]) and math.isfinite(m["relative_auc"]["mean"])
    assert math.isfinite(mto["seconds_per_epoch"]["mean"]) and math.isfinite(mto["seconds_per_epoch_vs_baseline"])
    assert "Efficiency against the baseline" in result.stdout


@pytest.mark.skipif(
    keras.backend.backend() != "torch" and not os.environ.get("KERAS_D2V2_RECIPES_ON_EVERY_BACKEND"),
    reason="runs on PyTorch, to keep CI short (KERAS_D2V2_RECIPES_ON_EVERY_BACKEND=1 runs it on this backend)",
)
def test_train_step_benchmark_on_the_active_backend():
    backend = keras.backend.backend()
    result = run_python(
        [str(REPO / "benchmarks" / "train_step.py"), "--backend", backend, "--config", "tiny", "--steps", "3", "--warmup", "1"],
        env=dict(os.environ, KERAS_BACKEND=backend),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("{")]
    row = json.loads(line)
    assert (row["backend"], row["config"], row["batch"], row["timed_steps"]) == (backend, "tiny", 8, 3)
    # Keras reads the guard's loss on a callback thread where it can (JAX, PyTorch); the figure is
    # then the window's mean, as single steps stamped there jitter.
    assert row["step_ms_is"] == ("median" if backend == "tensorflow" else "mean")
    assert row["samples_per_s"] == pytest.approx(8000 / row["step_ms"], rel=0.01)
    assert math.isfinite(row["loss"]) and row["model_tflops_per_step"] > 0
    assert 0 < row["state_mem_gib"] < row["peak_mem_gib"] and row["peak_mem_mib_per_sample"] > 0
