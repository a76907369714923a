"""The results as text: the table ``numbaconv bench`` prints, throughput notes, and one
verdict line per target."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .targets import TARGETS
from .timing import CaseResult

__all__ = ["format_rows", "format_table", "summary"]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


HEADER = ("case", "numbaconv ms", "torch ms", "ratio", "best", "target", "result")
HEADER_ALONE = ("case", "numbaconv ms", "best ms")


def table_row(result: CaseResult, with_torch: bool = True) -> tuple[str, ...]:
    if not with_torch:
        return (result.case.name, _ms(result.numbaconv_median),
                _ms(min(result.numbaconv_times)))
    target = result.case.target
    return (result.case.name, _ms(result.numbaconv_median), _ms(result.torch_median),
            _ratio(result.ratio), _ratio(result.best_ratio),
            target.describe() if target else "-", result.verdict)


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
    header = HEADER if with_torch else HEADER_ALONE
    lines = format_rows([header] + [table_row(r, with_torch) for r in results])
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
    """One line per target: how many of its cases passed."""
    lines = []
    for target in TARGETS:
        mine = [r for r in results if r.case.target is target and r.ratio is not None]
        if mine:
            passed = sum(r.verdict == "PASS" for r in mine)
            worst = max(mine, key=lambda r: r.ratio)
            lines.append(f"{'PASS' if passed == len(mine) else 'FAIL'}  {target.label}: "
                         f"{passed}/{len(mine)} cases, worst {worst.case.name} "
                         f"{worst.ratio:.2f}x")
    return "\n".join(lines)
