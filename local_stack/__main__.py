"""``python -m local_stack`` (what ``make run`` runs)."""

from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError

from common.temporal import exit_process
from common.tracing import configure as configure_tracing
from local_stack.settings import LocalStackSettings
from local_stack.supervisor import run


def main() -> None:
    try:
        settings = LocalStackSettings()
    except ValidationError as err:
        problem = err.errors()[0]
        name = "LOCAL_STACK_" + "_".join(str(p) for p in problem["loc"]).upper()
        print(f"make run: invalid {name}: {problem['msg']}", file=sys.stderr)
        exit_process(2)
        return
    # The demo process is started from here: its trace begins in this program.
    configure_tracing("local-stack", program="make run")
    try:
        code = asyncio.run(run(settings))
    except KeyboardInterrupt:  # before the signal handlers were in place
        code = 130
    # The SDK's threads can abort interpreter finalisation (sdk-python issue 300): exit directly.
    exit_process(code)


if __name__ == "__main__":
    main()
