"""OpenStack provider: one Nova server per Slurm node, through openstacksdk and a clouds.yaml entry.

What it does per call:

- one (paginated) list of the cluster's servers, filtered by a name prefix and the server
  metadata ``cluster``; servers of other clusters in the same project are never touched;
- the requests that follow (create, delete, reboot, rebuild, start) run concurrently in a bounded
  thread pool, paced by a token bucket;
- waiting is one list per round for the whole batch, never one GET per node per round.

Retries: this module owns the retries of HTTP 429 and 503 (``status_code_retries``, honouring a
``Retry-After`` of up to a minute and pausing every request of the batch meanwhile). The SDK's own
status-code retries are switched off, even if clouds.yaml sets them, so a 429 is never retried
twice over. Connection retries (``connect_retries`` in clouds.yaml) stay with the SDK.

Configuration problems: an unknown cloud, a missing or broken clouds.yaml, bad settings raise
:class:`ConfigError` from :meth:`OpenStackProvider.from_settings`. An image, flavor or network that
the cloud does not know is found at first use and gives each node that asked for it an Outcome
with code ``config`` whose message names the setting or node feature to fix: a wrong
``image=`` feature on one node must not stop the others.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import re
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Callable, ClassVar, TypeVar

import keystoneauth1.exceptions as ks_exc
import openstack.config
import openstack.connection
import openstack.exceptions as os_exc
import requests.adapters

from .. import hostlist
from ..errors import ConfigError
from ..pacing import BlockingPool, Deadline, TokenBucket
from ..settings import SettingsReader
from .base import (
    AUTH,
    CAPACITY,
    CONFIG,
    ERROR,
    LIMIT,
    TIMEOUT,
    UNREACHABLE,
    Node,
    Outcome,
    PowerState,
    Provider,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Nova says nothing but this text when the scheduler finds no room (the fault code is a plain 500)
NO_VALID_HOST = "No valid host was found"
RETRY_STATUS = (429, 503)
MAX_RETRY_AFTER = 60.0
# the services whose SDK status-code retries are switched off (this module retries instead)
SERVICES = ("compute", "image", "network", "identity")
REBUILD_REASON = re.compile(r"\brebuild image:(\S+)")

STATE_MAP = {
    "ACTIVE": PowerState.ON,
    "SHUTOFF": PowerState.OFF,
    "SUSPENDED": PowerState.OFF,
    "PAUSED": PowerState.OFF,
    "SHELVED": PowerState.OFF,
    "SHELVED_OFFLOADED": PowerState.OFF,
    "ERROR": PowerState.OFF,
    "BUILD": PowerState.TRANSITION,
    "REBUILD": PowerState.TRANSITION,
    "REBOOT": PowerState.TRANSITION,
    "HARD_REBOOT": PowerState.TRANSITION,
    "RESIZE": PowerState.TRANSITION,
    "VERIFY_RESIZE": PowerState.TRANSITION,
    "REVERT_RESIZE": PowerState.TRANSITION,
    "MIGRATING": PowerState.TRANSITION,
    "PASSWORD": PowerState.TRANSITION,
}
# which of several servers of one name to act on: the one nearest to running
PREFERENCE = {PowerState.ON: 0, PowerState.TRANSITION: 1, PowerState.OFF: 2}


@dataclasses.dataclass(frozen=True)
class _Config:
    cloud: str
    clouds_file: str | None
    cluster: str
    image: str | None
    flavor: str | None
    network: str | None
    keypair: str | None
    security_groups: tuple[str, ...]
    user_data: str | None
    boot_volume_size: int | None
    availability_zone: str | None
    concurrency: int
    max_requests_per_second: float
    status_code_retries: int
    active_timeout: float
    delete_timeout: float
    poll_interval: float
    wait_for_delete: bool


@dataclasses.dataclass(frozen=True)
class _Choice:
    """A value a node asked for, and where it came from (to name it in an error)."""

    value: str
    where: str
    node: str  # the node asking, to name it in log lines
    explicit: bool = False  # asked for in the node's reason, for this reboot only


class _NodeProblem(Exception):
    """One node cannot go on; becomes that node's failure Outcome."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# everything a request can raise: the SDK's own errors, keystoneauth's, requests', and ours
API_ERRORS = (os_exc.SDKException, ks_exc.ClientException, requests.RequestException, _NodeProblem)


