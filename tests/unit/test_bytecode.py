"""make's recipes keep Python's bytecode cache, whatever the environment says (Makefile).

With ``PYTHONDONTWRITEBYTECODE=1`` (set on the development VM) every Python process compiles each
module it imports again: about 40 % of a worker's start-up CPU, in each of the ~100 processes
``make test`` starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_recipes_write_bytecode_even_when_the_environment_says_not_to(
    tmp_path: Path,
) -> None:
    probe = tmp_path / "probe.mk"
    probe.write_text(
        "include Makefile\n"
        "probe:\n"
        f"\t@{sys.executable} -c 'import sys; print(sys.flags.dont_write_bytecode)'\n"
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "-f", str(probe), "probe"],
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "0"), result.stderr
