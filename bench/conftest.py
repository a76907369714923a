"""pytest-benchmark suite: numbaconv beside PyTorch (CPU, float32), case by case.

Run explicitly (the project's ``testpaths`` is ``tests/``, so a plain ``pytest`` skips this
directory)::

    pytest bench/ --benchmark-only                        # everything
    pytest bench/ --benchmark-only --ratio-report         # + numbaconv/torch ratios vs targets
    pytest bench/test_bench_ops.py --benchmark-only -k conv64 --bench-threads 1

The cases come from :mod:`numbaconv.benchmarks` (shared with ``numbaconv bench``). Each case
is a pair of tests in one benchmark group: ``[<case>-numbaconv]`` then ``[<case>-torch]``, run
back to back on the same prepared inputs; the PyTorch half skips, with the reason, when PyTorch
is not installed.

Options (``NUMBACONV_RATIO_REPORT=1`` and ``NUMBACONV_RATIO_STRICT=1`` do the same as the
flags):

* ``--ratio-report``: at the end, a table of numbaconv/torch median-time ratios per case
  against the project's targets, PASS/FAIL per case and per target (a target on the share of
  the machine's peak measures the peak first, :func:`numbaconv.benchmarks.measure_peak`);
* ``--ratio-strict``: also exit with status 1 when a target FAILs (implies the report);
* ``--bench-threads N``: threads for Numba and PyTorch (default: Numba's thread count, the
  cores);
* ``--bench-size full|quick``: ``quick`` times 1/30 of an epoch instead of 1/10;
* ``--bench-rounds R``: rounds of the epoch and evaluation cases (default 5).
"""

from __future__ import annotations

import os

import pytest

from numbaconv import benchmarks as B

RATIOS_KEY = pytest.StashKey[dict]()
ITEMS_KEY = pytest.StashKey[dict]()
FLOPS_KEY = pytest.StashKey[dict]()
THREADS_KEY = pytest.StashKey[int]()
PEAK_KEY = pytest.StashKey[float]()
SCALES_KEY = pytest.StashKey[dict]()
START_WARNING_KEY = pytest.StashKey[str]()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def pytest_addoption(parser):
    group = parser.getgroup("numbaconv-bench", "numbaconv benchmarks")
    group.addoption("--ratio-report", action="store_true", default=False,
                    help="print numbaconv/torch time ratios against the targets at the end "
                         "(or NUMBACONV_RATIO_REPORT=1)")
    group.addoption("--ratio-strict", action="store_true", default=False,
                    help="with the ratio report, exit 1 when a target fails "
                         "(or NUMBACONV_RATIO_STRICT=1)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for numbaconv and PyTorch (default: NUMBA_NUM_THREADS)")
    group.addoption("--bench-size", choices=("full", "quick"), default="full",
                    help="quick: time 1/30 of an epoch instead of 1/10")
    group.addoption("--bench-rounds", type=int, default=5,
                    help="rounds of the epoch and evaluation cases (default 5)")


def pytest_configure(config):
    config.addinivalue_line("markers", "op: a per-operation benchmark (forward or backward)")
    config.addinivalue_line("markers",
                            "training: a training-step, epoch or evaluation benchmark")
    config.addinivalue_line("markers", "startup: time to the first training step, empty and "
                            "warm Numba cache (no PyTorch side)")
    config.stash[RATIOS_KEY] = {}
    config.stash[ITEMS_KEY] = {}
    config.stash[SCALES_KEY] = {}
    config.stash[FLOPS_KEY] = {}


def pytest_sessionstart(session):
    # the machine's load before the benchmarks add their own
    import numba

    threads = session.config.getoption("--bench-threads") or numba.config.NUMBA_NUM_THREADS
    session.config.stash[START_WARNING_KEY] = B.busy_warning(threads) or ""


def _strict(config) -> bool:
    return config.getoption("--ratio-strict") or _env_flag("NUMBACONV_RATIO_STRICT")


def _report(config) -> bool:
    return config.getoption("--ratio-report") or _env_flag("NUMBACONV_RATIO_REPORT") \
        or _strict(config)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def bench_torch(request):
    """``(torch module or None, reason)``; sets the thread counts once for the session."""
    torch, note = B.import_torch()
    request.config.stash[THREADS_KEY] = B.set_threads(request.config.getoption("--bench-threads"),
                                                      torch)
    return torch, note


class _PreparedCache:
    """The prepared inputs of the current case, shared by its numbaconv and torch tests
    (one case at a time, so the epoch and evaluation data do not pile up)."""

    def __init__(self):
        self.name = None
        self.prepared = None

    def get(self, case: B.Case, size: str, torch) -> B.Prepared:
        if self.name != case.name:
            self.name, self.prepared = None, None
            self.prepared = case.setup(size, torch)
            self.name = case.name
        return self.prepared


@pytest.fixture(scope="session")
def _cache():
    return _PreparedCache()


