"""``python -m benchmarks``: every figure against its baseline (see ``benchmarks.suite``)."""

from benchmarks.suite import main
from common.temporal import exit_process

if __name__ == "__main__":
    exit_process(main())
