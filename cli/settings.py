"""The CLI's settings: a starter's, minus what only services need."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import NoDecode

from common.tokens import SigningKey
from starter import StarterSettings


class CliSettings(StarterSettings):
    """The worker's settings and the process options, minus the keys: the CLI signs nothing."""

    signing_keys: Annotated[tuple[SigningKey, ...], NoDecode] = Field(default=())
    # Where ``start`` looks for the approval mail it caused (the local inbox of ``make run``).
    # Set it empty when approvers get real mail: ``start`` then prints only the process id.
    inbox_url: str | None = "http://127.0.0.1:8025"
