"""Registering our custom search attributes (common/ui.py) in a Temporal namespace, idempotently:
`billing-recon temporal setup` (a self-hosted cluster), `dev up` and the test session's dev
server. Temporal Cloud namespaces take them from `tcld` or the Cloud UI (docs/temporal-ui.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from common.ui import SEARCH_ATTRIBUTES


class SearchAttributeConflict(Exception):
    """One of our names is registered with another type: not ours to change."""


@dataclass
class Registration:
    namespace: str
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def type_name(value: int) -> str:
    """Keyword, KeywordList, ... (as `temporal operator search-attribute` and tcld spell them)."""
    enum_name = IndexedValueType.Name(value)  # type: ignore[arg-type]
    return "".join(p.capitalize() for p in enum_name.removeprefix("INDEXED_VALUE_TYPE_").split("_"))


async def registered(client: Client, namespace: str | None = None) -> dict[str, int]:
    """The namespace's custom search attributes: name -> indexed value type."""
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace or client.namespace))
    return dict(resp.custom_attributes)


async def register_search_attributes(client: Client, namespace: str | None = None) -> Registration:
    """Add whichever of our search attributes the namespace lacks; those it has are fine.
    Raises SearchAttributeConflict (nothing added) when a name is taken by another type."""
    namespace = namespace or client.namespace
    have = await registered(client, namespace)
    out = Registration(namespace)
    missing: dict[str, int] = {}
    for key in SEARCH_ATTRIBUTES:
        wanted = int(key.indexed_value_type)
        if key.name not in have:
            missing[key.name] = wanted
        elif have[key.name] != wanted:
            raise SearchAttributeConflict(
                f"search attribute {key.name} is registered as {type_name(have[key.name])} in namespace "
                f"{namespace}, not {type_name(wanted)}: remove it or use another namespace")
        else:
            out.existing.append(key.name)
    if missing:
        try:
            await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
                namespace=namespace, search_attributes=missing))  # type: ignore[arg-type]
        except RPCError as e:
            if e.status != RPCStatusCode.ALREADY_EXISTS:  # added meanwhile by another setup
                raise
        out.added = sorted(missing)
    return out


def tcld_command(namespace: str) -> str:
    """The Temporal Cloud command that registers them (`tcld` is not installed by us)."""
    flags = " ".join(f'--search-attribute "{k.name}={type_name(int(k.indexed_value_type))}"'
                     for k in SEARCH_ATTRIBUTES)
    return f"tcld namespace search-attributes add --namespace {namespace} {flags}"
