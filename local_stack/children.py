"""A supervised child process: its output in a log file (and the terminal), stopped for sure."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

OUTPUT_LINE_LIMIT = 1 << 20
TAIL_LINES = 25
NAME_WIDTH = 9


def _find_prctl() -> Callable[[int, int], int] | None:
    """libc's ``prctl`` on Linux, looked up once in the parent: the hook only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _find_prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook asking the kernel to SIGTERM the child when we die.

    Children run in their own session (so Ctrl+C reaches only the supervisor, which then stops
    them in order); this makes sure they do not outlive a supervisor killed with SIGKILL. The
    benchmark suite's children use it too (benchmarks/stack.py). Make one per child, just before
    starting it: it remembers which process is the parent. The kernel sends the signal when the
    *thread* that started the child ends, so start children from a thread that lives as long as
    the process (the main thread, the event loop's), never from ``asyncio.to_thread``.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm)
        # A parent that died between the fork and the line above had no one to tell: go now.
        if os.getppid() != parent:
            os._exit(1)

    return hook


class Child:
    """One child process; ``start`` it, await ``exited``, ``stop`` it."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        terminal: TextIO,
        echo: bool = True,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.echo = echo
        self._terminal = terminal
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=die_with_parent(),
                limit=OUTPUT_LINE_LIMIT,
            )
        except OSError as err:
            raise ChildFailed(self, f"cannot start {self.argv[0]}: {err.strerror or err}") from err
        self._pump = asyncio.create_task(self._copy_output(), name=f"output of {self.name}")

    async def exited(self) -> int:
        """Wait for the process to end and its output to be copied; its exit code."""
        if self._process is None:
            raise RuntimeError(f"{self.name} was never started")
        code = await self._process.wait()
        if self._pump is not None:
            await self._pump
        return code

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the child's process group, wait up to ``grace`` seconds, then SIGKILL it."""
        self.stopping = True
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), grace)
            except TimeoutError:
                self._write_terminal(f"did not stop within {grace:g} s; killing it")
                self.kill()
        return await self.exited()

    def kill(self) -> None:
        self.stopping = True
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        # The child leads its own process group (its own session): signal anything it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    def tail(self) -> list[str]:
        """The last lines the child wrote (for the message when it dies)."""
        return list(self._tail)

    async def _copy_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stream = self._process.stdout
        with self.log_path.open("ab") as log:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line longer than the limit: take what is there
                    raw = await stream.read(OUTPUT_LINE_LIMIT)
                if not raw:
                    return
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                self._tail.append(line)
                if self.echo and not self.stopping:
                    self._write_terminal(line)

    def _write_terminal(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"{self.name:<{NAME_WIDTH}}| {line}", file=self._terminal, flush=True)


class ChildFailed(Exception):
    """A child could not start, exited early or never became ready."""

    def __init__(self, child: Child, message: str) -> None:
        super().__init__(message)
        self.child = child