@pytest.fixture
def run_case(request, benchmark, bench_torch, _cache):
    """``run_case(case, side)``: warm the side's callable up, then benchmark it."""
    config = request.config

    def run(case: B.Case, side: str):
        torch, note = bench_torch
        if side == "torch" and torch is None:
            pytest.skip(f"torch half of {case.name} skipped: {note}")
        prepared = _cache.get(case, config.getoption("--bench-size"), torch)
        fn = prepared.numbaconv if side == "numbaconv" else prepared.torch
        benchmark.group = case.name
        benchmark.extra_info.update(case=case.name, side=side, items=prepared.items,
                                    scale=prepared.scale, detail=prepared.detail)
        fn()  # warm-up outside the timed region: Numba compiles, PyTorch allocates
        if case.kind in ("epoch", "eval"):
            benchmark.pedantic(fn, rounds=config.getoption("--bench-rounds"), iterations=1,
                               warmup_rounds=0)
        else:
            fn()
            benchmark(fn)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None \
                and stats.stats.rounds:
            config.stash[RATIOS_KEY].setdefault(case.name, {})[side] = stats.stats
            config.stash[ITEMS_KEY][case.name] = prepared.items
            config.stash[SCALES_KEY][case.name] = prepared.scale
            config.stash[FLOPS_KEY][case.name] = prepared.flops

    return run


# --------------------------------------------------------------------------- ratio report

def bench_torch_module():
    """torch if it is already imported (the report never imports it itself)."""
    import sys

    return sys.modules.get("torch")


def _ratio_results(config) -> list[tuple]:
    """(case, numbaconv stats, torch stats or None) for every case that ran, in CASES order."""
    collected = config.stash.get(RATIOS_KEY, {})
    rows = []
    for case in B.CASES:
        sides = collected.get(case.name)
        if not sides or "numbaconv" not in sides:
            continue
        torch_stats = sides.get("torch")
        rows.append((case, sides["numbaconv"], torch_stats))
    return rows


def _peak(config) -> float | None:
    """The measured peak GFLOP/s for the session's thread count (measured on first use)."""
    if PEAK_KEY not in config.stash:
        threads = config.stash[THREADS_KEY]
        config.stash[PEAK_KEY] = B.measure_peak(threads).at(threads)
    return config.stash[PEAK_KEY]


def _verdicts(config):
    out = []
    flops = config.stash.get(FLOPS_KEY, {})
    for case, nc, tc in _ratio_results(config):
        ratio = nc.median / tc.median if tc is not None else None
        best = nc.min / tc.min if tc is not None else None
        fraction = None
        if isinstance(case.target, B.PeakTarget) and flops.get(case.name):
            fraction = flops[case.name] / nc.median / 1e9 / _peak(config)
        out.append((case, nc.median, tc.median if tc is not None else None, ratio,
                    B.verdict(case.target, ratio, fraction), best))
    return out


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if _strict(config) and any(r[4] == "FAIL" for r in _verdicts(config)) \
            and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _report(config):
        return
    rows = _verdicts(config)
    tr = terminalreporter
    tr.section("numbaconv / torch ratios")
    if not rows:
        tr.write_line("no benchmark results (run with --benchmark-only, not "
                      "--benchmark-disable)")
        return
    table = [("case", "numbaconv ms", "torch ms", "ratio", "best", "target", "result")]
    for case, nc, tc, ratio, result, best in rows:
        table.append((case.name, f"{nc * 1e3:,.3f}", "-" if tc is None else f"{tc * 1e3:,.3f}",
                      "-" if ratio is None else f"{ratio:.2f}x",
                      "-" if best is None else f"{best:.2f}x",
                      case.target.describe() if case.target else "-", result))
    for line in B.format_rows(table):
        tr.write_line(line)
    tr.write_line("")
    tr.write_line("ratio = numbaconv median / torch median per call, best = ratio of the "
                  "minima (pytest-benchmark stats; the two halves of a case run back to "
                  "back, not interleaved); PASS/FAIL judges the median ratio")
    for target in B.TARGETS:
        mine = [r for r in rows if r[0].target is target and r[4] != "-"]
        if mine:
            passed = sum(r[4] == "PASS" for r in mine)
            tr.write_line(f"{'PASS' if passed == len(mine) else 'FAIL'}  {target.label}: "
                          f"{passed}/{len(mine)} cases")
    items = config.stash.get(ITEMS_KEY, {})
    scales = config.stash.get(SCALES_KEY, {})
    for case, nc, tc, *_ in rows:
        if case.kind == "eval" and case.name in items:
            line = f"{case.name}: numbaconv {items[case.name] / nc:,.0f} images/s"
            if tc:
                line += (f", torch {items[case.name] / tc:,.0f} images/s "
                         f"({tc / nc:.2f}x torch's throughput)")
            tr.write_line(line)
        elif case.kind == "epoch" and case.name in scales:
            line = f"{case.name}: projected full epoch numbaconv {nc * scales[case.name]:.2f} s"
            if tc:
                line += f", torch {tc * scales[case.name]:.2f} s"
            tr.write_line(line)
    info = B.machine_info(bench_torch_module())
    info.pop("load", None)
    tr.write_line("machine: " + "  ".join(f"{k}: {v}" for k, v in info.items()))
    start_warning = config.stash.get(START_WARNING_KEY, None)
    if start_warning:
        tr.write_line(start_warning, yellow=True)
    failed = any(r[4] == "FAIL" for r in rows)
    if failed and _strict(config):
        tr.write_line("--ratio-strict: a target failed, exit status 1", red=True)
    elif failed:
        tr.write_line("(a FAIL does not fail the run; add --ratio-strict for that)")
