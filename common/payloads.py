"""The data converter of every program here: pydantic JSON, each type adapter built once.

temporalio's pydantic converter caches its type adapters per converter, and a worker makes a
converter for every workflow run it keeps. So every cached run compiled adapters of its own:
one for ``ProcessInput`` alone holds about 38 kB of pydantic-core validator and serializer, for
as long as the run stays in the cache (the second largest part of a parked process, after the
sandbox's module copies; see docs/testing.md, "Worker memory"). Here the adapters live in one
cache for the whole process. An adapter never changes once built and validates from any thread,
so sharing one changes no result; encoding is the SDK's own, so no byte on the wire changes.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)

# Our messages are a few dozen types, from modules every run shares. Bounded all the same: a type
# from a module the sandbox reloads is a new class in every run, and must not pin those copies.
MAX_TYPE_ADAPTERS = 256


@functools.lru_cache(maxsize=MAX_TYPE_ADAPTERS)
def type_adapter(type_hint: Any) -> TypeAdapter[Any]:
    """The process's one adapter for ``type_hint``."""
    return TypeAdapter(type_hint)


class SharedAdaptersJSONPayloadConverter(PydanticJSONPlainPayloadConverter):
    """The SDK's pydantic ``json/plain`` converter, its adapters taken from ``type_adapter``."""

    def __init__(self) -> None:
        super().__init__(max_cached_type_adapters=0)  # no cache of its own: see type_adapter

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        hint: Any = Any if type_hint is None else type_hint
        try:
            hash(hint)
        except TypeError:  # an unhashable hint cannot be cached: built for this call alone
            return TypeAdapter(hint).validate_json(payload.data)
        return type_adapter(hint).validate_json(payload.data)


class PayloadConverter(CompositePayloadConverter):
    """The SDK's default converters, with JSON through ``SharedAdaptersJSONPayloadConverter``.

    Nullary, as the SDK requires: it builds one for every workflow run.
    """

    def __init__(self) -> None:
        super().__init__(
            *(
                SharedAdaptersJSONPayloadConverter()
                if isinstance(converter, JSONPlainPayloadConverter)
                else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


DATA_CONVERTER = DataConverter(payload_converter_class=PayloadConverter)
