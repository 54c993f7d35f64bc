"""The provider contract: what every power provider (cloud or bare metal) implements.

A provider is handed whole batches of nodes so that it can look things up once per call,
pace its requests and run them concurrently. It never raises for a single node: each node
gets an :class:`Outcome`. It raises :class:`~citc_power.errors.ProviderError` only when the
whole call cannot proceed (for example, its credentials cannot be read).
"""
from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, ClassVar, Mapping, Optional, Sequence


class PowerState(enum.Enum):
    """What a provider knows of a node's power."""

    ON = "on"
    OFF = "off"  # switched off, but the machine or instance still exists
    ABSENT = "absent"  # no instance at all (cloud)
    TRANSITION = "transition"  # starting, stopping, provisioning, terminating
    UNKNOWN = "unknown"  # could not be read


@dataclasses.dataclass(frozen=True)
class Node:
    """One Slurm node as a provider sees it: the facts Slurm holds about it."""

    name: str
    features: Mapping[str, str] = dataclasses.field(default_factory=dict)
    address: Optional[str] = None  # Slurm's NodeAddr when it differs from the name
    hostname: Optional[str] = None  # Slurm's NodeHostName when it differs from the name
    state: str = ""  # Slurm's State string, e.g. "IDLE+CLOUD+POWERED_DOWN"
    reason: str = ""  # Slurm's Reason, if any

    def feature(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of a ``key=value`` node feature, or ``default``."""
        return self.features.get(key, default)


# Outcome codes used across providers. Providers may add their own short words.
OK = ""
CAPACITY = "capacity"  # no room at the provider now
LIMIT = "limit"  # a service limit or quota
AUTH = "auth"  # credentials refused
UNREACHABLE = "unreachable"  # nothing answers at the address
TIMEOUT = "timeout"  # asked, but the state never came within the time allowed
CONFIG = "config"  # the node's settings or features are wrong
BMC_ERROR = "bmc_error"
STUCK = "stuck"
ERROR = "error"  # anything else


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one node: success with the facts to tell Slurm, or a coded failure."""

    node: str
    ok: bool
    code: str = OK
    message: str = ""
    address: Optional[str] = None
    hostname: Optional[str] = None
    instance_id: Optional[str] = None
    instance_type: Optional[str] = None

    @classmethod
    def success(cls, node: str, message: str = "", **facts: Optional[str]) -> "Outcome":
        return cls(node=node, ok=True, message=message, **facts)  # type: ignore[arg-type]

    @classmethod
    def failure(cls, node: str, code: str, message: str, **facts: Optional[str]) -> "Outcome":
        return cls(node=node, ok=False, code=code or ERROR, message=message, **facts)  # type: ignore[arg-type]


class Provider(abc.ABC):
    """Powers a set of nodes on and off.

    Subclasses describe their settings in ``SETTINGS`` (name -> help text) and check them in
    :meth:`from_settings` without any I/O to the provider: no network, no BMC traffic.
    Every method takes a batch and returns one result per node, in the order given.
    """

    #: setting name -> one-line help; used by ``citc-power check`` and the docs
    SETTINGS: ClassVar[Mapping[str, str]] = {}
    #: physical machines: one that was powered on but never registered with Slurm is broken
    #: hardware to look at, so resume-fail leaves it DOWN as ``stuck`` instead of retrying it
    BARE_METAL: ClassVar[bool] = False

    def __init__(self, name: str):
        self.name = name

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any]) -> "Provider":
        """Build the provider from its config section.

        :raises ConfigError: listing every problem, each naming the setting and the fix.
        """

    @abc.abstractmethod
    async def power_on(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Start the nodes. A node already on is a success and reports its address."""

    @abc.abstractmethod
    async def power_off(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Stop (or terminate) the nodes. A node already off or absent is a success."""

    @abc.abstractmethod
    async def reboot(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Restart the nodes; an off node is powered on. A cloud provider may rebuild."""

    @abc.abstractmethod
    async def power_state(self, nodes: Sequence[Node]) -> dict[str, PowerState]:
        """Read the power state of each node (name -> state); never changes anything."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release sessions, thread pools and connections. Called once, after the last call."""
