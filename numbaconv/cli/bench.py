"""``numbaconv bench``: numbaconv against PyTorch on this machine's CPU, as a table.

The cases and the timing method live in :mod:`numbaconv.benchmarks` (shared with the
pytest benchmark suite in ``bench/``). Registered on the main group by
:mod:`numbaconv.cli.main`.
"""

from __future__ import annotations

import time

import click

from .errors import user_errors


@click.command()
@click.option("--quick", is_flag=True,
              help="3 repeats and 1/30 of an epoch instead of 7 and 1/10.")
@click.option("--threads", type=int,
              help="Threads for numbaconv (Numba) and PyTorch alike (default: all of Numba's "
                   "threads, i.e. the cores).")
@click.option("--repeat", type=click.IntRange(min=1),
              help="Timed samples per case and side (default 7; 3 with --quick).")
@click.option("--case", "patterns", multiple=True, metavar="TEXT",
              help="Only the cases whose name contains TEXT, e.g. --case conv64. Repeatable.")
@click.option("--no-torch", is_flag=True, help="Time numbaconv alone.")
@click.option("--tiny", is_flag=True, hidden=True,
              help="Tiny shapes and one repeat: a smoke test for the test-suite.")
@user_errors
def bench(quick, threads, repeat, patterns, no_torch, tiny):
    """Time numbaconv against PyTorch (CPU, float32) on LeNet's layers, a 64-channel
    convolution, LeNet training steps and epochs, and evaluation; and on ResNet-18 (batch
    64, 28x28 and 96x96): each distinct convolution forward and backward, its BatchNorms,
    a training step and evaluation.

    \b
    Each case is warmed up (JIT compilation) and then timed `--repeat` times per side,
    numbaconv and PyTorch interleaved so both share the machine's noise. The table gives
    the median milliseconds per call, the ratio numbaconv/PyTorch of the medians (below 1:
    numbaconv is faster), the ratio of the best times, and the project's target. Cases that
    count their floating-point operations (convolutions) add both sides' GFLOP/s and their
    share of the machine's peak, measured first by a loop of vector multiply-adds on the
    same number of threads. Without PyTorch installed it prints numbaconv's times alone.
    """
    from .. import benchmarks as B

    cases = B.select(patterns)
    if tiny:
        size, default_repeat, min_time = "tiny", 1, 0.0
    elif quick:
        size, default_repeat, min_time = "quick", 3, 0.02
    else:
        size, default_repeat, min_time = "full", 7, 0.05
    repeat = repeat or default_repeat
    torch, note = (None, "--no-torch given") if no_torch else B.import_torch()
    threads = B.set_threads(threads, torch)
    info = B.machine_info(torch)
    click.echo(f"numbaconv bench: {size} shapes, repeat {repeat}, threads {threads}, "
               f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    click.echo("  ".join(f"{k}: {v}" for k, v in info.items()))
    warning = B.busy_warning(threads)
    if warning:
        click.echo(warning)
    if torch is None:
        click.echo(f"note: numbaconv times alone, no PyTorch comparison: {note}")
    click.echo()
    results = []
    peak = None
    for case in cases:
        click.echo(f"  {case.name} ...", err=True)
        prepared = case.setup(size, torch)
        if prepared.flops and peak is None:
            click.echo("  measuring the peak ...", err=True)
            peak = B.measure_peak(threads, **({"seconds": 0.005, "repeat": 1} if tiny else {}))
        results.append(B.time_case(case, prepared, repeat=repeat, min_time=min_time,
                                   peak=peak.at(threads) if peak else None))
    if peak is not None:
        click.echo(peak.describe())
        click.echo()
    click.echo(B.format_table(results))
    if torch is not None:
        click.echo()
        click.echo("ratio = numbaconv median time / PyTorch median time (lower is better); "
                   "best = ratio of the fastest samples")
        if peak is not None:
            click.echo("GFLOP/s and % peak count the formal convolution's multiply-adds (2 "
                       "FLOPs each, padding taps included) over either side's time; where "
                       "numbaconv takes Winograd's F(2x2, 3x3) (3x3 layers at stride 1 on maps "
                       "of 12x12 and more, docs/performance.md) its products do 2.25x fewer")
        verdicts = B.summary(results)
        if verdicts:
            click.echo(verdicts)

