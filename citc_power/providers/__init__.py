"""Provider registry: type name -> dotted path, imported only when a config uses that type.

An IPMI-only site therefore never imports a cloud SDK, and the command line starts fast.
"""
from __future__ import annotations

import importlib
from typing import Type

from ..errors import ConfigError
from .base import Node, Outcome, PowerState, Provider

REGISTRY: dict[str, str] = {
    "command": "citc_power.providers.command:CommandProvider",
    "oci": "citc_power.providers.oci:OciProvider",
    "openstack": "citc_power.providers.openstack:OpenStackProvider",
    "ipmi": "citc_power.providers.ipmi:IpmiProvider",
    "redfish": "citc_power.providers.redfish:RedfishProvider",
}

# the pip extra that brings each type's SDK
EXTRAS = {"oci": "oci", "openstack": "openstack", "ipmi": "ipmi", "redfish": "redfish"}

__all__ = ["REGISTRY", "Node", "Outcome", "PowerState", "Provider", "provider_class"]


def provider_class(type_name: str, where: str = "type") -> Type[Provider]:
    """Import and return the provider class for ``type_name``.

    :raises ConfigError: the type is unknown, or its SDK is not installed.
    """
    try:
        dotted = REGISTRY[type_name]
    except KeyError:
        raise ConfigError(
            f"{where}: unknown provider type {type_name!r}; use one of {', '.join(sorted(REGISTRY))}"
        ) from None
    module_name, _, attr = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(type_name, type_name)
        raise ConfigError(
            f"{where}: provider type {type_name!r} needs {exc.name or 'a module'} which is not "
            f"installed; run: pip install 'citc-power[{extra}]'"
        ) from None
    cls: Type[Provider] = getattr(module, attr)
    return cls
