"""Compiling a model's kernels ahead of training (``numbaconv.precompile``).

The signatures it compiles must be the ones real calls use (else a run would compile every
kernel twice); a child process's compilation must reach the parent through the on-disk cache.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from support import REPO_ROOT

from numbaconv import precompile as P
from numbaconv.models import lenet

# a convolution with few weights (LeNet's first, 6 x 25) takes conv2d_weight_grad_rows
CONV_KERNELS = ["conv2d_forward", "conv2d_forward_lanes", "conv2d_weight_grad_rows",
                "conv2d_weight_grad_lanes", "conv2d_input_grad_lanes"]

# A tree of containers within containers, for inputs of TREE_INPUT: the column kernels (24 and
# 40 output channels: not whole blocks of the output-channel kernels), the flat
# ones (the Concat's 1x1 convolution) and a nested fused stage (one-pass forward, column
# backward). Source text, for the subprocesses below too.
TREE = textwrap.dedent("""
    from numbaconv.layers import Concat, Conv2d, MaxPool2d, ReLU, Residual, Sequential

    def tree():
        return Sequential(
            Residual([Conv2d(32, 40, 3, padding=1, rng=0)], Conv2d(32, 40, 1, rng=1)), ReLU(),
            Conv2d(40, 24, 3, stride=2, padding=1, rng=2),
            Concat([Conv2d(24, 8, 1, rng=3)], [MaxPool2d(3, stride=1, padding=1)]),
            Sequential(Conv2d(32, 40, 3, padding=1, rng=4), ReLU(), MaxPool2d(2)))

    # padded for the Residual's 3x3 convolution, a million values: the parallel padding
    TREE_INPUT = (8, 32, 62, 62)
""")
_TREE_NAMES: dict = {}
exec(TREE, _TREE_NAMES)
tree, TREE_INPUT = _TREE_NAMES["tree"], _TREE_NAMES["TREE_INPUT"]

# Stride-1 convolutions on 8x8 maps for inputs of CHANNELS_INPUT: the output-channel kernels
# (numbaconv.kernels.cpu.conv.channels) for the first's forward and weight gradient (64 output
# channels) and for the second's input gradient (a convolution whose output channels are the
# layer's 64 input channels); the second's forward and weight gradient on the flat kernels.
CHANNELS = textwrap.dedent("""
    from numbaconv.layers import Conv2d, ReLU, Sequential

    def channels():
        return Sequential(Conv2d(16, 64, 3, padding=1, rng=0), ReLU(),
                          Conv2d(64, 16, 3, padding=1, rng=1))

    CHANNELS_INPUT = (2, 16, 8, 8)
