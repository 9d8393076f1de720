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

import keras_d2v2
from keras_d2v2.data import FASHION_MNIST_DIR

from conftest import REPO, run_python


def load_benchmark():
    spec = importlib.util.spec_from_file_location("mto_efficiency", REPO / "benchmarks" / "mto_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(variant, seed, knn, seconds, final=None):
    return dict(variant=variant, seed=seed, knn=knn, linear=[a - 0.1 for a in knn], seconds_per_epoch=seconds,
                epoch=list(range(len(knn))), probe_seconds=[1.0] * len(knn), final=final, error=None)


def test_summary_on_known_curves():
    bench = load_benchmark()
    runs = [
        # Baselines at 2E = 4 epochs, MTO at E = 2.
        fake_run("d2v2_tdec", 0, [0.5, 0.6, 0.7, 0.75, 0.8], [2.0] * 4, final={"knn": 0.81, "finetune": 0.7}),
        fake_run("d2v2_tdec", 1, [0.5, 0.62, 0.72, 0.76, 0.78], [2.0] * 4, final={"knn": 0.79, "finetune": 0.72}),
        fake_run("d2v2_tdec+mto", 0, [0.5, 0.7, 0.8], [3.0, 3.0], final={"knn": 0.8, "finetune": 0.73}),
        fake_run("d2v2_tdec+mto", 1, [0.5, 0.68, 0.77], [3.0, 3.0], final={"knn": 0.78, "finetune": 0.7}),
        fake_run("mae", 0, [0.4, 0.5, 0.6, 0.65, 0.7], [1.0] * 4),
        fake_run("mae", 1, [0.4, 0.5, 0.6, 0.65, 0.7], [1.0] * 4),
        dict(variant="full_seq", seed=0, error="RuntimeError: boom"),
    ]
    names = ["d2v2_tdec", "d2v2_tdec+mto", "mae", "full_seq"]
    summary = bench.summarize(runs, names)
    base, mto = summary["d2v2_tdec"], summary["d2v2_tdec+mto"]
    assert summary["full_seq"] == {"seeds": [], "error": "no finished run"}
    assert mto["baseline"] == "d2v2_tdec" and mto["seeds"] == [0, 1] and mto["epochs"] == 2 and base["epochs"] == 4

    # End of run: the final stage's figure where there is one (k-NN, fine-tuning), else the last probe (linear).
    np.testing.assert_allclose(mto["knn"]["end"]["mean"], 0.79)
    np.testing.assert_allclose(mto["linear"]["end"]["values"], [0.7, 0.67])
    np.testing.assert_allclose(mto["knn"]["end_minus_baseline"]["values"], [0.8 - 0.81, 0.78 - 0.79])
    np.testing.assert_allclose(mto["finetune"]["end_minus_baseline"]["values"], [0.03, -0.02], atol=1e-12)
    assert "finetune" not in summary["mae"]
    # The baseline's last probe is 0.79 on average; MTO's mean curve [0.5, 0.69, 0.785] never reaches it,
    # seed 0 (0.8 >= 0.8) does at epoch 2, seed 1 (0.77 < 0.78) does not.
    assert mto["knn"]["baseline_last_probe"] == pytest.approx(0.79)
    assert mto["knn"]["epochs_to_baseline_final"] is None
    assert mto["knn"]["epochs_to_baseline_final_per_seed"] == {"0": 2, "1": None}
    # The area over the epochs both ran (0..2), paired by seed.
    area = lambda c: ((c[0] + c[1]) / 2 + (c[1] + c[2]) / 2) / 2  # noqa: E731
    expected = [area([0.5, 0.7, 0.8]) / area([0.5, 0.6, 0.7]), area([0.5, 0.68, 0.77]) / area([0.5, 0.62, 0.72])]
    np.testing.assert_allclose(mto["knn"]["relative_auc"]["values"], expected)
    assert mto["seconds_per_epoch"]["mean"] == pytest.approx(3.0)
    assert mto["seconds_per_epoch_vs_baseline"] == pytest.approx(1.5)
    assert mto["training_seconds"]["mean"] == pytest.approx(6.0)
    # Baselines at equal training time: mae finished first (4 s); d2v2_tdec after 4 s is at epoch 2.
    table = summary["per_second"]
    assert table["seconds"] == pytest.approx(4.0) and table["seeds"] == [0, 1]
    np.testing.assert_allclose(table["d2v2_tdec"]["knn"]["values"], [0.7, 0.72])
    np.testing.assert_allclose(table["mae"]["knn"]["values"], [0.7, 0.7])
    assert bench.accuracy_at_seconds(runs[0], "knn", 3.0) == pytest.approx(0.65)
    assert bench.accuracy_at_seconds(runs[0], "knn", 9.0) is None
    assert bench.first_epoch_reaching([0.9, 0.1, 0.2], 0.5) is None


def test_settings_and_variants():
    bench = load_benchmark()
    args = bench.parse_args(["--smoke", "--variants", "full_seq,full_seq+mto", "--epochs", "2"])
    assert args.variants == ["full_seq", "full_seq+mto"] and args.seeds == [0] and args.epochs == 2
    assert bench.run_epochs("full_seq", args) == 4 and bench.run_epochs("full_seq+mto", args) == 2
    full = bench.parse_args([])
    assert (full.setting, full.epochs, full.baseline_factor, full.batch_size, full.seeds) == ("full", 4, 2, 64, [0, 1, 2])
    # At least 3,000 updates per run on all of Fashion-MNIST.
    assert full.train_images is None and full.epochs * 60_000 // full.batch_size >= 3000
    assert full.variants == bench.PROTOCOL.split(",")
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "d2v2,nonsense"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick", "--smoke"])
    # Every variant builds (the MTO terms are accepted where each student puts masked tokens).
    for name, kwargs in bench.VARIANTS.items():
        assert keras_d2v2.Data2Vec2.image("tiny_test", seed=0, **kwargs).count_params() > 0, name


def test_missing_matplotlib_fails_before_training(monkeypatch, tmp_path):
    bench = load_benchmark()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    with pytest.raises(SystemExit, match=r"pip install 'keras-d2v2\[bench\]'.*--no-plot"):
        bench.main(["--smoke", "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


def smoke(out, *extra, env=None):
    return run_python([str(REPO / "benchmarks" / "mto_efficiency.py"), "--smoke", "--out", str(out), *extra],
                      env=env or dict(os.environ, KERAS_BACKEND="torch"))


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="runs once, on PyTorch (the benchmark's backend)")
@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_mto_efficiency_smoke_resumes_after_a_kill(tmp_path):
    # The first process is killed after the baseline's first epoch: its state is on disk, no run is finished.
    env = dict(os.environ, KERAS_BACKEND="torch")
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "mto_efficiency.py"), "--smoke", "--out",
                             str(tmp_path), "--no-plot"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        if "d2v2_tdec seed 0 epoch 1/2" in line:
            proc.kill()
            break
    proc.wait(timeout=60)
    assert (tmp_path / "state" / "d2v2_tdec__seed0" / "model_epoch1.keras").exists()
    assert not (tmp_path / "results.json").exists()

    result = smoke(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "d2v2_tdec seed 0: resuming after epoch 1 of 2" in result.stdout
    record = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 0 and not (tmp_path / "state" / "d2v2_tdec__seed0").exists()
    names = ["d2v2_tdec", "d2v2_tdec+mto"]
    assert record["setting"] == "smoke" and list(record["variants"]) == names
    assert [(r["variant"], r["seed"], r["error"]) for r in record["runs"]] == [(n, 0, None) for n in names]
    for run, epochs in zip(record["runs"], (2, 1)):
        assert run["epoch"] == list(range(epochs + 1))
        for key in ("knn", "linear", "probe_seconds"):
            assert len(run[key]) == epochs + 1 and all(math.isfinite(v) for v in run[key])
        assert len(run["seconds_per_epoch"]) == epochs and min(run["seconds_per_epoch"]) > 0
        assert all(0.0 <= a <= 1.0 for a in run["knn"] + run["linear"] + [run["final"]["finetune"]])
        assert all(math.isfinite(v) for v in run["logs"][0].values()) and "loss" in run["logs"][0]
    assert {"singularity_loss", "heterogeneity_loss", "rank_loss"} <= set(record["runs"][1]["logs"][0])
    mto = record["summary"]["d2v2_tdec+mto"]
    assert mto["baseline"] == "d2v2_tdec"
    for metric in ("knn", "linear", "finetune"):
        assert math.isfinite(mto[metric]["end_minus_baseline"]["mean"])
    assert "MTO at E against its baseline at 2E" in result.stdout

    # Run again: everything is finished, nothing is trained; another setting in the same folder is refused.
    again = smoke(tmp_path, "--no-plot")
    assert again.returncode == 0 and "2 runs already in" in again.stdout and "epoch 1" not in again.stdout
    refused = smoke(tmp_path, "--no-plot", "--epochs", "2")
    assert refused.returncode != 0 and "--fresh" in refused.stderr


@pytest.mark.skipif(
    keras.backend.backend() != "torch" and not os.environ.get("KERAS_D2V2_RECIPES_ON_EVERY_BACKEND"),
    reason="runs on PyTorch, to keep CI short (KERAS_D2V2_RECIPES_ON_EVERY_BACKEND=1 runs it on this backend)",
)
def test_train_step_benchmark_on_the_active_backend(tmp_path):
    backend = keras.backend.backend()
    results = tmp_path / "results.jsonl"
    results.write_text('{"earlier": "run"}\n')
    result = run_python(
        [str(REPO / "benchmarks" / "train_step.py"), "--backend", backend, "--config", "tiny", "--steps", "3", "--warmup", "1",
         "--output", str(results)],
        env=dict(os.environ, KERAS_BACKEND=backend),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert results.read_text() == '{"earlier": "run"}\n' + line + "\n"  # appended by replacing the file
    row = json.loads(line)
    assert (row["backend"], row["config"], row["batch"], row["timed_steps"]) == (backend, "tiny", 8, 3)
    # Keras reads the guard's loss on a callback thread where it can (JAX, PyTorch); the figure is
    # then the window's mean, as single steps stamped there jitter.
    assert row["step_ms_is"] == ("median" if backend == "tensorflow" else "mean")
    assert row["samples_per_s"] == pytest.approx(8000 / row["step_ms"], rel=0.01)
    assert math.isfinite(row["loss"]) and row["model_tflops_per_step"] > 0
    assert 0 < row["state_mem_gib"] < row["peak_mem_gib"] and row["peak_mem_mib_per_sample"] > 0


def test_the_final_stage_probes_with_the_whole_bank_when_final_bank_is_none(monkeypatch):
    bench = load_benchmark()
    banks = []
    monkeypatch.setattr(bench, "probe", lambda encoder, bank, test, seed, epochs: banks.append(len(bank[0])) or (0.5, 0.6, 1.0))
    data = {"train": (np.zeros((7, 2)), np.zeros(7, int)), "test": (np.zeros((3, 2)), np.zeros(3, int))}
    model = type("Model", (), {"encoder": None})()
    full = bench.parse_args([])
    full.finetune_labels = 0
    final = bench.final_stage(model, 0, data, full)
    assert banks == [7] and (final["knn"], final["linear"]) == (0.5, 0.6)
    assert bench.final_stage(model, 0, data, bench.parse_args(["--setting", "quick_2026_11"])) is None
