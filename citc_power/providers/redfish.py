"""The ``redfish`` provider: bare-metal power through a node's Redfish BMC, using sushy.

    providers:
      bmc:
        type: redfish
        address: "https://{node}-bmc"        # or a bare host ("{node}-bmc" -> https://…:port)
        system_path: "/redfish/v1/Systems/1" # default: the one system the BMC lists
        username: admin
        password_file: /etc/citc/bmc.pw      # mode 0600; or password_env
        ca_file: /etc/citc/bmc-ca.pem        # or verify: false
        soft_off_timeout: 20
        node_address: "{node}-data"          # NodeAddr to report to Slurm (optional)

Where each BMC is, its credentials and the NodeAddr to report come from the settings shared with
the other bare-metal providers (:mod:`.bmc`: ``address``, ``addresses``, ``manifest``, ``port``,
``username``, ``password_file``/``password_env``, ``node_address``).

On: ``On`` (or ``ForceOn``), then the power state is read until it says On. Off:
``GracefulShutdown``, up to ``soft_off_timeout`` for the OS to halt, then ``ForceOff``.
Reboot: ``ForceRestart`` (or ``PowerCycle``); a node that is off is switched on instead.
sushy owns the HTTP retries (``http_retries``); this module only polls the power state, within
a bounded time. TLS trust comes from ``verify``/``ca_file`` alone: the environment's
REQUESTS_CA_BUNDLE, proxies and .netrc are not used for BMC traffic.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Callable, ClassVar, TypeVar
from urllib.parse import urlsplit

import requests
import sushy
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from ..errors import ConfigError, ProviderError
from ..pacing import BlockingPool, Deadline
from ..settings import SettingsReader
from .base import (
    AUTH,
    BMC_ERROR,
    CONFIG,
    ERROR,
    TIMEOUT,
    UNREACHABLE,
    Node,
    Outcome,
    PowerState,
    Provider,
)
from .bmc import BMC_SETTINGS, BmcDirectory, BmcEndpoint

log = logging.getLogger(__name__)

T = TypeVar("T")
Action = Callable[["Target"], Awaitable[Outcome]]

TLS = "tls"  # the BMC's certificate is not trusted, or the TLS handshake failed
HTTPS_PORT = 443

POWER_STATES = {
    sushy.PowerState.ON: PowerState.ON,
    sushy.PowerState.OFF: PowerState.OFF,
    sushy.PowerState.POWERING_ON: PowerState.TRANSITION,
    sushy.PowerState.POWERING_OFF: PowerState.TRANSITION,
    sushy.PowerState.PAUSED: PowerState.ON,  # powered, just halted
}

AUTH_METHODS: dict[str, type[sushy_auth.AuthBase]] = {
    "basic": sushy_auth.BasicAuth,
    "session": sushy_auth.SessionAuth,
    "auto": sushy_auth.SessionOrBasicAuth,
}

# reset types to ask for, best first: a BMC lists the ones it accepts, and not all list all
POWER_ON = (sushy.ResetType.ON, sushy.ResetType.FORCE_ON)
SOFT_OFF = (sushy.ResetType.GRACEFUL_SHUTDOWN,)
HARD_OFF = (sushy.ResetType.FORCE_OFF,)
RESTART = (sushy.ResetType.FORCE_RESTART, sushy.ResetType.POWER_CYCLE)

REDFISH_SETTINGS: dict[str, str] = {
    "address": "BMC URL or host template, {node} is the node name, e.g. 'https://{node}-bmc'; "
    "a bare host means https",
    "port": "HTTPS port for BMC addresses given as a bare host (default 443)",
    "system_path": "Redfish system path template, e.g. '/redfish/v1/Systems/{node}' "
    "(default: the only system the BMC lists)",
    "system_paths": "per-node system path: node: /redfish/v1/Systems/<id>; wins over system_path",
    "auth": "basic, session, or auto (session, falling back to basic); default basic",
    "verify": "check the BMC's TLS certificate (default true)",
    "ca_file": "CA bundle that signed the BMC certificates (default: the system bundle)",
    "connect_timeout": "seconds to wait for a BMC to accept a connection (default 5)",
    "read_timeout": "seconds to wait for a BMC to answer one request (default 30)",
    "http_retries": "sushy's attempts when a BMC cannot be reached, and its retries of a GET "
    "answered with 5xx (default 2)",
    "retry_delay": "seconds between those attempts (default 1)",
    "power_timeout": "seconds to wait for the power state to follow a reset (default 60)",
    "soft_off_timeout": "seconds to wait after GracefulShutdown before ForceOff; 0 = ForceOff "
    "at once (default 20; keep it below Slurm's SuspendTimeout)",
    "poll_interval": "seconds between power state reads while waiting (default 2)",
    "concurrency": "BMC requests in flight at once (default 16)",
}


@dataclasses.dataclass(frozen=True)
class RedfishOptions:
    """Everything but the BMC directory: how to talk to a BMC and how long to wait."""

    system_path: str | None = None
    system_paths: Mapping[str, str] = dataclasses.field(default_factory=dict)
    auth: str = "basic"
    verify: bool | str = True  # a str is a CA bundle path
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    http_retries: int = 2
    retry_delay: float = 1.0
    power_timeout: float = 60.0
    soft_off_timeout: float = 20.0
    poll_interval: float = 2.0
    concurrency: int = 16


@dataclasses.dataclass(frozen=True)
class Target:
    """One node's Redfish system: which BMC, which system on it, with which credentials."""

    node: str
    url: str
    system_path: str | None  # None: the only system the BMC lists
    endpoint: BmcEndpoint

    @property
    def client_key(self) -> tuple[str, str, str]:
        return (self.url, self.endpoint.username, repr(self.endpoint.password))


