"""``python -m benchmarks``: the approvals figure (see ``benchmarks.approvals``)."""

from benchmarks.approvals import main
from common.temporal import exit_process

if __name__ == "__main__":
    exit_process(main())
