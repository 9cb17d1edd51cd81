"""Connecting to Temporal through Temporal's own envconfig.

`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_PROFILE` and the TOML
profile file (`TEMPORAL_CONFIG_FILE`) work exactly as for the `temporal` CLI. With nothing set
the profile defaults to localhost:7233, namespace `default` (the local dev server).
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig

DEFAULT_ADDRESS = "localhost:7233"


def connect_config(address: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    if address:
        config["target_host"] = address
    config.setdefault("target_host", DEFAULT_ADDRESS)
    return config


async def connect(
    address: str | None = None, *, interceptors: list[Interceptor] | None = None
) -> Client:
    """A client with the pydantic data converter: the one converter of every client here."""
    return await Client.connect(
        **connect_config(address),
        data_converter=pydantic_data_converter,
        interceptors=interceptors or [],
    )
