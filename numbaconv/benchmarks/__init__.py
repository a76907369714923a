"""The benchmark harness: numbaconv against PyTorch on the CPU, defined once for two front ends.

``numbaconv bench`` (:mod:`numbaconv.cli.bench`) and the pytest-benchmark suite in ``bench/``
both take their cases from :data:`CASES` and their verdicts from :data:`TARGETS`:

* :mod:`.cases`: what is measured, each case's numbaconv and PyTorch sides built from the
  same numbers;
* :mod:`.timing`: how a case is timed, the two sides interleaved sample by sample;
* :mod:`.zoo`: the ResNet-18 cases (its convolutions, BatchNorms, a step, evaluation) and
  D2L's PyTorch ResNet-18 they compare with;
* :mod:`.peak`: the machine's peak GFLOP/s, a loop of vector multiply-adds;
* :mod:`.targets`: the project's upper bounds on numbaconv's time over PyTorch's, and lower
  bounds on the share of the peak;
* :mod:`.report`: the results as a table and one verdict line per target;
* :mod:`.machine`: the thread counts, the machine's description and a warning when it is busy.
"""

from .cases import (
    CASES,
    CASES_BY_NAME,
    EPOCH_FRACTION,
    SIZES,
    Case,
    Prepared,
    as_arrays,
    import_torch,
    select,
    torch_lenet,
)
from .machine import busy_warning, machine_info, set_threads
from .peak import Peak, measure_peak
from .report import format_rows, format_table, summary
from .targets import TARGETS, PeakTarget, Target, verdict
from .timing import CaseResult, time_case

__all__ = [
    "SIZES", "EPOCH_FRACTION", "Target", "Prepared", "Case", "CaseResult", "CASES",
    "CASES_BY_NAME", "TARGETS", "import_torch", "torch_lenet", "set_threads", "as_arrays",
    "select", "time_case", "format_rows", "format_table", "summary", "machine_info", "verdict",
    "busy_warning", "Peak", "measure_peak", "PeakTarget",
]
