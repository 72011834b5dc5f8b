"""``approval-flow keys``: the signing keys in use and how long the links they sign stay valid.

A key may only be dropped once no valid link depends on it, so rotation needs the longest link
life. It follows from the process options (``APPROVAL_PROCESS__*``, which new processes carry)
and the token grace (``APPROVAL_TOKEN_GRACE``), computed exactly as the worker signs: an approval
link lives for the approval wait; a command callback link for the longest send with every HTTP
retry plus the callback wait. Both get the grace on top. Needs no Temporal.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from cli.settings import CliSettings
from workflows.messages import ProcessOptions

HELP = "signing keys, and how long links live (for key rotation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments: everything comes from the settings."""


def link_lives(options: ProcessOptions, grace: timedelta) -> dict[str, timedelta]:
    """How long each kind of link stays valid after the worker signs it, longest first."""
    # Here, not at the top: the workflow module is heavy, and every other command would pay
    # for it at each start (the CLI parses every command's arguments).
    from workflows.process import send_budget

    lives = {
        "command-callback": send_budget(options) + options.command_timeout + grace,
        "approval": options.approval_timeout + grace,
    }
    return dict(sorted(lives.items(), key=lambda item: item[1], reverse=True))


def spoken(duration: timedelta) -> str:
    """``2 h 27 min 30 s``: whole units, largest first."""
    seconds = int(duration.total_seconds())
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts) or "0 s"


def run(args: argparse.Namespace, settings: CliSettings) -> tuple[dict[str, Any], str]:
    lives = link_lives(settings.process, settings.token_grace)
    kind, longest = next(iter(lives.items()))
    advice = (
        "To rotate: put the new key first in APPROVAL_SIGNING_KEYS on every worker and API "
        f"replica; keep the old key listed for {spoken(longest)} after the last worker switched "
        "(links it signed stay valid that long), then drop it."
    )
    keys = [
        {"kid": key.kid, "signs": position == 0}
        for position, key in enumerate(settings.signing_keys)
    ]
    document = {
        "keys": keys,
        "link_lives_seconds": {name: life.total_seconds() for name, life in lives.items()},
        "longest": {"link": kind, "seconds": longest.total_seconds(), "text": spoken(longest)},
        "rotation": advice,
    }
    lines = []
    if keys:
        roles = ", ".join(f"{k['kid']} ({'signs' if k['signs'] else 'verifies'})" for k in keys)
        lines.append(f"Signing keys: {roles}")
    else:
        lines.append("Signing keys: none set here (APPROVAL_SIGNING_KEYS)")
    lines.append(f"Longest link life: {spoken(longest)} ({kind} links)")
    lines += [f"  {name} links: {spoken(life)}" for name, life in lives.items()]
    lines.append(advice)
    return document, "\n".join(lines)
