"""The numbaconv command line: runs, checkpoints, metrics, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_data import write_tiny_dataset

from numbaconv.cli import cli

FAST = ["--epochs", "1", "--batch-size", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_tiny_dataset(tmp_path_factory.mktemp("tiny"), 256, 128))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, pattern):
    """Exit status 1, one 'Error: ...' line matching ``pattern``, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"traceback: {result.exception!r}"
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    assert __import__("re").search(pattern, lines[-1]), lines[-1]


def test_run_prints_epochs_and_writes_metrics_and_checkpoint(data_dir, tmp_path):
    metrics, saved = tmp_path / "m.jsonl", tmp_path / "lenet.npz"
    result = invoke("run", "lenet", "--data", data_dir, "--epochs", "2", "--batch-size", "64",
                    "--lr", "0.1", "--metrics", metrics, "--save", saved, "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.output and "examples/s" in result.output
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "train_acc", "test_acc", "train_seconds",
            "examples_per_sec"} <= set(rows[0])

    evaluated = invoke("evaluate", saved, "--data", data_dir)
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.output.strip().splitlines()[-1] == f"test_acc {rows[-1]['test_acc']:.4f}"


def test_same_seed_same_metrics_through_the_cli(data_dir, tmp_path):
    outputs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        assert invoke("run", "lenet", "--data", data_dir, *FAST, "--seed", "7",
                      "--metrics", path).exit_code == 0
        outputs.append([{k: v for k, v in json.loads(line).items() if "sec" not in k}
                        for line in path.read_text().splitlines()])
    assert outputs[0] == outputs[1]


def test_resume_continues_to_the_uninterrupted_result(data_dir, tmp_path):
    common = ["--data", data_dir, "--batch-size", "64", "--threads", "1", "-o",
              "activation=relu", "--optimizer", "adam", "--lr", "0.003"]
    straight, half = tmp_path / "straight.npz", tmp_path / "half.npz"
    assert invoke("run", "lenet", *common, "--epochs", "2", "--save", straight).exit_code == 0
    assert invoke("run", "lenet", *common, "--epochs", "1", "--save", half).exit_code == 0
    resumed = invoke("run", "lenet", *common, "--epochs", "2", "--resume", half, "--save", half)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output and "epoch 1/2" not in resumed.output
    with np.load(straight) as a, np.load(half) as b:
        for key in a.files:
            if key.startswith("param/"):
                np.testing.assert_array_equal(a[key], b[key])


def test_resume_from_another_architecture_is_refused(data_dir, tmp_path):
    saved = tmp_path / "relu.npz"
    assert invoke("run", "lenet", "--data", data_dir, *FAST, "-o", "activation=relu",
                  "--save", saved).exit_code == 0
    assert_user_error(invoke("run", "lenet", "--data", data_dir, *FAST, "--resume", saved),
                      "another architecture")


def test_spec_file_trains(data_dir, tmp_path):
    spec = tmp_path / "net.toml"
    spec.write_text('layers = [\n'
                    '  {type = "Conv2d", in_channels = 1, out_channels = 4, kernel_size = 3},\n'
                    '  {type = "ReLU"}, {type = "MaxPool2d", kernel_size = 2},\n'
                    '  {type = "Flatten"},\n'
                    '  {type = "Linear", in_features = 676, out_features = 10},\n]\n')
    result = invoke("run", spec, "--data", data_dir, *FAST, "--lr", "0.05")
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output
    assert invoke("summary", spec).exit_code == 0


@pytest.mark.parametrize("layers, pattern", [
    ('[{type = "Conv3d", in_channels = 1, out_channels = 2, kernel_size = 3}]',
     r"layer 0: unknown layer type 'Conv3d'.*Conv2d"),
    ('[{type = "Conv2d", in_channels = 1, out_channels = 2, kernel_size = 3}, '
     '{type = "Flatten"}, {type = "Linear", in_features = 100, out_features = 10}]',
     r"layer 2 \(Linear\): expects 100 input features"),
    ('[{type = "Conv2d", in_channels = 3, out_channels = 2, kernel_size = 3}]',
     r"layer 0 \(Conv2d\)"),
    ('[{type = "Flatten"}]', r"needs \(N, 10\)"),
    ('[{type = "Conv2d", in_channels = 1}]', r"layer 0 \(Conv2d\)"),
])
def test_bad_specs_are_reported_before_training(tmp_path, layers, pattern):
    spec = tmp_path / "bad.toml"
    spec.write_text(f"layers = {layers}\n")
    assert_user_error(invoke("run", spec, "--data", "/nonexistent"), pattern)