class _Connector(sushy_connector.Connector):
    """sushy's connector, deaf to the environment.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace ``verify=True``, sends traffic
    through HTTPS_PROXY and reads ~/.netrc, all when ``trust_env`` is set. BMC traffic must
    follow this provider's ``verify``/``ca_file`` only, and go straight to the BMC.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._session.trust_env = False


@dataclasses.dataclass
class _Client:
    root: sushy.Sushy
    auth: sushy_auth.AuthBase
    connector: _Connector

    def close(self) -> None:
        try:
            self.auth.close()  # ends a Redfish session, if one was opened
        finally:
            self.connector.close()


class RedfishProvider(Provider):
    """Powers bare-metal nodes through their Redfish BMCs (sushy in a bounded thread pool)."""

    SETTINGS: ClassVar[Mapping[str, str]] = {**BMC_SETTINGS, **REDFISH_SETTINGS}
    BARE_METAL = True

    def __init__(self, name: str, directory: BmcDirectory, options: RedfishOptions):
        super().__init__(name)
        self.directory = directory
        self.options = options
        self._pool = BlockingPool(options.concurrency, name=f"redfish-{name}")
        self._clients: dict[tuple[str, str, str], _Client] = {}
        self._client_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self._default_systems: dict[tuple[str, str, str], str] = {}  # found by listing Systems
        # BMCs that could not be reached during the current call: the other nodes behind the
        # same BMC fail at once instead of each waiting out the timeouts again
        self._unreachable: dict[tuple[str, str, str], ProviderError] = {}

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any]) -> RedfishProvider:
        """Check the settings and build the provider; nothing is sent to any BMC.

        :raises ConfigError: listing every problem, each naming the setting and the fix.
        """
        s = SettingsReader(name, settings, cls.SETTINGS)
        directory = BmcDirectory.read(s, default_port=HTTPS_PORT, template_needs_node=False)
        _check_bmc_urls(s, directory)
        options = _read_options(s)
        s.done()
        return cls(name, directory, options)

    async def power_on(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Switch the nodes on and wait until their BMCs say On; already on is a success.

        Never raises: a node that cannot be switched on gets a failed Outcome with code
        ``auth``, ``unreachable``, ``timeout``, ``tls``, ``config`` or ``bmc_error``.
        """
        return await self._each(nodes, self._power_on)

    async def power_off(self, nodes: Sequence[Node]) -> list[Outcome]:
        """GracefulShutdown, ForceOff after ``soft_off_timeout``, and wait for Off.

        Already off is a success. Never raises; failures are coded Outcomes as for power_on.
        """
        return await self._each(nodes, self._power_off)

    async def reboot(self, nodes: Sequence[Node]) -> list[Outcome]:
        """ForceRestart the nodes (an off node is switched on) and wait for On.

        Never raises; failures are coded Outcomes as for power_on.
        """
        return await self._each(nodes, self._reboot)

    async def power_state(self, nodes: Sequence[Node]) -> dict[str, PowerState]:
        """Read each node's power state; a node whose BMC cannot be read is UNKNOWN."""
        self._unreachable.clear()
        states = await asyncio.gather(*(self._state_of(node) for node in nodes))
        return {node.name: state for node, state in zip(nodes, states)}

    async def close(self) -> None:
        """End Redfish sessions, close HTTP connections and the thread pool."""
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            try:
                await self._pool.run(client.close)
            except Exception:  # closing is best effort: the work is already done
                log.debug("closing a Redfish client failed", exc_info=True)
        self._pool.close()

    # -- one node at a time ------------------------------------------------------------------

    async def _power_on(self, target: Target) -> Outcome:
        system = await self._system(target)
        if _state(system) is PowerState.ON:
            log.debug("%s: already on", target.node)
            return self._success(target, "already on")
        if system.power_state is not sushy.PowerState.POWERING_ON:
            await self._reset(target, system, POWER_ON)
        await self._wait_or_fail(target, system, PowerState.ON, "power on")
        return self._success(target, "powered on")

    async def _power_off(self, target: Target) -> Outcome:
        system = await self._system(target)
        if _state(system) is PowerState.OFF:
            log.debug("%s: already off", target.node)
            return self._success(target, "already off")
        soft = self.options.soft_off_timeout
        if soft > 0 and self._allowed(target, system, SOFT_OFF):
            await self._reset(target, system, SOFT_OFF)
            if await self._wait(target, system, PowerState.OFF, soft):
                log.debug("%s: shut down", target.node)
                return self._success(target, "shut down")
            log.warning("%s: still %s %g s after GracefulShutdown; forcing it off",
                        target.node, _state(system).value, soft)
        await self._reset(target, system, HARD_OFF)
        await self._wait_or_fail(target, system, PowerState.OFF, "ForceOff")
        return self._success(target, "forced off")

    async def _reboot(self, target: Target) -> Outcome:
        system = await self._system(target)
        if _state(system) is PowerState.OFF:
            log.info("%s: off, so switching it on instead of restarting", target.node)
            await self._reset(target, system, POWER_ON)
            await self._wait_or_fail(target, system, PowerState.ON, "power on")
            return self._success(target, "was off; powered on")
        await self._reset(target, system, RESTART)
        await self._wait_or_fail(target, system, PowerState.ON, "restart")
        return self._success(target, "restarted")

    async def _state_of(self, node: Node) -> PowerState:
        try:
            system = await self._system(self._target(node))
        except ProviderError as exc:
            log.warning("%s: power state unknown: %s %s", node.name, exc.code, exc)
            return PowerState.UNKNOWN
        except Exception:
            log.exception("%s: power state unknown: unexpected error", node.name)
            return PowerState.UNKNOWN
        return _state(system)

    # -- helpers -----------------------------------------------------------------------------

    async def _each(self, nodes: Sequence[Node], action: Action) -> list[Outcome]:
        self._unreachable.clear()
        return list(await asyncio.gather(*(self._guard(node, action) for node in nodes)))

    async def _guard(self, node: Node, action: Action) -> Outcome:
        """Run ``action`` for one node; whatever goes wrong becomes that node's Outcome."""
        try:
            return await action(self._target(node))
        except ProviderError as exc:
            log.debug("%s: %s %s", node.name, exc.code, exc)  # the caller logs every failure
            return Outcome.failure(node.name, exc.code, str(exc))
        except Exception as exc:
            log.exception("%s: unexpected error", node.name)
            message = f"unexpected {type(exc).__name__}; see the log"
            return Outcome.failure(node.name, ERROR, message)

    def _target(self, node: Node) -> Target:
        """Where ``node``'s system is.

        :raises ProviderError: (code ``config``) the node has no BMC address or credentials.
        """
        endpoint = self.directory.endpoint(node.name)
        path = self.options.system_paths.get(node.name)
        if path is None and self.options.system_path is not None:
            path = self.options.system_path.format(node=node.name)
        return Target(node.name, bmc_url(endpoint), path, endpoint)

    def _success(self, target: Target, message: str) -> Outcome:
        address = self.directory.node_address(target.node)
        return Outcome.success(target.node, message, address=address)

    async def _call(self, target: Target, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking sushy call in the pool; sushy's exceptions become ProviderError."""
        try:
            return await self._pool.run(fn, *args)
        except sushy_exc.SushyError as exc:
            log.debug("%s: %s from %s: %s", target.node, type(exc).__name__, target.url, exc)
            raise translate(exc, target) from None
        except ConfigError as exc:  # a password file that went unreadable since start-up
            raise ProviderError(CONFIG, str(exc)) from None

    async def _system(self, target: Target) -> Any:
        return await self._call(target, self._fetch_system, target)

    def _fetch_system(self, target: Target) -> Any:
        """GET the node's System resource (runs in a pool thread)."""
        client = self._client(target)
        path = target.system_path or self._default_systems.get(target.client_key)
        system = client.root.get_system(path)
        if path is None:
            self._default_systems[target.client_key] = system.path
        return system

    def _client(self, target: Target) -> _Client:
        """The sushy client for the node's BMC, made once per BMC and user (in a pool thread)."""
        key = target.client_key
        with self._lock:
            lock = self._client_locks.setdefault(key, threading.Lock())
        with lock:
            client = self._clients.get(key)
            if client is not None:
                return client
            failure = self._unreachable.get(key)
            if failure is not None:
                raise ProviderError(failure.code, str(failure))
            try:
                client = self._connect(target)
            except sushy_exc.ConnectionError as exc:
                self._unreachable[key] = translate(exc, target)
                raise
            self._clients[key] = client
            return client

    def _connect(self, target: Target) -> _Client:
        o = self.options
        connector = _Connector(
            target.url, verify=o.verify, server_side_retries=o.http_retries,
            server_side_retries_delay=o.retry_delay, default_request_timeout=o.read_timeout,
            connect_timeout=o.connect_timeout,
        )
        auth = AUTH_METHODS[o.auth](username=target.endpoint.username,
                                    password=target.endpoint.password.reveal())
        try:
            root = sushy.Sushy(target.url, auth=auth, connector=connector)
        except Exception:
            connector.close()
            raise
        return _Client(root, auth, connector)

    def _allowed(self, target: Target, system: Any, wanted: Sequence[Any]) -> Any | None:
        """The first of ``wanted`` that the system accepts, or None."""
        try:
            allowed = system.get_allowed_reset_system_values()
        except sushy_exc.SushyError as exc:
            raise translate(exc, target) from None
        return next((reset for reset in wanted if reset in allowed), None)

    async def _reset(self, target: Target, system: Any, wanted: Sequence[Any]) -> None:
        reset = self._allowed(target, system, wanted)
        if reset is None:
            names = " or ".join(r.value for r in wanted)
            raise ProviderError(BMC_ERROR, f"{target.url}{system.path} offers no {names} reset")
        log.info("%s: %s via %s", target.node, reset.value, target.url)
        await self._call(target, system.reset_system, reset)

    async def _wait(self, target: Target, system: Any, want: PowerState, seconds: float) -> bool:
        """Re-read the power state until it is ``want``; False if ``seconds`` pass first.

        Reads at least once: the state read before a reset says nothing about its effect.
        """
        deadline = Deadline(seconds)
        while True:
            await asyncio.sleep(min(self.options.poll_interval, deadline.remaining()))
            await self._call(target, system.refresh)
            log.debug("%s: power state %s", target.node, _state(system).value)
            if _state(system) is want:
                return True
            if deadline.expired():
                return False

    async def _wait_or_fail(self, target: Target, system: Any, want: PowerState, what: str) -> None:
        """:raises ProviderError: (code ``timeout``) the state did not come in power_timeout."""
        seconds = self.options.power_timeout
        if not await self._wait(target, system, want, seconds):
            now = _state(system).value
            raise ProviderError(TIMEOUT, f"still {now} {seconds:g} s after {what}; "
                                "raise power_timeout if this machine is slow")


def _state(system: Any) -> PowerState:
    return POWER_STATES.get(system.power_state, PowerState.UNKNOWN)


def bmc_url(endpoint: BmcEndpoint) -> str:
    """The base URL of the BMC: the address itself if it is a URL, else https://host[:port]."""
    if "://" in endpoint.address:
        return endpoint.address.rstrip("/")
    host = endpoint.address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"https://{host}" if endpoint.port == HTTPS_PORT else f"https://{host}:{endpoint.port}"


def translate(exc: sushy_exc.SushyError, target: Target) -> ProviderError:
    """Turn a sushy exception into a coded ProviderError (typed checks only, no secrets)."""
    url = target.url
    if isinstance(exc, sushy_exc.AccessError):
        return ProviderError(AUTH, f"BMC {url} refused user {target.endpoint.username} "
                             f"(HTTP {exc.status_code}); check username and password")
    if isinstance(exc, sushy_exc.ConnectionError):
        # sushy raises its ConnectionError while handling the requests exception
        cause = exc.__context__
        if isinstance(cause, requests.exceptions.SSLError):
            return ProviderError(TLS, f"TLS with BMC {url} failed (untrusted certificate or "
                                 "handshake); set ca_file, or verify: false")
        if isinstance(cause, requests.exceptions.ReadTimeout):
            return ProviderError(TIMEOUT, f"BMC {url} did not answer within read_timeout")
        return ProviderError(UNREACHABLE, f"cannot connect to BMC {url}")
    if isinstance(exc, sushy_exc.ResourceNotFoundError):
        which = f"system {target.system_path}" if target.system_path else "such system"
        return ProviderError(CONFIG, f"BMC {url} has no {which}; fix system_path or system_paths")
    if isinstance(exc, sushy_exc.UnknownDefaultError):
        return ProviderError(CONFIG, f"BMC {url} does not list exactly one system; set system_path")
    if isinstance(exc, sushy_exc.HTTPError):
        detail = exc.detail or exc.code
        return ProviderError(BMC_ERROR, f"BMC {url} answered HTTP {exc.status_code}: {detail}")
    return ProviderError(BMC_ERROR, f"BMC {url}: {exc}")


def _check_bmc_urls(s: SettingsReader, directory: BmcDirectory) -> None:
    """Refuse addresses that are URLs sushy cannot use or that carry credentials."""
    if directory.template is not None:
        try:
            problem = _url_problem(directory.template.format(node="node1"))
        except (KeyError, IndexError, ValueError):
            problem = None  # a bad placeholder, already reported by the BMC settings
        if problem:
            s.problem("address", problem)
    for node, entry in sorted(directory.entries.items()):
        problem = _url_problem(entry.address)
        if problem:
            s.problems.append(f"{s.where('addresses')}.{node} (or manifest): {problem}")


def _url_problem(address: str) -> str | None:
    if "://" not in address:
        return None
    parts = urlsplit(address)
    shown = parts._replace(netloc=parts.hostname or "").geturl() if parts.password else address
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{shown!r} is not an http(s) URL with a host; use https://host[:port]"
    if parts.username or parts.password:
        return f"{shown!r} carries credentials; remove them and use username and password_file"
    if parts.path.strip("/") or parts.query:
        return f"{shown!r} has a path; give only scheme, host and port (and set system_path)"
    return None


def _read_options(s: SettingsReader) -> RedfishOptions:
    d = RedfishOptions()
    system_path = s.str("system_path", None)
    if system_path is not None:
        _check_system_path(s, "system_path", system_path, template=True)
    system_paths = {str(k): v for k, v in (s.mapping("system_paths", None) or {}).items()}
    for node, path in system_paths.items():
        _check_system_path(s, f"system_paths.{node}", path, template=False)
    return RedfishOptions(
        system_path=system_path,
        system_paths=system_paths,
        auth=s.choice("auth", AUTH_METHODS, d.auth),
        verify=_read_verify(s),
        connect_timeout=s.float("connect_timeout", d.connect_timeout, minimum=0.1),
        read_timeout=s.float("read_timeout", d.read_timeout, minimum=0.1),
        http_retries=s.int("http_retries", d.http_retries, minimum=1),
        retry_delay=s.float("retry_delay", d.retry_delay, minimum=0.1),
        power_timeout=s.float("power_timeout", d.power_timeout, minimum=0),
        soft_off_timeout=s.float("soft_off_timeout", d.soft_off_timeout, minimum=0),
        poll_interval=s.float("poll_interval", d.poll_interval, minimum=0.05),
        concurrency=s.int("concurrency", d.concurrency, minimum=1),
    )


def _check_system_path(s: SettingsReader, key: str, path: Any, template: bool) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        s.problem(key, f"{path!r} must be a path such as /redfish/v1/Systems/1")
        return
    if template:
        try:
            path.format(node="node1")
        except (KeyError, IndexError, ValueError):
            s.problem(key, f"{path!r} is not a valid template; only {{node}} may be used")


def _read_verify(s: SettingsReader) -> bool | str:
    verify = s.bool("verify", True)
    ca_file = s.path("ca_file", None)
    if ca_file is None:
        return bool(verify)
    if verify is False:
        s.problem("ca_file", "is set but verify is false; drop one of them")
        return False
    return str(ca_file)
