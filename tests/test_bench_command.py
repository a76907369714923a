"""``numbaconv bench`` and the benchmark harness :mod:`numbaconv.benchmarks`.

The command runs on tiny shapes (the hidden ``--tiny``) through ``CliRunner`` and prints its
table; every case's numbaconv and PyTorch callables compute the same numbers, so the timings
compare like with like. Each test restores the thread counts the command changes.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from numbaconv import benchmarks as B
from numbaconv.benchmarks import cases, zoo
from numbaconv.cli.bench import bench
from numbaconv.kernels.cpu import simd


@pytest.fixture(autouse=True)
def _restore_threads():
    import importlib.util

    numba_threads = numba.get_num_threads()
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch
    torch_threads = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=None):  # restores the BLAS limits on exit
        yield
    numba.set_num_threads(numba_threads)
    if torch is not None:
        torch.set_num_threads(torch_threads)


def invoke(*args):
    return CliRunner().invoke(bench, [str(a) for a in args])


def table_lines(output: str) -> dict[str, list[str]]:
    """Case name -> the cells of its table row."""
    names = {case.name for case in B.CASES}
    return {cells[0]: cells for cells in (line.split() for line in output.splitlines())
            if cells and cells[0] in names}


def test_quick_tiny_prints_every_case_with_ratios(torch):
    result = invoke("--quick", "--tiny", "--threads", 1)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ratio" in out and "torch ms" in out and "numbaconv ms" in out
    assert "threads 1" in out and f"torch: {torch.__version__}" in out
    rows = table_lines(out)
    assert set(rows) == {case.name for case in B.CASES}
    for case in B.CASES:
        cells = rows[case.name]
        # case, numbaconv ms, torch ms, ratio, best, target (2 cells or "-"), result
        assert cells[3].endswith("x") and float(cells[3][:-1]) > 0, cells
        assert cells[-1] in (("PASS", "FAIL") if case.target else ("-",)), cells
    assert "images/s" in out and "projected full epoch" in out
    assert "LeNet layers <= 1.5x torch" in out
    # the convolutions' GFLOP/s and share of the peak measured on the same thread count
    lanes = simd.VECTOR_BYTES // 4
    assert f"peak (FMA loop, 12 chains of {lanes} float32 lanes)" in out
    assert "GFLOP/s  torch GFLOP/s  % peak  torch % peak" in out
    assert rows["resnet18-96-conv-64to64-3x3s1-fwd"][-4:-1] == [">=", "70%", "peak"]
    assert rows["resnet18-96-conv-64to64-3x3s1-fwd"][7].endswith("%")
    assert rows["resnet18-96-bn-64x48x48-fwdbwd"][5:9] == ["-"] * 4
    assert "ResNet-18 3x3 conv >= 70% of the measured peak" in out


def test_case_filter_and_repeat(torch):
    result = invoke("--tiny", "--case", "conv64-fwd", "--case", "maxpool1-bwd",
                    "--repeat", 2, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "repeat 2" in result.output
    assert set(table_lines(result.output)) == {"conv64-fwd", "conv64-fwdbwd",
                                               "lenet-maxpool1-bwd"}


def test_without_torch_prints_numbaconv_alone(monkeypatch):
    monkeypatch.setattr(B, "import_torch",
                        lambda: (None, "PyTorch is not installed (No module named 'torch')"))
    result = invoke("--tiny", "--case", "lenet-avgpool2", "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "numbaconv times alone" in result.output
    assert "PyTorch is not installed" in result.output
    assert "torch ms" not in result.output and "ratio" not in result.output
    rows = table_lines(result.output)
    assert set(rows) == {"lenet-avgpool2-fwd", "lenet-avgpool2-bwd"}
    assert all(len(cells) == 3 for cells in rows.values())


@pytest.mark.parametrize("args, message", [
    (("--threads", 0), "--threads must be between 1 and"),
    (("--case", "no-such-case"), "no case matches 'no-such-case'"),
])
def test_user_errors(args, message):
    result = invoke("--tiny", *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("case", B.CASES, ids=lambda case: case.name)
def test_case_sides_compute_the_same_numbers(torch, case):
    """Twice in a row (training cases update their weights in between), both sides agree
    (where each draws its own dropout masks, both give finite numbers)."""
    prepared = case.setup("tiny", torch)
    assert prepared.torch is not None and prepared.torch_note is None
    for call in (1, 2):
        ours = B.as_arrays(prepared.numbaconv())
        theirs = B.as_arrays(prepared.torch())
        assert len(ours) == len(theirs) > 0, (case.name, call)
        if not case.same_numbers:
            assert all(np.isfinite(a).all() for a in ours + theirs), (case.name, call)
            continue
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert a.shape == b.shape, (case.name, call, i)
            # float32 sums of thousands of terms: absolute error relative to the largest value
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * scale,
                                       err_msg=f"{case.name} call {call} output {i}")


def test_setup_without_torch_has_no_torch_side():
    prepared = B.CASES_BY_NAME["lenet-conv1-fwd"].setup("tiny", torch=None)
    assert prepared.torch is None and prepared.torch_note
    assert prepared.numbaconv().shape == (4, 6, 28, 28)


def test_full_shapes_are_the_documented_ones():
    """The cases time the shapes docs/performance.md names (checked without running them)."""
    assert cases._conv_shapes("conv1", "full") == ((256, 1, 28, 28), (6, 1, 5, 5), 2, False)
    assert cases._conv_shapes("conv2", "full") == ((256, 6, 14, 14), (16, 6, 5, 5), 0, True)
    assert cases._conv_shapes("conv64", "full") == ((32, 64, 56, 56), (64, 64, 3, 3), 1, True)
    assert cases._pool_shape("1", "full") == (256, 6, 28, 28)
    assert cases._pool_shape("2", "full") == (256, 16, 10, 10)
    assert B.EPOCH_FRACTION["full"] == 1 / 10


def test_resnet18_cases_are_its_distinct_convolutions_and_batch_norms():
    """ResNet-18 at 96x96, batch 64: 20 convolutions of 11 shapes (the first without an input
    gradient), BatchNorm2d inputs of 5 shapes; at 28x28 the same 11 on smaller maps."""
    conv = [(x, w, s, p, need_x, count) for x, w, s, p, need_x, count
            in zoo.resnet18_convs(96)]
    assert conv == [
        ((64, 1, 96, 96), (64, 1, 7, 7), 2, 3, False, 1),
        ((64, 64, 24, 24), (64, 64, 3, 3), 1, 1, True, 4),
        ((64, 64, 24, 24), (128, 64, 3, 3), 2, 1, True, 1),
        ((64, 128, 12, 12), (128, 128, 3, 3), 1, 1, True, 3),
        ((64, 64, 24, 24), (128, 64, 1, 1), 2, 0, True, 1),
        ((64, 128, 12, 12), (256, 128, 3, 3), 2, 1, True, 1),
        ((64, 256, 6, 6), (256, 256, 3, 3), 1, 1, True, 3),
        ((64, 128, 12, 12), (256, 128, 1, 1), 2, 0, True, 1),
        ((64, 256, 6, 6), (512, 256, 3, 3), 2, 1, True, 1),
        ((64, 512, 3, 3), (512, 512, 3, 3), 1, 1, True, 3),
        ((64, 256, 6, 6), (512, 256, 1, 1), 2, 0, True, 1)]
    small = zoo.resnet18_convs(28)
    assert [c[1:] for c in small] == [c[1:] for c in conv]
    assert [c[0][2] for c in small] == [28, 7, 7, 4, 7, 4, 2, 4, 2, 1, 2]
    assert zoo.resnet18_batch_norms(96) == [(64, 64, 48, 48), (64, 64, 24, 24),
                                            (64, 128, 12, 12), (64, 256, 6, 6),
                                            (64, 512, 3, 3)]
    names = {case.name for case in B.CASES}
    for side in (28, 96):
        assert {f"resnet18-{side}-step", f"resnet18-{side}-eval"} <= names
        assert sum(name.startswith(f"resnet18-{side}-conv-") for name in names) == 22
    assert sum("-bn-" in name for name in names) == 5
    assert {f"{name}-{side}-step" for name, side in zoo.ZOO_STEPS.items()} <= names


def test_the_resnet_cases_take_their_inputs_laid_out_as_the_network_gives_them():
    """From ResNet-18's own training step (batch 32 at 28x28, the unrolled kernels' smallest
    batch): the stem and the batch norm after it see NCHW, the 7x7 maps' layers and those
    after them pixel-major, forward and backward."""
    layouts = zoo.network_layouts(28, 32)
    assert layouts[(32, 1, 28, 28), (64, 1, 7, 7), 2] == (False, False)
    assert layouts[(32, 64, 14, 14), None, None] == (False, False)
    assert layouts[(32, 64, 7, 7), (64, 64, 3, 3), 1] == (True, True)
    assert layouts[(32, 64, 7, 7), None, None] == (True, True)
    assert layouts[(32, 256, 2, 2), (512, 256, 3, 3), 2] == (True, True)
    assert len(layouts) == 16  # 11 convolution shapes, 5 batch norm inputs


def test_zoo_steps_take_each_models_recipe_and_say_where_dropout_differs():
    """A zoo step case: D2L's batch and learning rate, the model's defaults (DenseNet: 256,
    0.1); the cases whose sides draw their own dropout masks are those of the networks with
    dropout layers."""
    from numbaconv.layers import Dropout
    from numbaconv.registry import build_model

    full = B.CASES_BY_NAME["densenet-29-step"].setup("full", torch=None)
    assert full.items == 256 and "SGD lr 0.1" in full.detail
    for name, side in zoo.ZOO_STEPS.items():
        options = {"input_size": side} if name in ("alexnet", "vgg11") else {}
        model = build_model(name, **options)
        has_dropout = any(isinstance(layer, Dropout) for _, layer in model.named_layers())
        assert has_dropout == (name in zoo.WITH_DROPOUT), name
        assert B.CASES_BY_NAME[f"{name}-{side}-step"].same_numbers == (not has_dropout)


def test_flops_count_two_per_multiply_add_of_each_pass():
    # conv64: 32 x 64 x 56 x 56 outputs, each 64 x 3 x 3 multiply-adds
    forward = 2 * 32 * 64 * 56 * 56 * 64 * 9
    assert cases.conv_flops((32, 64, 56, 56), (64, 64, 3, 3), 1, 1) == forward
    assert cases.conv_flops((64, 64, 24, 24), (128, 64, 3, 3), 2, 1) == \
        2 * 64 * 128 * 12 * 12 * 64 * 9
    assert B.CASES_BY_NAME["conv64-fwd"].setup("full", torch=None).flops == forward
    assert B.CASES_BY_NAME["conv64-bwd"].setup("full", torch=None).flops == 2 * forward
    assert B.CASES_BY_NAME["conv64-fwdbwd"].setup("full", torch=None).flops == 3 * forward
    # the first layer's backward computes no input gradient: one pass
    first = B.CASES_BY_NAME["resnet18-28-conv-1to64-7x7s2-bwd"].setup("tiny", torch=None)
    assert first.flops == cases.conv_flops((2, 1, 28, 28), (4, 1, 7, 7), 2, 3)


def test_peak_is_an_fma_loop_on_one_and_on_several_threads():
    from numbaconv.benchmarks.peak import CHAINS, fma_loop

    total, flops = fma_loop(1000, np.float32(0))
    lanes = simd.VECTOR_BYTES // 4  # one register: 16 with AVX-512, 8 with AVX2
    assert flops == 2 * CHAINS * lanes * 1000 and np.isfinite(total)
    peak = B.measure_peak(2, seconds=0.002, repeat=1)
    assert peak.lanes == lanes and peak.threads == 2
    assert peak.one_thread > 0 and peak.all_threads > 0
    assert peak.at(1) == peak.one_thread and peak.at(2) == peak.all_threads
    assert "GFLOP/s on 1 thread" in peak.describe() and "on 2 threads" in peak.describe()
    with pytest.raises(ValueError, match="not 3"):
        peak.at(3)


def test_a_peak_target_judges_numbaconvs_share_of_the_peak():
    from numbaconv.benchmarks.targets import CONV3X3_PEAK

    case = B.Case("resnet18-96-conv-x", "op", "", CONV3X3_PEAK, lambda size, torch: None)
    # 1 GFLOP per call in 10 ms: 100 GFLOP/s; torch 20 ms: 50 GFLOP/s
    result = B.CaseResult(case, [0.01] * 3, [0.02] * 3, flops=10**9, peak=125.0)
    assert result.numbaconv_gflops == pytest.approx(100)
    assert result.torch_gflops == pytest.approx(50)
    assert result.peak_fraction == pytest.approx(0.8) and result.verdict == "PASS"
    slow = B.CaseResult(case, [0.02] * 3, [0.01] * 3, flops=10**9, peak=125.0)
    assert slow.peak_fraction == pytest.approx(0.4) and slow.verdict == "FAIL"
    assert B.CaseResult(case, [0.01], [0.02], flops=10**9).verdict == "-"  # no peak measured
    table = B.format_table([result, slow])
    assert "100.0" in table and "80%" in table and "40%" in table
    assert "FAIL  ResNet-18 3x3 conv >= 70% of the measured peak: 1/2 cases, worst " \
           "resnet18-96-conv-x 40% of peak" in B.summary([result, slow])


def test_time_case_interleaves_and_takes_medians():
    calls = []
    prepared = B.Prepared(numbaconv=lambda: calls.append("n"), torch=lambda: calls.append("t"))
    result = B.time_case(B.CASES[0], prepared, repeat=4, min_time=0.0)
    # after one warm-up and one calibration call per side (each sample, the calibration
    # too, starts with an untimed call of its own side)
    timed = calls[6:]
    assert timed == ["n", "n", "t", "t", "t", "t", "n", "n", "n", "n", "t", "t", "t", "t", "n", "n"]
    assert len(result.numbaconv_times) == len(result.torch_times) == 4
    assert result.ratio == pytest.approx(result.numbaconv_median / result.torch_median)


def test_registered_on_the_main_command():
    from numbaconv.cli import cli

    assert "bench" in cli.commands
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output