""")
exec(CHANNELS, _TREE_NAMES)
channels, CHANNELS_INPUT = _TREE_NAMES["channels"], _TREE_NAMES["CHANNELS_INPUT"]


@pytest.mark.parametrize("activation, pool", [("sigmoid", "avg"), ("relu", "max")])
@pytest.mark.parametrize("fuse", [True, False])
def test_kernels_for_lenet(activation, pool, fuse):
    model = lenet(activation, pool, rng=0)
    model.fuse = fuse
    names = P.kernels_for(model)
    # fused: the conv/act/pool stages call the fused kernels, not the pool's
    expected = CONV_KERNELS + ["conv2d_weight_grad"]  # conv2's, 16 x 150 weights
    # (the one-pass forward on both layouts), and conv1's stage its backward in one pass (no
    # input gradient)
    expected += ([f"conv2d_{activation}_{pool}_pool_forward",
                  f"conv2d_{activation}_{pool}_pool_forward_lanes",
                  f"{activation}_{pool}_pool_forward", f"{activation}_{pool}_pool_backward",
                  f"conv2d_{activation}_{pool}_pool_backward_lanes",
                  f"conv2d_{activation}_{pool}_pool_weight_grad"] if fuse else
                 [f"{pool}_pool2d_forward", f"{pool}_pool2d_backward"])
    # the dense layers' products: for a batch of any size, the weight gradient's packed one too
    expected += ["matmul_acc", "packed_matmul_acc"]
    if activation == "sigmoid":  # the dense layers' sigmoids (and conv's when unfused)
        expected += ["sigmoid_forward", "sigmoid_backward"]
    assert sorted(names) == sorted(expected)
    assert set(names) <= set(P.KERNELS)


def _check_signatures(model, x):
    """A training step of ``model`` on x; then every kernel kernels_for lists for x's shape,
    and its job, must have been compiled for the signature precompile compiles it for."""
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y), need_input_grad=False)
    for name in P.kernels_for(model, x.shape):  # what this shape calls, with these types
        for unit in P.units(name):  # and its job (the shared functions: below)
            if unit not in P.SHARED:
                compiled = [tuple(sig) for sig in P._dispatcher(unit).signatures]
                assert P.signature(unit, np.float32) in compiled, (unit, compiled)


@pytest.mark.parametrize("activation, pool", [("sigmoid", "avg"), ("relu", "max")])
@pytest.mark.parametrize("fuse", [True, False])
def test_signatures_are_those_of_real_calls(activation, pool, fuse):
    model = lenet(activation, pool, rng=0)
    model.fuse = fuse
    # a batch that fills the lanes (numbaconv.kernels.cpu.conv.use_lanes): conv2 takes them
    _check_signatures(model, np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32))


def test_signatures_of_the_column_kernels_are_those_of_real_calls():
    model = tree()
    assert {"conv2d_forward_columns", "conv2d_weight_grad_columns", "conv2d_input_grad_columns",
            "_place_planes"} <= set(P.kernels_for(model, TREE_INPUT))
    _check_signatures(model, np.random.default_rng(0).random(TREE_INPUT, dtype=np.float32))


def test_signatures_of_the_pointwise_kernels_are_those_of_real_calls():
    from numbaconv.layers import Conv2d, ReLU, Sequential

    model = Sequential(Conv2d(16, 24, 3, padding=1, rng=0), ReLU(), Conv2d(24, 32, 1, rng=1))
    assert {"conv2d_forward_pointwise", "conv2d_weight_grad_pointwise", "transpose_samples",
            "channel_sums"} <= set(P.kernels_for(model, (4, 16, 8, 8)))
    _check_signatures(model, np.random.default_rng(0).random((4, 16, 8, 8), dtype=np.float32))


def test_signatures_of_the_winograd_kernels_are_those_of_real_calls():
    """A 3x3 layer at stride 1 on 14x14 (49 tiles a sample) after another: Winograd's
    forward, input gradient and weight gradient."""
    from numbaconv.layers import Conv2d, ReLU, Sequential

    model = Sequential(Conv2d(32, 32, 3, padding=1, rng=0), ReLU(),
                       Conv2d(32, 32, 3, padding=1, rng=1))
    shape = (2, 32, 14, 14)
    assert {"transform_weights", "conv2d_forward_winograd", "conv2d_weight_grad_winograd",
            "channel_sums"} <= set(P.kernels_for(model, shape))
    _check_signatures(model, np.random.default_rng(0).random(shape, dtype=np.float32))


@pytest.mark.parametrize("side, products", [
    (2, {"_pair_products_in_place"}),  # 2x2 maps: the forward reads the weights in place
    (3, {"_live_weights"}),  # rearranged
])
def test_signatures_of_the_unrolled_kernels_are_those_of_real_calls(side, products):
    from numbaconv.layers import Conv2d, ReLU, Sequential

    model = Sequential(Conv2d(32, 40, 3, padding=1, rng=0), ReLU(),
                       Conv2d(40, 40, 3, padding=1, rng=1))
    shape = (32, 32, side, side)  # a batch the unrolled kernels take
    assert products | {"swap_outer", "transpose_pixels", "_pair_products", "_taps_gradient",
                       "channel_sums", "_live_weights_transposed"} <= set(
        P.kernels_for(model, shape))
    _check_signatures(model, np.random.default_rng(0).random(shape, dtype=np.float32))


def test_signatures_of_the_output_channel_kernels_are_those_of_real_calls():
    model = channels()
    assert {"conv2d_forward_channels", "conv2d_weight_grad_channels"} <= set(
        P.kernels_for(model, CHANNELS_INPUT))
    _check_signatures(model, np.random.default_rng(0).random(CHANNELS_INPUT, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_optimizers_kernels_and_their_signatures_are_those_of_real_calls(dtype):
    """A 400 x 120 weight (LeNet's) is over a chunk: SGD's parallel update too on 2 threads,
    the serial one for the bias; Adam calls no kernel."""
    from numbaconv.layers import Linear, Sequential
    from numbaconv.optim import SGD
    from numbaconv.threads import set_threads

    model = Sequential([Linear(400, 120, rng=0, dtype=dtype)])
    assert P.optimizer_kernels(model, "adam") == [] and P.optimizer_kernels(model, None) == []
    set_threads(2)
    try:
        assert P.optimizer_kernels(model, "sgd") == ["_sgd_into", "_sgd_parallel"]
        params = model.named_params()
        SGD(params, lr=0.1, momentum=0.9).step({k: np.ones_like(v) for k, v in params.items()})
    finally:
        set_threads(None)
    for name in ("_sgd_into", "_sgd_parallel"):
        compiled = [tuple(sig) for sig in P._dispatcher(name).signatures]
        assert P.signature(name, dtype) in compiled, (name, compiled)


@pytest.mark.parametrize("unit", ["conv2d_forward_columns", "job:conv2d_input_grad_columns",
                                  "_place_planes", "conv2d_weight_grad_channels",
                                  "job:conv2d_forward_channels"])
def test_a_wrong_signature_is_found(monkeypatch, unit):
    signature = P.signature
    wrong = {"conv2d_forward_columns": -2, "job:conv2d_input_grad_columns": 3,
             "_place_planes": 2, "conv2d_weight_grad_channels": 3,
             "job:conv2d_forward_channels": 4}[unit]  # an argument whose type becomes another's

    def with_a_wrong_type(name, dtype):
        types = list(signature(name, dtype))
        if name == unit:
            types[wrong] = types[0]
        return tuple(types)

    monkeypatch.setattr(P, "signature", with_a_wrong_type)
    model, shape = (channels(), CHANNELS_INPUT) if "channels" in unit else (tree(), TREE_INPUT)
    with pytest.raises(AssertionError, match=unit):
        _check_signatures(model, np.random.default_rng(0).random(shape, dtype=np.float32))


SHARED_CALLS = TREE + CHANNELS + textwrap.dedent('''
    import numpy as np
    from numbaconv import precompile as P
    from numbaconv.losses import softmax_cross_entropy
    from numbaconv.models import lenet

    model = lenet("sigmoid", "avg", rng=0)
    shared = set()
    for batch in (64, 1):  # conv2 on the lanes kernels, then on the padded-width ones
        x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
        loss, grad = softmax_cross_entropy(model.forward(x, training=True), np.arange(batch) % 10)
        model.backward(grad, need_input_grad=False)
        shared |= {unit for name in P.kernels_for(model, x.shape) for unit in P.units(name)
                   if unit in P.SHARED}
    for model, shape in ((tree(), TREE_INPUT), (channels(), CHANNELS_INPUT)):  # the column
        # kernels, the output-channel ones
        y = model.forward(np.random.default_rng(0).random(shape, dtype=np.float32),
                          training=True)
        model.backward(np.ones_like(y), need_input_grad=False)
        shared |= {unit for name in P.kernels_for(model, shape) for unit in P.units(name)
                   if unit in P.SHARED}
    for unit in sorted(shared):
        compiled = [tuple(sig) for sig in P._dispatcher(unit).signatures]
        print(unit, P.signature(unit, np.float32) in compiled)
''')


def test_shared_functions_signatures_are_those_of_real_calls(tmp_path):
    # with an empty cache, so that the calls compile the shared functions in this process
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", SHARED_CALLS], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()[::2]) == sorted(P.SHARED)  # each shared function called
    assert set(out.stdout.split()[1::2]) == {"True"}, out.stdout


def test_each_task_is_claimed_once(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(P, "_dispatcher", lambda name: type(
        "Fake", (), {"compile": staticmethod(lambda sig: compiled.append(name))}))
    tasks = [("conv2d_forward", "float32"), ("sigmoid_forward", "float32"),
             ("sigmoid_forward", "float64")]
    P.compile_kernels(tasks[1:2], str(tmp_path))  # another process took this one
    compiled.clear()
    P.compile_kernels(tasks, str(tmp_path))
    assert compiled == ["conv2d_forward", "sigmoid_forward"]  # the float64 one is unclaimed
    P.compile_kernels(tasks, str(tmp_path))
    assert compiled == ["conv2d_forward", "sigmoid_forward"]  # nothing left
    P.compile_kernels(tasks)  # without a claims folder: everything
    assert len(compiled) == 5


class _FakeChild:
    def __init__(self, events):
        self.events = events
        events.append("start child")

    def kill(self):
        self.events.append("kill child")

    def wait(self):
        self.events.append("wait child")


def _fake_processes(monkeypatch, cached):
    events = []
    monkeypatch.setattr(P, "is_cached", lambda name, dtype: cached)
    monkeypatch.setattr(P.subprocess, "Popen", lambda *args, **kwargs: _FakeChild(events))
    monkeypatch.setattr(P, "compile_kernels", lambda tasks, claims=None: events.append("compile"))
    return events


def test_meanwhile_runs_while_the_children_compile(monkeypatch):
    events = _fake_processes(monkeypatch, cached=False)
    model = lenet("sigmoid", "avg", rng=0)
    assert P.precompile(model, processes=2, meanwhile=lambda: events.append("meanwhile")) > 0
    assert events == ["start child", "meanwhile", "compile", "wait child"]


def test_meanwhile_runs_when_everything_is_cached(monkeypatch):
    events = _fake_processes(monkeypatch, cached=True)
    model = lenet("sigmoid", "avg", rng=0)
    assert P.precompile(model, processes=2, meanwhile=lambda: events.append("meanwhile")) == 0
    assert events == ["meanwhile"]


def test_a_failing_meanwhile_stops_the_children(monkeypatch):
    events = _fake_processes(monkeypatch, cached=False)

    def fail():
        raise ValueError("no data here")

    with pytest.raises(ValueError, match="no data here"):
        P.precompile(lenet("sigmoid", "avg", rng=0), processes=2, meanwhile=fail)
    assert events == ["start child", "kill child", "wait child"]


SCRIPT = textwrap.dedent("""
    import numpy as np
    from numbaconv import precompile as P
    from numbaconv.layers import MaxPool2d, Sigmoid
    from numbaconv.layers import Sequential

    model = Sequential([Sigmoid(), MaxPool2d(2)])
    names = P.kernels_for(model)
    assert not any(P.is_cached(n, np.float32) for n in names), "the cache is not empty"
    print(P.precompile(model, processes=2))
    assert all(P.is_cached(n, np.float32) for n in names)
    print(P.precompile(model, processes=2))
""")


def test_precompile_in_two_processes_fills_an_empty_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "0"]  # four kernels compiled, then all cached


FROM_A_CHECKOUT = textwrap.dedent("""
    import glob, os, tempfile, time
    import numpy as np
    from numbaconv import precompile as P
    from numbaconv.layers import MaxPool2d, Sigmoid
    from numbaconv.layers import Sequential

    def until_the_child_claims():  # so that the child compiles some of the kernels
        claims = os.path.join(tempfile.gettempdir(), "numbaconv-precompile-*", "*")
        deadline = time.monotonic() + 120
        while not glob.glob(claims) and time.monotonic() < deadline:
            time.sleep(0.05)

    model = Sequential([Sigmoid(), MaxPool2d(2)])
    print(P.precompile(model, processes=2, meanwhile=until_the_child_claims))
    print(all(P.is_cached(n, np.float32) for n in P.kernels_for(model)))
""")


def test_children_compile_the_parents_copy_from_a_checkout(tmp_path):
    # From a checkout's root the current folder holds another copy of numbaconv (where the
    # README's Quick start leaves a user); the parent imports the installed one. Numba keeps
    # its cache per source file: kernels the children compiled from the checkout's copy would
    # be of no use to the parent, which would compile them all again.
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(REPO_ROOT, "numbaconv"), checkout / "numbaconv",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "script.py"
    script.write_text(FROM_A_CHECKOUT)
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(tmp_path / "tmp"),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script)], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "True"]


def test_a_child_that_imported_another_copy_compiles_nothing(tmp_path):
    claims = tmp_path / "claims"
    claims.mkdir()
    with pytest.raises(SystemExit, match="not the parent's"):
        P._child_main([str(tmp_path / "precompile.py"), '[["sigmoid_forward", "float32"]]',
                       str(claims)])
    assert not os.listdir(claims)


def test_the_announcement_says_how_long(monkeypatch):
    _fake_processes(monkeypatch, cached=False)
    lines = []
    model = lenet("sigmoid", "avg", rng=0)
    P.precompile(model, processes=2, input_shape=(256, 1, 28, 28), announce=lines.append)
    assert len(lines) == 1
    seconds = math.fsum(P.KERNELS[unit] for unit in {unit for name in P.kernels_for(
        model, (256, 1, 28, 28)) for unit in P.units(name)}) / 2
    assert lines[0] == (f"compiling kernels for this model (first run only, about "
                        f"{seconds + P.STARTUP_SECONDS:.0f} s)...")


def test_nothing_is_announced_with_a_warm_cache(monkeypatch):
    _fake_processes(monkeypatch, cached=True)
    lines = []
    P.precompile(lenet("sigmoid", "avg", rng=0), announce=lines.append)
    assert lines == []


WARM_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    from numba.core import event
    from numbaconv import precompile as P
    from numbaconv.layers import Conv2d
    from numbaconv.layers import Sequential

    from numbaconv.optim import SGD

    model = Sequential([Conv2d(1, 2, 3)])
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    if sys.argv[1] == "precompile":
        print(P.precompile(model, processes=2, input_shape=x.shape, optimizer="sgd"))
    else:  # a training step after the precompile, in a new process: everything from the cache
        compiled = []

        class Compiles(event.Listener):
            def on_start(self, e):
                compiled.append(e.data["dispatcher"].py_func.__name__)

            def on_end(self, e):
                pass

        event.register("numba:compile", Compiles())
        y = model.forward(x, training=True)
        model.backward(np.ones_like(y), need_input_grad=False)
        SGD(model.named_params(), lr=0.1).step(model.named_grads())
        print(compiled)
""")