def test_unreadable_spec(tmp_path):
    spec = tmp_path / "broken.toml"
    spec.write_text("layers = [\n")
    assert_user_error(invoke("run", spec), "cannot read spec")
    assert_user_error(invoke("run", tmp_path / "missing.toml"), "does not exist")


@pytest.mark.parametrize("args, pattern", [
    (["run", "resnet"], r"unknown model 'resnet'; known models: .*lenet"),
    (["run", "lenet", "--lr", "0"], "lr must be a positive number"),
    (["run", "lenet", "--lr", "-1"], "lr must be a positive number"),
    (["run", "lenet", "--epochs", "0"], "epochs must be a positive integer"),
    (["run", "lenet", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["run", "lenet", "-o", "activation=gelu"], "activation must be one of"),
    (["run", "lenet", "-o", "oops"], "KEY=VALUE"),
    (["run", "lenet", "--threads", "0"], "--threads must be between"),
    (["evaluate", "/nonexistent/lenet.npz"], "does not exist"),
])
def test_user_errors_are_one_line(args, pattern):
    assert_user_error(invoke(*args), pattern)


def test_missing_and_corrupt_data(tmp_path, data_dir):
    assert_user_error(invoke("run", "lenet", "--data", tmp_path / "empty", *FAST),
                      str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    write_tiny_dataset(broken, 64, 32)
    images = broken / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    assert_user_error(invoke("run", "lenet", "--data", broken, *FAST),
                      "train-images-idx3-ubyte")


def test_nan_loss_stops_with_advice(data_dir):
    result = invoke("run", "lenet", "--data", data_dir, *FAST, "--lr", "1e9", "-o",
                    "activation=relu")
    assert_user_error(result, r"epoch 1, batch \d+.*lower learning rate")


def test_corrupt_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert_user_error(invoke("evaluate", bad), "not a numbaconv checkpoint")


def test_registry_listings():
    assert "Conv2d" in invoke("layers").output
    assert "lenet" in invoke("models").output
    assert "numbaconv.registry.builtin" in invoke("plugins").output
    summary = invoke("summary", "lenet").output
    assert "61,706" in summary and "16x16" in summary


def test_module_entry_point_and_help():
    out = subprocess.run([sys.executable, "-m", "numbaconv", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("run", "evaluate", "layers", "models", "plugins", "summary"):
        assert command in out


@pytest.mark.parametrize("model", ["lenet-bn", "lenet-lrn"])
def test_batch_norm_and_the_example_plugin_models_train_from_the_cli(data_dir, tmp_path, model):
    if model not in invoke("models").output:  # lenet-lrn comes with the example plugin
        if os.environ.get("CI"):  # CI installs it: there, its absence is a failure
            pytest.fail("the example plugin numbaconv-lrn is not installed")
        pytest.skip("the example plugin numbaconv-lrn is not installed")
    saved = tmp_path / "bn.npz"
    result = invoke("run", model, "--data", data_dir, *FAST, "--save", saved)
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output
    evaluated = invoke("evaluate", saved, "--data", data_dir)
    assert evaluated.exit_code == 0, evaluated.output
    reported = float(result.output.split("test_acc ")[1].split()[0])
    assert evaluated.output.strip().endswith(f"test_acc {reported:.4f}")  # running stats saved


def test_resume_takes_its_settings_from_the_checkpoint(data_dir, tmp_path):
    saved = tmp_path / "adam.npz"
    first = ["--data", data_dir, "--batch-size", "64", "--threads", "1", "--optimizer", "adam",
             "--lr", "0.003"]
    assert invoke("run", "lenet", *first, "--epochs", "1", "--save", saved).exit_code == 0
    resumed = invoke("run", "lenet", "--data", data_dir, "--threads", "1", "--epochs", "2",
                     "--resume", saved)
    assert resumed.exit_code == 0, resumed.output
    assert "adam lr 0.003, batch 64" in resumed.output and "epoch 2/2" in resumed.output
    # without --save, the resumed run went on saving to the checkpoint it resumed
    assert f"wrote {saved} (checkpoint after epoch 2)" in resumed.output
    assert_user_error(invoke("run", "lenet", "--data", data_dir, "--epochs", "3", "--lr", "0.5",
                             "--resume", saved), r"--lr would change them")
    assert_user_error(invoke("run", "lenet", "--data", data_dir, "--epochs", "2",
                             "--resume", saved), r"already at epoch 2; ask for more")
    elsewhere = tmp_path / "branch.npz"
    branched = invoke("run", "lenet", "--data", data_dir, "--threads", "1", "--epochs", "3",
                      "--resume", saved, "--save", elsewhere)
    assert branched.exit_code == 0, branched.output
    from numbaconv.checkpoint import load

    assert load(saved).epoch == 2 and load(elsewhere).epoch == 3


def test_output_folders_are_made_or_refused_before_training(data_dir, tmp_path):
    metrics = tmp_path / "new" / "folder" / "m.jsonl"
    assert invoke("run", "lenet", "--data", data_dir, *FAST, "--metrics", metrics).exit_code == 0
    assert metrics.exists()
    result = invoke("run", "lenet", "--data", data_dir, *FAST, "--save", "/dev/null/x.npz")
    assert_user_error(result, r"--save /dev/null/x.npz: cannot create the folder")
    assert "epoch 1" not in result.output


def test_a_bare_npy_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    assert_user_error(invoke("evaluate", path), "not a numbaconv checkpoint")


def test_a_float64_spec_is_refused_before_training(tmp_path):
    spec = tmp_path / "f64.toml"
    spec.write_text('layers = [{type = "Flatten"}, '
                    '{type = "Linear", in_features = 784, out_features = 10, dtype = "float64"}]\n')
    assert_user_error(invoke("run", spec, "--data", "/nonexistent"),
                      r"parameter 1.weight has dtype float64")


def test_run_says_what_it_wrote(data_dir, tmp_path):
    saved, metrics = tmp_path / "a.npz", tmp_path / "m.jsonl"
    result = invoke("run", "lenet", "--data", data_dir, *FAST, "--save", saved,
                    "--metrics", metrics)
    assert result.exit_code == 0, result.output
    assert f"wrote {saved} (checkpoint after epoch 1)" in result.output
    assert f"wrote {metrics} (metrics after epoch 1)" in result.output


@pytest.mark.parametrize("extra, pattern", [
    (["--save", "{d}/x.npz", "--metrics", "{d}/x.npz"], r"--save and --metrics both name"),
    (["--metrics", "{d}/sub/../x.png", "--plot", "{d}/x.png"], r"--metrics and --plot both"),
    (["--save", "{data}/train-images-idx3-ubyte"], r"would overwrite the data file"),
    (["--save", "/proc/x.npz"], r"^Error: --save /proc/x.npz: cannot write there"),
])
def test_outputs_that_cannot_work_are_refused_before_training(data_dir, tmp_path, extra,
                                                              pattern):
    args = [a.format(d=tmp_path, data=data_dir) for a in extra]
    result = invoke("run", "lenet", "--data", data_dir, *FAST, *args)
    assert_user_error(result, pattern)
    assert "epoch 1" not in result.output and not (tmp_path / "x.npz").exists()


def test_a_diverged_last_step_is_an_error_and_saves_nothing(data_dir, tmp_path):
    saved = tmp_path / "bad.npz"
    # one step, whose loss is finite, and an update that leaves the weights infinite
    result = invoke("run", "lenet", "--data", data_dir, "--epochs", "1", "--batch-size", "512",
                    "--optimizer", "adam", "--lr", "3e38", "--threads", "1", "--save", saved)
    assert_user_error(result, r"became NaN or infinite at epoch 1")
    assert not saved.exists()
    assert_user_error(invoke("run", "lenet", "--data", data_dir, *FAST, "--lr", "1e300"),
                      r"lr 1e\+300 is outside what float32 weights can use")


def test_a_spec_carries_its_training_settings_and_a_stuck_run_says_so(data_dir, tmp_path):
    spec = tmp_path / "net.toml"
    spec.write_text('layers = [{type = "Flatten"}, '
                    '{type = "Linear", in_features = 784, out_features = 10}]\n'
                    '[train]\noptimizer = "adam"\nlr = 0.002\nbatch_size = 32\nepochs = 1\n')
    result = invoke("run", spec, "--data", data_dir, "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "adam lr 0.002, batch 32, 1 epochs" in result.output
    stuck = invoke("run", spec, "--data", data_dir, "--threads", "1", "--optimizer", "sgd",
                   "--lr", "1e-30")
    assert stuck.exit_code == 0, stuck.output
    assert "has not moved from chance" in stuck.output


@pytest.mark.parametrize("layers, pattern", [
    ('{type = "Flatten"}, {type = "Linear", in_features = 784, out_features = 1000000000}',
     r"a parameter of shape \(1000000000, 784\) would take 2.9 TiB, more than this machine"),
    ('{type = "Conv2d", in_channels = 1, out_channels = 1, kernel_size = 3, '
     'stride = 100000000000000000000}', r"stride must be at most 2147483647"),
    ('{type = "Conv2d", in_channels = 1, out_channels = 60000, kernel_size = 1}, '
     '{type = "AvgPool2d", kernel_size = 28}, {type = "Flatten"}, '
     '{type = "Linear", in_features = 60000, out_features = 10}',
     r"training this network with batches of 256 would take"),
])
def test_absurd_sizes_are_one_line_errors_before_allocating(tmp_path, layers, pattern):
    spec = tmp_path / "big.toml"
    spec.write_text(f"layers = [{layers}]\n")
    assert_user_error(invoke("run", spec, "--data", "/nonexistent"), pattern)
    assert_user_error(invoke("run", "lenet", "-o", f"num_classes={10 ** 12}",
                             "--data", "/nonexistent"), r"must be at most 2147483647")


def test_progress_eta_comes_from_the_steady_batches():
    from numbaconv.training.callbacks import eta_seconds

    # the first batch of 256 took 20 s (compiling), the next 9 took 1 s
    assert eta_seconds(2560, 60000, 256, first_done_at=20.0, now=21.0) == \
        pytest.approx((60000 - 2560) * 1.0 / (2560 - 256))
    assert eta_seconds(256, 60000, 256, first_done_at=20.0, now=20.0) is None


def _readme_toml_blocks():
    import re

    from support import REPO_ROOT

    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as handle:
        return re.findall(r"```toml\n(.*?)```", handle.read(), re.S)


def test_the_readme_resnet_spec_trains_from_the_cli(data_dir, tmp_path):
    spec = tmp_path / "resnet.toml"
    spec.write_text(next(b for b in _readme_toml_blocks() if "Residual" in b))
    result = invoke("run", spec, "--data", data_dir, "--epochs", "1", "--batch-size", "64",
                    "--optimizer", "adam", "--lr", "0.003", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output
    summary = invoke("summary", spec)
    assert summary.exit_code == 0 and "2.body.0" in summary.output, summary.output


FULL_SET = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FULL_SET) and not os.environ.get("CI"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_the_readme_spec_learns_with_its_own_settings(tmp_path):
    spec = tmp_path / "my-net.toml"
    spec.write_text(next(b for b in _readme_toml_blocks() if "[train]" in b))
    metrics = tmp_path / "m.jsonl"
    result = invoke("run", spec, "--data", FULL_SET, "--metrics", metrics)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["test_acc"] >= 0.80, rows


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc") or (os.cpu_count() or 1) < 2,
                    reason="needs /proc and two cores (precompile starts a child per core)")
def test_sigterm_while_compiling_leaves_no_child_running(data_dir, tmp_path):
    import signal
    import time

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    run = subprocess.Popen([sys.executable, "-m", "numbaconv", "run", "lenet", "--data",
                            data_dir, "--epochs", "1"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "compiling" in run.stderr.readline()  # precompile's announcement
        children, deadline = set(), time.monotonic() + 60
        while not children and time.monotonic() < deadline and run.poll() is None:
            children = _children(run.pid)
            time.sleep(0.05)
        assert children, "precompile started no child process"
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "a compiling child outlived the run"
    assert run.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert not list(tmp_path.glob("**/*.part"))