class OpenStackProvider(Provider):
    """Nova servers named after the Slurm nodes, tagged with the metadata ``cluster``."""

    SETTINGS: ClassVar[Mapping[str, str]] = {
        "cloud": "name of the cloud in clouds.yaml (OS_CLIENT_CONFIG_FILE, ./clouds.yaml, "
        "~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml); password or application "
        "credential auth",
        "clouds_file": "read this clouds.yaml instead of the standard places (slurmctld runs its "
        "programs with an empty environment)",
        "cluster": "value of the server metadata key 'cluster'; only servers carrying it are "
        "listed, deleted, rebooted or rebuilt",
        "image": "image name or id; node feature image= overrides it",
        "flavor": "flavor name or id; node feature flavor= overrides it",
        "network": "network name or id whose fixed address Slurm gets; node feature network= "
        "overrides it (default: the cloud's choice, first fixed IPv4 address)",
        "keypair": "name of the Nova keypair to install; node feature keypair= overrides it",
        "security_groups": "list of security group names (default: the project's default group)",
        "user_data": "file passed to cloud-init as user data",
        "boot_volume_size": "GB; boot from a new volume of this size made from the image (deleted with the server)",
        "availability_zone": "availability zone to create servers in",
        "concurrency": "parallel API requests (default 10)",
        "max_requests_per_second": "client-side rate limit (default 10)",
        "status_code_retries": "retries of a request answered 429 or 503, honouring Retry-After (default 6)",
        "active_timeout": "seconds to wait for a server to become ACTIVE (default 300)",
        "delete_timeout": "seconds to wait for a server to go, with wait_for_delete (default 120)",
        "poll_interval": "seconds between two lists of the servers while waiting (default 5)",
        "wait_for_delete": "power off waits until the servers are gone (default false)",
    }

    def __init__(self, name: str, config: _Config, region: Any):
        super().__init__(name)
        self.config = config
        self._region = region  # openstack.config CloudRegion, read from clouds.yaml
        self._conn: openstack.connection.Connection | None = None
        self._pool: BlockingPool | None = None
        self._bucket: TokenBucket | None = None
        self._bucket_loop: asyncio.AbstractEventLoop | None = None
        self._paused_until = 0.0
        self._flavors: dict[str, tuple[str, str]] | None = None  # name and id -> (id, name)
        self._found: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, name-or-id) -> (id, name)

    # ------------------------------------------------------------------ settings
    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any]) -> OpenStackProvider:
        """Check the settings and find the cloud in clouds.yaml; no request to the cloud.

        :raises ConfigError: listing every problem, each naming the setting and the fix.
        """
        s = SettingsReader(name, settings, cls.SETTINGS)
        config = _Config(
            cloud=s.str("cloud"),
            clouds_file=_opt_str(s.path("clouds_file", None)),
            cluster=s.str("cluster"),
            image=s.str("image", None),
            flavor=s.str("flavor", None),
            network=s.str("network", None),
            keypair=s.str("keypair", None),
            security_groups=tuple(s.list("security_groups", [])),
            user_data=_read_user_data(s),
            boot_volume_size=s.int("boot_volume_size", None, minimum=1),
            availability_zone=s.str("availability_zone", None),
            concurrency=s.int("concurrency", 10, minimum=1),
            max_requests_per_second=s.float("max_requests_per_second", 10.0, minimum=0.1),
            status_code_retries=s.int("status_code_retries", 6, minimum=0),
            active_timeout=s.float("active_timeout", 300.0, minimum=1),
            delete_timeout=s.float("delete_timeout", 120.0, minimum=1),
            poll_interval=s.float("poll_interval", 5.0, minimum=0.05),
            wait_for_delete=s.bool("wait_for_delete", False),
        )
        region = None
        if config.cloud and not any(p.startswith(s.where("clouds_file")) for p in s.problems):
            region = _load_cloud(s, config.cloud, config.clouds_file)
        s.done()
        return cls(name, config, region)

    # ------------------------------------------------------------------ the contract
    async def power_on(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Create the servers that are missing and wait until every one is ACTIVE.

        A server of the node's name and cluster that exists already is reported (started if
        SHUTOFF), never duplicated; one in ERROR is deleted and made again. A server that goes
        to ERROR gives the Nova fault (code ``capacity`` for "No valid host was found") and is
        deleted. Unknown image/flavor/network give code ``config`` naming the setting or feature.

        :raises ConfigError: the clouds.yaml entry cannot be used (e.g. missing auth_url).
        """
        return await self._whole_call(nodes, self._power_on)

    async def power_off(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Delete the nodes' servers, in ERROR too; a node without a server is a success.

        With ``wait_for_delete``, waits until the servers are gone (code ``timeout`` if not).

        :raises ConfigError: the clouds.yaml entry cannot be used.
        """
        return await self._whole_call(nodes, self._power_off)

    async def reboot(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Rebuild a server whose image differs from the node's target image, else reboot it.

        The target image is, first found: the node's Slurm reason ``rebuild image:<name-or-id>``,
        its feature ``image=``, the setting ``image``. Reboot is soft, hard if Nova refuses soft
        (or the server is not ACTIVE). A node without a server is powered on.

        :raises ConfigError: the clouds.yaml entry cannot be used.
        """
        return await self._whole_call(nodes, self._reboot)

    async def power_state(self, nodes: Sequence[Node]) -> dict[str, PowerState]:
        """Map each node's server status to a PowerState with one list; UNKNOWN if it fails.

        :raises ConfigError: the clouds.yaml entry cannot be used.
        """
        if not nodes:
            return {}
        try:
            servers = await self._list([n.name for n in nodes])
        except ConfigError:
            raise
        except API_ERRORS as exc:  # the whole list failed: nothing is known
            log.warning("%s: power state unknown: %s", _names(nodes), _describe(exc)[1])
            return {n.name: PowerState.UNKNOWN for n in nodes}
        return {n.name: _state(_pick(servers.get(n.name, []))) for n in nodes}

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ power on
    async def _power_on(self, nodes: Sequence[Node], servers: dict[str, list[Any]]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        pending: dict[str, tuple[str, bool]] = {}  # node -> (server id, delete it if it fails)
        create: list[Node] = []
        broken: list[tuple[Node, Any]] = []
        stopped: list[tuple[Node, Any]] = []
        for node in nodes:
            server = _pick(servers.get(node.name, []))
            state = _state(server)
            if state is PowerState.ABSENT:
                create.append(node)
            elif state is PowerState.ON:
                outcomes[node.name] = await self._report(node, server, "already running")
            elif state is PowerState.TRANSITION:
                pending[node.name] = (server.id, False)
            elif server.status in ("ERROR", "SHUTOFF"):
                (broken if server.status == "ERROR" else stopped).append((node, server))
            else:
                outcomes[node.name] = Outcome.failure(
                    node.name,
                    ERROR,
                    f"server {server.id} is {server.status}; resume, unshelve or delete it",
                    instance_id=server.id,
                )
        # a server left in ERROR by an earlier attempt is replaced, not reported
        await asyncio.gather(*(self._delete_quietly(n.name, s) for n, s in broken))
        await asyncio.gather(*(self._start(n, s, pending, outcomes) for n, s in stopped))
        await self._create_all(create + [n for n, _ in broken], pending, outcomes)
        outcomes.update(await self._settle(nodes, pending))
        return outcomes

    async def _start(
        self,
        node: Node,
        server: Any,
        pending: dict[str, tuple[str, bool]],
        outcomes: dict[str, Outcome],
    ) -> None:
        try:
            await self._call(node.name, self._compute().start_server, server)
            log.info("%s: starting server %s", node.name, server.id)
            pending[node.name] = (server.id, False)
        except API_ERRORS as exc:
            outcomes[node.name] = _failure(node.name, exc, f"start of server {server.id}", instance_id=server.id)

    async def _create_all(
        self,
        nodes: Sequence[Node],
        pending: dict[str, tuple[str, bool]],
        outcomes: dict[str, Outcome],
    ) -> None:
        ready: list[tuple[Node, dict[str, Any]]] = []
        for node in nodes:  # one at a time: look-ups are cached, so each image/flavor is found once
            try:
                ready.append((node, await self._server_attrs(node)))
            except API_ERRORS as exc:
                outcomes[node.name] = _failure(node.name, exc, "look-up")
        results = await asyncio.gather(*(self._create(n, a) for n, a in ready), return_exceptions=True)
        for (node, _), result in zip(ready, results):
            if isinstance(result, BaseException):
                outcomes[node.name] = _failure(node.name, result, "create")
            else:
                pending[node.name] = (result, True)

    async def _create(self, node: Node, attrs: dict[str, Any]) -> str:
        """Create the node's server; return its id."""
        server = await self._call(node.name, self._compute().create_server, **attrs)
        log.info("%s: created server %s (flavor %s)", node.name, server.id, attrs["flavor_id"])
        return str(server.id)

    async def _server_attrs(self, node: Node) -> dict[str, Any]:
        """The create request for ``node``; raises _NodeProblem naming a bad setting or feature."""
        cfg = self.config
        image_id, _ = await self._resolve("image", self._need(node, "image", cfg.image))
        flavor_id, _ = await self._resolve("flavor", self._need(node, "flavor", cfg.flavor))
        attrs: dict[str, Any] = {
            "name": node.name,
            "flavor_id": flavor_id,
            "metadata": {"cluster": cfg.cluster},
        }
        network = self._choice(node, "network", cfg.network)
        if network is not None:
            attrs["networks"] = [{"uuid": (await self._resolve("network", network))[0]}]
        keypair = self._choice(node, "keypair", cfg.keypair)
        if keypair is not None:
            attrs["key_name"] = keypair.value
        if cfg.security_groups:
            attrs["security_groups"] = [{"name": g} for g in cfg.security_groups]
        if cfg.user_data is not None:
            attrs["user_data"] = base64.b64encode(cfg.user_data.encode()).decode()
        if cfg.availability_zone:
            attrs["availability_zone"] = cfg.availability_zone
        if cfg.boot_volume_size:
            attrs["block_device_mapping"] = [
                {
                    "boot_index": 0,
                    "uuid": image_id,
                    "source_type": "image",
                    "destination_type": "volume",
                    "volume_size": cfg.boot_volume_size,
                    "delete_on_termination": True,
                }
            ]
        else:
            attrs["image_id"] = image_id
        return attrs

    # ------------------------------------------------------------------ power off
    async def _power_off(self, nodes: Sequence[Node], servers: dict[str, list[Any]]) -> dict[str, Outcome]:
        jobs = [self._delete_node(n, servers.get(n.name, [])) for n in nodes]
        outcomes = dict(zip((n.name for n in nodes), await asyncio.gather(*jobs)))
        if self.config.wait_for_delete:
            gone = {n.name: [s.id for s in servers.get(n.name, [])] for n in nodes if outcomes[n.name].ok}
            outcomes.update(await self._wait_gone({k: v for k, v in gone.items() if v}))
        return outcomes

    async def _delete_node(self, node: Node, servers: list[Any]) -> Outcome:
        if not servers:
            return Outcome.success(node.name, "no server")
        ids = [s.id for s in servers]
        for server in servers:
            try:
                await self._call(node.name, self._compute().delete_server, server, ignore_missing=True)
            except API_ERRORS as exc:
                return _failure(node.name, exc, f"delete of server {server.id}", instance_id=server.id)
        log.info("%s: deleted server %s", node.name, ", ".join(ids))
        return Outcome.success(node.name, f"deleted server {', '.join(ids)}", instance_id=ids[0])

    async def _wait_gone(self, wanted: dict[str, list[str]]) -> dict[str, Outcome]:
        deadline = Deadline(self.config.delete_timeout)
        while wanted and not deadline.expired():
            await asyncio.sleep(min(self.config.poll_interval, deadline.remaining()))
            try:
                left = {s.id for group in (await self._list(list(wanted))).values() for s in group}
            except API_ERRORS as exc:
                log.warning(
                    "%s: list while waiting for deletion failed: %s",
                    hostlist.collapse(wanted),
                    _describe(exc)[1],
                )
                continue
            wanted = {name: ids for name, ids in wanted.items() if left.intersection(ids)}
        for name, ids in wanted.items():
            log.error("%s: server %s still there after %.0f s", name, ids[0], self.config.delete_timeout)
        return {
            name: Outcome.failure(
                name,
                TIMEOUT,
                f"server {ids[0]} not gone after {self.config.delete_timeout:.0f} s",
                instance_id=ids[0],
            )
            for name, ids in wanted.items()
        }

    # ------------------------------------------------------------------ reboot
    async def _reboot(self, nodes: Sequence[Node], servers: dict[str, list[Any]]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        pending: dict[str, tuple[str, bool]] = {}
        plans: list[tuple[Node, Any, tuple[str, str] | None]] = []
        absent: list[Node] = []
        for node in nodes:  # decide first, one at a time, so each image is looked up once
            server = _pick(servers.get(node.name, []))
            if _state(server) is PowerState.ABSENT:
                absent.append(node)
                continue
            try:
                plans.append((node, server, await self._rebuild_image(node, server)))
            except API_ERRORS as exc:
                outcomes[node.name] = _failure(node.name, exc, "look-up", instance_id=server.id)
        results = await asyncio.gather(*(self._restart(*plan) for plan in plans), return_exceptions=True)
        for (node, server, image), result in zip(plans, results):
            if isinstance(result, BaseException):
                outcomes[node.name] = _failure(node.name, result, f"reboot of server {server.id}", instance_id=server.id)
            else:
                pending[node.name] = (server.id, image is not None)  # a failed rebuild is deleted
        if absent:
            log.info("%s: no server to reboot; creating", _names(absent))
            await self._create_all(absent, pending, outcomes)
        outcomes.update(await self._settle(nodes, pending))
        return outcomes

    async def _rebuild_image(self, node: Node, server: Any) -> tuple[str, str] | None:
        """(id, name) of the image to rebuild ``server`` with, or None if it already runs it."""
        target = self._target_image(node)
        current = _image_id(server)
        # a server booted from a volume shows no image: rebuild it only when asked in the reason
        if target is None or (current is None and not target.explicit):
            return None
        image = await self._resolve("image", target)
        return image if image[0] != current else None

    async def _restart(self, node: Node, server: Any, image: tuple[str, str] | None) -> None:
        if image is not None:
            await self._call(node.name, self._compute().rebuild_server, server, image=image[0])
            log.info(
                "%s: rebuilding server %s with image %s (was %s)",
                node.name,
                server.id,
                image[1],
                _image_id(server) or "a volume",
            )
        elif _state(server) is PowerState.TRANSITION:
            log.info("%s: server %s is in %s already; waiting", node.name, server.id, server.status)
        else:
            await self._reboot_server(node, server)

    async def _reboot_server(self, node: Node, server: Any) -> None:
        """Soft reboot; hard if the server is not ACTIVE or Nova refuses the soft one."""
        if server.status == "ACTIVE":
            try:
                await self._call(node.name, self._compute().reboot_server, server, "SOFT")
                log.info("%s: soft reboot of server %s", node.name, server.id)
                return
            except (os_exc.ConflictException, os_exc.BadRequestException) as exc:
                log.warning(
                    "%s: soft reboot of server %s refused (%s); hard reboot",
                    node.name,
                    server.id,
                    _describe(exc)[1],
                )
        await self._call(node.name, self._compute().reboot_server, server, "HARD")
        log.info("%s: hard reboot of server %s (was %s)", node.name, server.id, server.status)

    def _target_image(self, node: Node) -> _Choice | None:
        match = REBUILD_REASON.search(node.reason or "")
        if match:
            return _Choice(match.group(1), f"reason 'rebuild image:' of node {node.name}", node.name, explicit=True)
        return self._choice(node, "image", self.config.image)

    # ------------------------------------------------------------------ waiting and reporting
    async def _settle(self, nodes: Sequence[Node], pending: dict[str, tuple[str, bool]]) -> dict[str, Outcome]:
        """Wait for the pending servers, then turn each into its node's Outcome."""
        if not pending:
            return {}
        by_name = {n.name: n for n in nodes}
        finished, left = await self._wait_active({k: v[0] for k, v in pending.items()})
        outcomes: dict[str, Outcome] = {}
        for name, server in finished.items():
            if server is None:
                outcomes[name] = Outcome.failure(
                    name,
                    ERROR,
                    f"server {pending[name][0]} disappeared",
                    instance_id=pending[name][0],
                )
            elif server.status == "ACTIVE":
                outcomes[name] = await self._report(by_name[name], server, "running")
            else:
                outcomes[name] = await self._failed(by_name[name], server, delete=pending[name][1])
        for name, sid in left.items():
            log.error("%s: server %s not ACTIVE after %.0f s", name, sid, self.config.active_timeout)
            outcomes[name] = Outcome.failure(
                name,
                TIMEOUT,
                f"server {sid} not ACTIVE after {self.config.active_timeout:.0f} s",
                instance_id=sid,
            )
        return outcomes

    async def _wait_active(self, pending: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        """Poll with one list per round until each server (node -> id) has no task in progress."""
        deadline = Deadline(self.config.active_timeout)
        finished: dict[str, Any] = {}
        while pending and not deadline.expired():
            await asyncio.sleep(min(self.config.poll_interval, deadline.remaining()))
            try:
                listed = await self._list(list(pending))
            except API_ERRORS as exc:
                log.warning("%s: list while waiting failed: %s", hostlist.collapse(pending), _describe(exc)[1])
                continue
            by_id = {s.id: s for group in listed.values() for s in group}
            for name, sid in list(pending.items()):
                server = by_id.get(sid)
                if server is None or (_state(server) is not PowerState.TRANSITION and not server.task_state):
                    finished[name] = server
                    del pending[name]
        return finished, pending

    async def _failed(self, node: Node, server: Any, delete: bool) -> Outcome:
        fault = server.fault or {}
        message = str(fault.get("message") or f"server went to {server.status}")
        code = CAPACITY if NO_VALID_HOST in message else ERROR
        log.error("%s: server %s is %s: %s", node.name, server.id, server.status, message)
        if delete:
            await self._delete_quietly(node.name, server)
        return Outcome.failure(node.name, code, message, instance_id=server.id)

    async def _report(self, node: Node, server: Any, message: str) -> Outcome:
        try:
            network = self._choice(node, "network", self.config.network)
            net_name = (await self._resolve("network", network))[1] if network is not None else None
            flavor = await self._flavor_name(server)
        except API_ERRORS as exc:
            return _failure(node.name, exc, "look-up", instance_id=server.id)
        address = _address(server, net_name)
        if address is None:
            where = f"network {net_name}" if net_name else "any network"
            return Outcome.failure(
                node.name,
                ERROR,
                f"server {server.id} has no fixed address on {where}",
                instance_id=server.id,
            )
        log.info("%s: server %s %s at %s", node.name, server.id, message, address)
        return Outcome.success(
            node.name,
            f"server {message}",
            address=address,
            hostname=node.name,
            instance_id=server.id,
            instance_type=flavor,
        )

    async def _delete_quietly(self, node: str, server: Any) -> None:
        try:
            await self._call(node, self._compute().delete_server, server, ignore_missing=True)
            log.info("%s: deleted server %s (was %s)", node, server.id, server.status)
        except API_ERRORS as exc:
            log.error("%s: delete of server %s failed: %s", node, server.id, _describe(exc)[1])

    # ------------------------------------------------------------------ look-ups
    def _choice(self, node: Node, key: str, configured: str | None) -> _Choice | None:
        feature = node.feature(key)
        if feature:
            return _Choice(feature, f"feature {key}={feature} of node {node.name}", node.name)
        if configured:
            return _Choice(configured, f"providers.{self.name}.{key}", node.name)
        return None

    def _need(self, node: Node, key: str, configured: str | None) -> _Choice:
        choice = self._choice(node, key, configured)
        if choice is None:
            raise _NodeProblem(
                CONFIG,
                f"no {key} for node {node.name}: set providers.{self.name}.{key} or the node feature {key}=",
            )
        return choice

    async def _resolve(self, kind: str, choice: _Choice) -> tuple[str, str]:
        """(id, name) of the image, flavor or network named or numbered ``choice.value``."""
        key = (kind, choice.value)
        if key not in self._found:
            if kind == "flavor":
                table = await self._flavor_table(choice.node)
                found = table.get(choice.value)
            else:
                found = await self._find(kind, choice.value, choice.node)
            if found is None:
                raise _NodeProblem(
                    CONFIG,
                    f"{choice.where}: no {kind} {choice.value!r} in cloud {self.config.cloud!r}; use an existing name or id",
                )
            self._found[key] = found
        return self._found[key]

    async def _find(self, kind: str, value: str, who: str) -> tuple[str, str] | None:
        conn = self._connection()
        finder = conn.image.find_image if kind == "image" else conn.network.find_network
        try:
            found = await self._call(who, finder, value, ignore_missing=False)
        except os_exc.NotFoundException:
            return None
        except os_exc.DuplicateResource:
            raise _NodeProblem(CONFIG, f"several {kind}s are called {value!r}; use the id instead") from None
        return str(found.id), str(found.name)

    async def _flavor_table(self, who: str) -> dict[str, tuple[str, str]]:
        if self._flavors is None:
            flavors = await self._call(who, lambda: list(self._compute().flavors(details=True)))
            table = {str(f.id): (str(f.id), str(f.name)) for f in flavors}
            table.update({str(f.name): (str(f.id), str(f.name)) for f in flavors})
            self._flavors = table
        return self._flavors

    async def _flavor_name(self, server: Any) -> str | None:
        flavor = server.flavor
        if flavor is None:
            return None
        if flavor.original_name:  # microversion 2.47 and later embed the flavor
            return str(flavor.original_name)
        found = (await self._flavor_table(server.name)).get(str(flavor.id))
        return found[1] if found else str(flavor.id)

    # ------------------------------------------------------------------ requests
    async def _whole_call(
        self,
        nodes: Sequence[Node],
        body: Callable[[Sequence[Node], dict[str, list[Any]]], Awaitable[dict[str, Outcome]]],
    ) -> list[Outcome]:
        """List once, run ``body``; a failed list fails every node with the reason."""
        if not nodes:
            return []
        try:
            servers = await self._list([n.name for n in nodes])
        except ConfigError:
            raise
        except API_ERRORS as exc:
            code, message = _describe(exc)
            log.error("%s: cannot list servers: %s", _names(nodes), message)
            return [Outcome.failure(n.name, code, f"cannot list servers: {message}") for n in nodes]
        outcomes = await body(nodes, servers)
        return [outcomes.get(n.name) or Outcome.failure(n.name, ERROR, "no result") for n in nodes]

    async def _list(self, names: Iterable[str]) -> dict[str, list[Any]]:
        """This cluster's servers called one of ``names`` (name -> servers), in one paged list."""
        wanted = set(names)
        prefix = os.path.commonprefix(sorted(wanted))
        query = {"name": "^" + re.escape(prefix)} if prefix else {}
        compute = self._compute()
        servers = await self._call(hostlist.collapse(wanted), lambda: list(compute.servers(details=True, **query)))
        found: dict[str, list[Any]] = {}
        for server in servers:
            if server.name in wanted and (server.metadata or {}).get("cluster") == self.config.cluster:
                found.setdefault(server.name, []).append(server)
        return found

    async def _call(self, who: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking SDK request for the node(s) ``who``, paced; retry 429/503."""
        attempt = 0
        while True:
            await self._wait_turn()
            try:
                return await self._workers().run(fn, *args, **kwargs)
            except os_exc.HttpException as exc:
                if exc.status_code not in RETRY_STATUS or attempt >= self.config.status_code_retries:
                    raise
                delay = _retry_delay(exc, attempt)
                attempt += 1
                self._paused_until = max(self._paused_until, time.monotonic() + delay)
                log.warning(
                    "%s: HTTP %s from %s; retry %d of %d in %.1f s",
                    who,
                    exc.status_code,
                    _url_path(exc),
                    attempt,
                    self.config.status_code_retries,
                    delay,
                )
            except (
                ks_exc.MissingRequiredOptions,
                ks_exc.AuthPluginException,
                os_exc.ConfigException,
            ) as exc:
                raise ConfigError(
                    f"providers.{self.name}.cloud: clouds.yaml entry {self.config.cloud!r} cannot be used: {_one_line(exc)}"
                ) from None

    async def _wait_turn(self) -> None:
        """Wait out a pause set by a 429/503, then for a token of the rate limit."""
        loop = asyncio.get_running_loop()
        if self._bucket is None or self._bucket_loop is not loop:  # a bucket's lock lives in one loop
            self._bucket = TokenBucket(self.config.max_requests_per_second)
            self._bucket_loop = loop
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        await self._bucket.acquire()

    def _workers(self) -> BlockingPool:
        if self._pool is None:
            self._pool = BlockingPool(self.config.concurrency, name=f"openstack-{self.name}")
        return self._pool

    def _connection(self) -> openstack.connection.Connection:
        if self._conn is None:
            conn = openstack.connection.Connection(config=self._region)
            # as many pooled HTTP connections as threads, else urllib3 drops and reopens them
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, self.config.concurrency))
            conn.session.session.mount("https://", adapter)
            conn.session.session.mount("http://", adapter)
            self._conn = conn
        return self._conn

    def _compute(self) -> Any:
        return self._connection().compute


# ---------------------------------------------------------------------- helpers
def _load_cloud(s: SettingsReader, cloud: str, clouds_file: str | None) -> Any:
    """The CloudRegion of ``cloud`` from clouds.yaml, with the SDK's status-code retries off."""
    where = clouds_file or "clouds.yaml (OS_CLIENT_CONFIG_FILE, ./, ~/.config/openstack/, /etc/openstack/)"
    no_retries: dict[str, Any] = {f"{service}_status_code_retries": 0 for service in SERVICES}
    try:
        loader = openstack.config.OpenStackConfig(config_files=[clouds_file] if clouds_file else None, app_name="citc-power")
        if cloud not in loader.get_cloud_names():
            s.problem("cloud", f"no cloud {cloud!r} in {where}; add it there or fix the name")
            return None
        return loader.get_one(cloud=cloud, status_code_retries=0, **no_retries)
    except Exception as exc:  # noqa: BLE001 - a broken clouds.yaml raises YAML, key and SDK errors
        s.problem("cloud", f"cloud {cloud!r} in {where} cannot be used: {_one_line(exc)}")
    return None


def _read_user_data(s: SettingsReader) -> str | None:
    path = s.path("user_data", None)
    if path is None or not path.exists():
        return None
    try:
        return str(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        s.problem("user_data", f"{path} cannot be read ({exc}); fix its permissions or encoding")
        return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _names(nodes: Sequence[Node]) -> str:
    return hostlist.collapse(n.name for n in nodes)


def _state(server: Any) -> PowerState:
    if server is None or server.task_state == "deleting" or server.status in ("DELETED", "SOFT_DELETED"):
        return PowerState.ABSENT
    return STATE_MAP.get(server.status, PowerState.UNKNOWN)


def _pick(servers: list[Any]) -> Any:
    """The server to act on among those of one node name (duplicates left by earlier races)."""
    alive = [s for s in servers if _state(s) is not PowerState.ABSENT]
    if not alive:
        return None
    return min(alive, key=lambda s: PREFERENCE.get(_state(s), 3))


def _image_id(server: Any) -> str | None:
    image = server.image
    return str(image.id) if image is not None and image.id else None


def _address(server: Any, network: str | None) -> str | None:
    """The fixed IPv4 address on ``network`` (any network if None)."""
    addresses = server.addresses or {}
    entries = addresses.get(network, []) if network else [e for v in addresses.values() for e in v]
    for entry in entries:
        if entry.get("OS-EXT-IPS:type", "fixed") == "fixed" and entry.get("version", 4) == 4:
            return str(entry["addr"])
    return None


def _retry_delay(exc: os_exc.HttpException, attempt: int) -> float:
    """Seconds to wait: the server's Retry-After (capped), else exponential back-off from 0.5 s."""
    header = exc.response.headers.get("Retry-After") if exc.response is not None else None
    try:
        if header is not None:
            return min(max(float(header), 0.0), MAX_RETRY_AFTER)
    except ValueError:  # an HTTP date: rare from OpenStack, back off as if absent
        pass
    return float(min(0.5 * 2**attempt, MAX_RETRY_AFTER))


def _describe(exc: BaseException) -> tuple[str, str]:
    """(outcome code, one-line message) for an exception from the SDK or from this module."""
    if isinstance(exc, _NodeProblem):
        return exc.code, str(exc)
    if isinstance(exc, os_exc.HttpException):
        status = exc.status_code or 0
        detail = _one_line(exc.details or exc.message or exc)
        code = {401: AUTH, 403: LIMIT, 413: LIMIT, 429: LIMIT}.get(status, ERROR)
        return code, f"HTTP {status}: {detail}"
    if isinstance(exc, ks_exc.Unauthorized):
        return AUTH, f"credentials refused: {_one_line(exc)}"
    if isinstance(exc, (ks_exc.ConnectionError, requests.exceptions.ConnectionError)):
        return UNREACHABLE, _one_line(exc)
    if isinstance(exc, (ks_exc.ClientException, os_exc.SDKException)):
        return ERROR, _one_line(exc)
    return ERROR, f"{type(exc).__name__}: {_one_line(exc)}"


def _failure(node: str, exc: BaseException, what: str, **facts: str | None) -> Outcome:
    code, message = _describe(exc)
    if not isinstance(exc, _NodeProblem):
        message = f"{what} failed: {message}"
    log.error("%s: %s", node, message)
    return Outcome.failure(node, code, message, **facts)


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _url_path(exc: os_exc.HttpException) -> str:
    url = getattr(exc, "url", None) or (exc.response.url if exc.response is not None else "")
    return re.sub(r"^\w+://[^/]+", "", str(url)) or "the cloud"