def test_a_run_after_precompile_compiles_nothing(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    runs = [subprocess.run([sys.executable, "-c", WARM_RUN, step], env=env, capture_output=True,
                           text=True, timeout=300) for step in ("precompile", "train")]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    assert int(runs[0].stdout) > 0
    assert runs[1].stdout.strip() == "[]"


CACHE_KEYS = textwrap.dedent("""
    import numpy as np
    from numbaconv import precompile as P

    for name in sorted(P.KERNELS):
        dispatcher = P._dispatcher(name)
        key = dispatcher._cache._index_key(P.signature(name, np.float32),
                                           dispatcher.targetctx.codegen())
        print(name, key[-1])
""")


def test_every_kernels_cache_key_is_the_same_in_every_process():
    """Numba's cache finds a kernel by a key that hashes its closure's pickled contents: a
    kernel whose closure held a dispatcher (a new random id per process) would compile again
    in every run. Two interpreters must agree on every key."""
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    runs = [subprocess.run([sys.executable, "-c", CACHE_KEYS], env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    assert len(runs[0].stdout.splitlines()) == len(P.KERNELS)
    assert runs[0].stdout == runs[1].stdout


NUMBA_FIRST = textwrap.dedent("""
    import numba
    numba.njit(lambda x: x + 1)(1)  # the program used Numba before importing numbaconv
    import numpy as np
    from numbaconv import precompile as P
    from numbaconv.layers import Sigmoid
    from numbaconv.layers import Sequential

    model = Sequential(Sigmoid())
    print(P.precompile(model, processes=2))
    print(all(P.is_cached(n, np.float32) for n in P.kernels_for(model)))
""")


def test_children_compile_for_the_parents_cpu_features(tmp_path):
    # numbaconv could not choose its 512-bit vectors here (Numba ran first); a child process
    # that chose them would fill the cache under another key, useless to the parent
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CPU_FEATURES", "NUMBACONV_WIDE_VECTORS")}
    env.update(NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", NUMBA_FIRST], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "True"]


def test_kernels_for_an_input_shape_are_those_its_layers_choose():
    model = lenet("sigmoid", "avg", rng=0)
    # at batch 256, conv1 (32-wide padded rows, 28 outputs) takes the padded-width kernels,
    # conv2 (14 wide, 10 outputs) the interleaved-samples ones; conv1 needs no input gradient
    # (each stage's forward, activation and pool in one pass, conv1's backward's activation
    # and pool with the weight gradient, conv2's with both gradients)
    assert P.kernels_for(model, (256, 1, 28, 28)) == [
        "conv2d_sigmoid_avg_pool_forward", "conv2d_sigmoid_avg_pool_weight_grad",
        "conv2d_sigmoid_avg_pool_forward_lanes", "conv2d_sigmoid_avg_pool_backward_lanes",
        "matmul_acc", "sigmoid_forward", "sigmoid_backward"]
    # one sample fills too few lanes: conv2 takes the padded-width kernels (and the one-pass
    # forward), its input gradient a convolution of the spread gy (14 + 4 wide, for 14
    # outputs: padded-width)
    assert P.kernels_for(model, (1, 1, 28, 28))[:6] == [
        "conv2d_sigmoid_avg_pool_forward", "conv2d_sigmoid_avg_pool_weight_grad",
        "conv2d_weight_grad", "conv2d_forward", "sigmoid_avg_pool_backward", "matmul_acc"]


def test_kernels_for_a_large_linear_include_the_packed_product():
    """A weight of PACKED_B_BYTES and more (VGG's 4096 x 4096) is packed in every product; a
    small one with a large batch in the weight gradient's (and a shorter last batch may not
    be): matmul_acc with it."""
    from numbaconv.layers import Linear

    layer = Linear(1024, 1024, rng=0)
    assert layer.params["weight"].nbytes == 4 << 20
    assert P.kernels_for([layer], (2, 1024)) == ["matmul_acc", "packed_matmul_acc"]
    assert P.kernels_for([Linear(400, 120, rng=0)], (256, 400)) == ["matmul_acc"]
    assert P.kernels_for([Linear(400, 120, rng=0)], (4096, 400)) == [
        "matmul_acc", "packed_matmul_acc"]


def test_kernels_for_a_list_of_layers():
    from numbaconv.layers import Conv2d, MaxPool2d, ReLU

    assert P.kernels_for([Conv2d(1, 2, 3), ReLU(), MaxPool2d(2)]) == CONV_KERNELS + [
        "conv2d_relu_max_pool_forward", "conv2d_relu_max_pool_forward_lanes",
        "relu_max_pool_forward", "relu_max_pool_backward", "conv2d_relu_max_pool_backward_lanes",
        "conv2d_relu_max_pool_weight_grad"]


def test_kernels_for_a_tree_are_those_of_every_layer_for_its_input():
    # the Residual's 3x3 convolution at stride 1 on 62x62: its input padded in parallel (a
    # million values), the flat kernels without an input gradient (the model's first stage);
    # its 1x1 shortcut (40 channels) the pointwise kernels, likewise; the strided one's: the
    # column kernels with it; the Concat's 1x1 (8 channels) and the nested fused stage's
    # convolution (stride 1, 31 wide) on the flat kernels, its forward in one pass, its input
    # gradient (32 output channels, 3x3 at stride 1) by Winograd's transforms
    pointwise = ["conv2d_forward_pointwise", "transpose_samples", "conv2d_weight_grad_pointwise",
                 "channel_sums"]
    assert P.kernels_for(tree(), TREE_INPUT) == [
        "_place_planes", "conv2d_forward", "conv2d_weight_grad", *pointwise,
        "conv2d_forward_columns", "conv2d_weight_grad_columns", "conv2d_input_grad_columns",
        "conv2d_weight_grad_rows", "max_pool2d_forward", "max_pool2d_backward",
        "conv2d_relu_max_pool_forward", "transform_weights", "conv2d_forward_winograd",
        "relu_max_pool_backward"]
    # without a shape: every kernel any width could take, the flat ones' both layouts
    assert P.kernels_for(tree()) == [
        "conv2d_forward_columns", "conv2d_forward", "conv2d_forward_lanes",
        "conv2d_weight_grad_columns", "conv2d_weight_grad", "conv2d_weight_grad_lanes",
        "conv2d_input_grad_lanes", "conv2d_forward_channels", "transform_weights",
        "conv2d_forward_winograd", *pointwise,
        "conv2d_input_grad_columns", "conv2d_weight_grad_rows", "max_pool2d_forward",
        "max_pool2d_backward",
        "conv2d_relu_max_pool_forward", "conv2d_relu_max_pool_forward_lanes",
        "relu_max_pool_forward", "relu_max_pool_backward", "conv2d_relu_max_pool_backward_lanes"]


def test_kernels_for_the_output_channel_kernels_are_those_each_gradient_chooses():
    from numbaconv.layers import Conv2d, ReLU, Sequential

    # 64 output channels: forward and weight gradient; the input gradient's convolution has 16
    # output channels: the flat kernels
    assert P.kernels_for([Conv2d(16, 64, 3, padding=1)], (2, 16, 8, 8)) == [
        "conv2d_forward_channels", "conv2d_weight_grad_channels"]
    assert P.kernels_for([ReLU(), Conv2d(16, 64, 3, padding=1)], (2, 16, 8, 8)) == [
        "conv2d_forward_channels", "conv2d_weight_grad_channels", "conv2d_forward"]
    # 64 input channels: the input gradient's alone, where it is computed
    assert P.kernels_for([Conv2d(64, 16, 3, padding=1)], (2, 64, 8, 8)) == [
        "conv2d_forward", "conv2d_weight_grad"]
    assert P.kernels_for(Sequential(ReLU(), Conv2d(64, 16, 3, padding=1)), (2, 64, 8, 8)) == [
        "conv2d_forward", "conv2d_weight_grad", "conv2d_forward_channels"]
    # an odd number of float64 blocks (80 output channels with AVX-512, 72 with AVX2): whole
    # blocks of float64 values, not of float32 ones (twice as many channels)
    from numbaconv.kernels.cpu.conv.channels import block_channels

    c_out = block_channels(8) * (64 // block_channels(8) + 1)
    for dtype, kernels in ((np.float32, ["conv2d_forward", "conv2d_weight_grad"]),
                           (np.float64, ["conv2d_forward_channels",
                                         "conv2d_weight_grad_channels"])):
        assert P.kernels_for([Conv2d(64, c_out, 3, padding=1, dtype=dtype)],
                             (2, 64, 8, 8)) == kernels
    # without a shape: where some map would take them
    assert {"conv2d_forward_channels", "conv2d_weight_grad_channels"} <= set(
        P.kernels_for([Conv2d(16, 64, 3, padding=1)]))
    assert "conv2d_forward_channels" in P.kernels_for([Conv2d(64, 16, 3, padding=1)])
    assert "conv2d_forward_channels" not in P.kernels_for([Conv2d(16, 16, 3, padding=1)])


def test_only_a_first_stage_within_the_first_stage_skips_the_input_gradient():
    from numbaconv.layers import Conv2d, ReLU, Residual, Sequential

    def block():
        # 3x3 maps: the column kernels (narrower than the flat ones serve at stride 1)
        return Residual([Conv2d(32, 32, 3, padding=1, rng=0)], Conv2d(32, 32, 1, rng=1))

    first = P.kernels_for(Sequential(Sequential(block(), ReLU())), (2, 32, 3, 3))
    assert "conv2d_forward_columns" in first and "conv2d_input_grad_columns" not in first
    second = P.kernels_for(Sequential(ReLU(), Sequential(block())), (2, 32, 3, 3))
    assert "conv2d_input_grad_columns" in second


def test_kernels_for_the_zoo_reach_the_nested_convolutions():
    from numbaconv.models import resnet18

    names = P.kernels_for(resnet18(rng=0), (256, 1, 96, 96))
    # the stem and the stride-2 layer onto 12x12 maps
    assert {"conv2d_forward_columns", "conv2d_weight_grad_columns",
            "conv2d_input_grad_columns"} <= set(names)
    # the first stage's 64-channel layers on 24x24 maps at stride 1 (and its 128-channel
    # ones on 12x12, whose weight gradient stays on the output-channel kernels): Winograd's
    assert {"transform_weights", "conv2d_forward_winograd", "conv2d_weight_grad_winograd",
            "conv2d_weight_grad_channels"} <= set(names)
    assert set(names) <= set(P.KERNELS)


TREE_WARM_RUN = TREE + CHANNELS + textwrap.dedent("""
    import sys
    import numpy as np
    from numba.core import event
    from numbaconv import precompile as P

    model, shape = {"tree": (tree(), TREE_INPUT), "channels": (channels(), CHANNELS_INPUT)}[
        sys.argv[2]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    if sys.argv[1] == "precompile":
        print(P.precompile(model, processes=2, input_shape=x.shape))
    else:  # a training step in a new process: what precompile knows comes from the cache
        known = {P._dispatcher(unit).py_func.__name__ for unit in P.KERNELS}
        compiled = []

        class Compiles(event.Listener):
            def on_start(self, e):
                compiled.append(e.data["dispatcher"].py_func.__name__)

            def on_end(self, e):
                pass

        event.register("numba:compile", Compiles())
        y = model.forward(x, training=True)
        model.backward(np.ones_like(y), need_input_grad=False)
        print(sorted(set(compiled) & known))
""")


@pytest.mark.parametrize("model", ["tree", "channels"])
def test_a_tree_after_precompile_compiles_none_of_the_known_kernels(tmp_path, model):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    runs = [subprocess.run([sys.executable, "-c", TREE_WARM_RUN, step, model], env=env,
                           capture_output=True, text=True, timeout=600)
            for step in ("precompile", "train")]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    assert int(runs[0].stdout) > 0
    assert runs[1].stdout.strip() == "[]"
