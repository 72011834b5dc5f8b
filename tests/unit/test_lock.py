"""uv.lock is in step with pyproject.toml, so `make install` and the image install what it names.

`make install` runs ``uv sync --locked`` and the Dockerfile ``uv sync --locked``: both refuse a
lock that no longer matches pyproject.toml. This test says so first, with the fix, in
`make test`. It runs offline (``--offline``): checking a lock that is in step needs no index,
and a lock out of step fails offline too, because resolving would need one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from uv import find_uv_bin

ROOT = Path(__file__).resolve().parents[2]


def lock_check(project: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    # An empty cache of its own: the answer must not depend on what this machine downloaded.
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never"}
    return subprocess.run(
        [find_uv_bin(), "lock", "--check", "--offline"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_lock_is_in_step_with_pyproject(tmp_path: Path) -> None:
    result = lock_check(ROOT, tmp_path / "uv-cache")
    assert result.returncode == 0, (
        "uv.lock is out of step with pyproject.toml: run `make lock` and commit uv.lock\n"
        + result.stderr
    )


def test_the_check_refuses_a_dependency_missing_from_the_lock(tmp_path: Path) -> None:
    # The check above must be able to fail: add a dependency the lock cannot know.
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text, count = re.subn(
        r"^dependencies = \[\n",
        'dependencies = [\n    "not-in-the-lock>=1",\n',
        pyproject.read_text(),
        count=1,
        flags=re.MULTILINE,
    )
    assert count == 1, "no [project] dependencies list in pyproject.toml"
    pyproject.write_text(text)

    assert lock_check(tmp_path, tmp_path / "uv-cache").returncode != 0


def test_every_install_is_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"\bsync --locked\b", makefile), "make install does not install from uv.lock"
    assert re.search(r"\bsync --locked\b", dockerfile), "the image does not install from uv.lock"
    assert "pip install" not in dockerfile.replace('pip install "uv==', ""), (
        "the image installs something with pip, outside the lock"
    )
    assert "!uv.lock" in (ROOT / ".dockerignore").read_text().split(), (
        ".dockerignore keeps uv.lock out of the build context"
    )
