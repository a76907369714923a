"""The results as text: the table ``numbaconv bench`` prints, throughput notes, and one
verdict line per target.

Where a case counts its floating-point operations (the convolutions; the ResNet-18 step and
evaluation count their convolutions'), the table adds both sides' GFLOP/s and their share of
the machine's measured peak for the run's thread count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .targets import TARGETS, PeakTarget
from .timing import CaseResult

__all__ = ["format_rows", "format_table", "summary"]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _gflops(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


HEADER = ("case", "numbaconv ms", "torch ms", "ratio", "best", "target", "result")
HEADER_ALONE = ("case", "numbaconv ms", "best ms")
#: Inserted after "best" (after "best ms" without PyTorch) when some case counts its FLOPs.
FLOPS_HEADER = ("GFLOP/s", "torch GFLOP/s", "% peak", "torch % peak")
FLOPS_HEADER_ALONE = ("GFLOP/s", "% peak")


def table_row(result: CaseResult, with_torch: bool = True,
              with_flops: bool = False) -> tuple[str, ...]:
    r = result
    if not with_torch:
        flops = (_gflops(r.numbaconv_gflops), _percent(r.peak_fraction)) if with_flops else ()
        return (r.case.name, _ms(r.numbaconv_median), _ms(min(r.numbaconv_times))) + flops
    flops = (_gflops(r.numbaconv_gflops), _gflops(r.torch_gflops), _percent(r.peak_fraction),
             _percent(r.torch_peak_fraction)) if with_flops else ()
    target = r.case.target
    return ((r.case.name, _ms(r.numbaconv_median), _ms(r.torch_median), _ratio(r.ratio),
             _ratio(r.best_ratio)) + flops
            + (target.describe() if target else "-", r.verdict))


def format_rows(rows: Iterable[Sequence[str]]) -> list[str]:
    """Aligned text lines (first column left, the rest right) with a rule under the header."""
    rows = [tuple(r) for r in rows]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                       for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


def format_table(results: Sequence[CaseResult]) -> str:
    """The results as a text table, then throughput notes (ratio = numbaconv / torch time)."""
    with_torch = any(r.torch_times for r in results)
    with_flops = any(r.flops for r in results)
    header = HEADER if with_torch else HEADER_ALONE
    if with_flops:
        at = header.index("best") + 1 if with_torch else len(header)
        header = header[:at] + (FLOPS_HEADER if with_torch else FLOPS_HEADER_ALONE) \
            + header[at:]
    lines = format_rows([header] + [table_row(r, with_torch, with_flops) for r in results])
    notes = []
    for r in results:
        if r.case.kind == "epoch":
            line = (f"{r.case.name}: {r.detail}; projected full epoch numbaconv "
                    f"{r.numbaconv_median * r.scale:.2f} s")
            if r.torch_median is not None:
                line += f", torch {r.torch_median * r.scale:.2f} s"
            notes.append(line)
        elif r.case.kind == "eval":
            line = f"{r.case.name}: numbaconv {r.items / r.numbaconv_median:,.0f} " \
                   "images/s"
            if r.torch_median is not None:
                speedup = r.torch_median / r.numbaconv_median
                line += (f", torch {r.items / r.torch_median:,.0f} images/s "
                         f"({speedup:.2f}x torch's throughput)")
            notes.append(line)
    return "\n".join(lines + ([""] + notes if notes else []))


def summary(results: Sequence[CaseResult]) -> str:
    """One line per target: how many of its cases passed (those with a verdict)."""
    lines = []
    for target in TARGETS:
        mine = [r for r in results if r.case.target is target and r.verdict != "-"]
        if mine:
            passed = sum(r.verdict == "PASS" for r in mine)
            if isinstance(target, PeakTarget):
                worst = min(mine, key=lambda r: r.peak_fraction)
                value = f"{worst.peak_fraction:.0%} of peak"
            else:
                worst = max(mine, key=lambda r: r.ratio)
                value = f"{worst.ratio:.2f}x"
            lines.append(f"{'PASS' if passed == len(mine) else 'FAIL'}  {target.label}: "
                         f"{passed}/{len(mine)} cases, worst {worst.case.name} {value}")
    return "\n".join(lines)
