"""The data converter: one type adapter per type for the whole process, the SDK's bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter

from common.payloads import DATA_CONVERTER, PayloadConverter, type_adapter
from workflows.messages import (
    ApprovalDecision,
    ApprovalPolicy,
    Approver,
    LockState,
    ProcessInput,
    ProcessOptions,
)

PROCESS_INPUT = ProcessInput(
    requested_by="ana",
    description="rotate the keys",
    options=ProcessOptions(
        approval_timeout=timedelta(minutes=5),
        approval=ApprovalPolicy(approvers=(Approver(id="bo"), Approver(id="cy")), required=2),
    ),
)
VALUES: list[Any] = [
    PROCESS_INPUT,
    ApprovalDecision(approved=True, decided_by="bo", approver_id="bo"),
    LockState(resource="r", requested_at=datetime(2026, 12, 4, tzinfo=UTC)),
    None,
    {"a": [1, 2.5, "x"]},
]


def test_the_converter_of_every_run_shares_one_adapter_per_type() -> None:
    # The worker makes a payload converter for every workflow run it keeps in its cache.
    first, second = PayloadConverter(), PayloadConverter()
    payloads = first.to_payloads([PROCESS_INPUT])
    assert first.from_payloads(payloads, [ProcessInput]) == [PROCESS_INPUT]
    built = type_adapter.cache_info()
    assert second.from_payloads(payloads, [ProcessInput]) == [PROCESS_INPUT]
    after = type_adapter.cache_info()
    assert after.misses == built.misses  # the second run built nothing
    assert after.hits == built.hits + 1


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_payloads_are_the_sdk_pydantic_converters_byte_for_byte(value: Any) -> None:
    ours = DATA_CONVERTER.payload_converter.to_payloads([value])
    theirs = pydantic_data_converter.payload_converter.to_payloads([value])
    assert ours == theirs
    hints: list[type] | None = None if value is None else [type(value)]
    assert DATA_CONVERTER.payload_converter.from_payloads(theirs, hints) == [value]


def test_an_unhashable_type_hint_still_decodes() -> None:
    # Annotated metadata may be a dict: no cache can hold it, the value still decodes.
    hint: Any = Annotated[int, {"unit": "seconds"}]
    payloads = DATA_CONVERTER.payload_converter.to_payloads([42])
    assert DATA_CONVERTER.payload_converter.from_payloads(payloads, [hint]) == [42]


def test_no_type_hint_decodes_plain_json() -> None:
    payloads = DATA_CONVERTER.payload_converter.to_payloads([{"k": [1, "two"]}])
    assert DATA_CONVERTER.payload_converter.from_payloads(payloads, None) == [{"k": [1, "two"]}]
