"""Oracle Cloud Infrastructure (OCI): compute instances as Slurm cloud nodes.

How a batch of N nodes comes up in close to the time OCI's rate limit allows:

- one paginated ListInstances per call finds the live instances of the nodes (so a re-run
  never launches a second instance, and a stopped one is started rather than replaced);
- every request goes through one client-side :class:`~citc_power.pacing.TokenBucket` at
  ``max_requests_per_second``, from a bounded thread pool (the SDK is synchronous);
- this module owns retries (the SDK's are switched off): throttling, 5xx, timeouts and reset
  connections are retried with jittered exponential back-off, honouring Retry-After, until the
  call's :class:`~citc_power.pacing.Deadline`; capacity and limit errors are not retried;
- each launch carries an ``opc-retry-token`` derived from the cluster, the node, what is
  launched and the node's previous (terminated) instance, so a launch retried after a lost
  answer, or re-run after the process was killed, returns the instance already made instead
  of a second one, while the next power cycle gets a token of its own;
- a request still queued when ``launch_timeout`` has passed is not sent: Slurm has given up on
  the node by then, and a late launch would only make an instance nobody waits for;
- waiting is batched: one ListInstances per round for all waiting nodes, then one
  ListVnicAttachments and a GetVnic per new instance to learn its private IP.

Per-node facts come from Slurm node features: ``shape=`` (``VM.Standard.E4.Flex.16.128`` is the
flexible shape with 16 OCPUs and 128 GB), ``ad=`` (``1`` = the first availability domain of the
tenancy, looked up once with ListAvailabilityDomains; a full name like ``Uocm:PHX-AD-1`` is used
as is) and optionally ``image=`` (OCID or display name).
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import ipaddress
import logging
import random
import re
import secrets
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, TypeVar

import oci

from .. import hostlist
from ..errors import HostlistError, ProviderError
from ..pacing import BlockingPool, Deadline, TokenBucket
from ..settings import SettingsReader, secret_file_problem
from .base import AUTH, CAPACITY, CONFIG, ERROR, LIMIT, TIMEOUT, Node, Outcome, PowerState, Provider

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CONFIG_FILE = "~/.oci/config"
PAGE_LIMIT = 1000  # items per list page asked for; the service may return fewer
MAX_ATTEMPTS = 8  # per request, for errors worth retrying
BACKOFF_BASE = 0.1  # seconds; doubled per attempt, with jitter
BACKOFF_CAP = 8.0
# how long an instance may be missing from ListInstances (which lags behind launches a little)
# before we give up on it
VANISHED_SECONDS = 20.0
TIMED_OUT = "the instance did not come up before launch_timeout"

# lifecycle states (oci.core.models.Instance.LIFECYCLE_STATE_*)
RUNNING, TERMINATED, TERMINATING = "RUNNING", "TERMINATED", "TERMINATING"
STOPPED, STOPPING = "STOPPED", "STOPPING"
COMING_UP = {"PROVISIONING", "STARTING", "MOVING", "CREATING_IMAGE", RUNNING}
STATE_MAP = {
    RUNNING: PowerState.ON,
    STOPPED: PowerState.OFF,
    TERMINATED: PowerState.ABSENT,
}
# which of several live instances of one node to keep using (lower is better)
PREFERENCE = {RUNNING: 0, "STARTING": 1, "PROVISIONING": 2, "MOVING": 3, "CREATING_IMAGE": 4,
              STOPPING: 5, STOPPED: 6, TERMINATING: 7}

OCID_KINDS = {"compartment": ("compartment", "tenancy"), "subnet": ("subnet",), "vcn": ("vcn",)}
FLEX_SHAPE = re.compile(r"^(?P<base>(?:VM|BM)(?:\.[A-Za-z0-9]+)*\.Flex)\.(?P<ocpus>\d+)\.(?P<memory>\d+)$")
FIXED_SHAPE = re.compile(r"^(?:VM|BM)(?:\.[A-Za-z0-9]+)+$")

SETTINGS = {
    "auth": "api_key (an OCI config file, the default) or instance_principal",
    "config_file": "OCI config file for api_key auth (default ~/.oci/config; mode 600)",
    "profile": "profile in the config file (default DEFAULT)",
    "key_file": "API signing key; overrides the profile's key_file (mode 600)",
    "region": "region, e.g. uk-london-1 (default: the profile's or the instance's region)",
    "compartment": "OCID of the compartment the nodes live in",
    "subnet": "OCID of the nodes' subnet",
    "vcn": "OCID of a VCN; its subnet tagged cluster=<cluster> is used when subnet is not set",
    "image": "image OCID or display name (a node's image= feature overrides it)",
    "cluster": "cluster id: freeform tag 'cluster' put on, and looked for on, every instance",
    "user_data_file": "cloud-init user data given to every instance",
    "ssh_authorized_keys_file": "public keys put in the instances' metadata",
    "endpoint": "service endpoint for compute and network calls, for private regions and tests",
    "identity_endpoint": "service endpoint for identity calls (default: endpoint, if set)",
    "max_requests_per_second": "client-side pace of all API requests (default 10)",
    "concurrency": "requests in flight at once (default 16)",
    "launch_timeout": "seconds a power-on may take in all, retries included (default 300); "
                      "keep it below Slurm's ResumeTimeout",
    "poll_interval": "seconds between state polls (default 3)",
}


def _is_ocid(value: str, kinds: Sequence[str]) -> bool:
    return any(value.startswith(f"ocid1.{kind}.") for kind in kinds)


@dataclasses.dataclass(frozen=True)
class Shape:
    """A shape name and, for flexible shapes, its size."""

    name: str
    ocpus: Optional[int] = None
    memory_in_gbs: Optional[int] = None

    @classmethod
    def parse(cls, text: str) -> "Shape":
        """``VM.Standard.E4.Flex.16.128`` -> flexible shape of 16 OCPUs and 128 GB.

        :raises ValueError: the text is not a shape name.
        """
        flex = FLEX_SHAPE.match(text)
        if flex:
            return cls(flex["base"], int(flex["ocpus"]), int(flex["memory"]))
        if FIXED_SHAPE.match(text) and not text.endswith(".Flex") and ".Flex." not in text:
            return cls(text)
        raise ValueError(
            f"shape {text!r} is not a shape name; use e.g. VM.Standard2.1, or "
            "VM.Standard.E4.Flex.<ocpus>.<memory_gb> for a flexible shape"
        )


class RequestFailed(ProviderError):
    """An API request failed for good; ``status`` is the HTTP status, if there was an answer."""

    def __init__(self, code: str, message: str, status: Optional[int] = None, retryable: bool = False):
        super().__init__(code, message)
        self.status = status
        self.retryable = retryable  # it was given up only for lack of attempts


@dataclasses.dataclass
class _Failure(Exception):
    """A request failed: the Outcome code, and whether asking again may help."""

    code: str
    message: str
    retryable: bool = False
    status: Optional[int] = None
    retry_after: Optional[float] = None


def classify(exc: Exception) -> _Failure:
    """Map an SDK exception to an outcome code and a retry decision (the one place that does)."""
    if isinstance(exc, oci.exceptions.ServiceError):
        status, code = exc.status, str(exc.code)
        text = f"{status} {code}: {exc.message}"
        retry_after = _retry_after(exc.headers)
        if status == 500 and code == "InternalError" and _out_of_capacity(exc.message):
            return _Failure(CAPACITY, text, status=status)
        if code in ("LimitExceeded", "QuotaExceeded"):
            return _Failure(LIMIT, text, status=status)
        if status == 429 or (status == 409 and code == "IncorrectState"):
            return _Failure(ERROR, text, True, status, retry_after)
        if status >= 500 and status != 501:
            return _Failure(ERROR, text, True, status, retry_after)
        if status == 401:
            return _Failure(AUTH, text, status=status)
        if status in (400, 404):
            return _Failure(CONFIG, text, status=status)
        return _Failure(ERROR, text, status=status)
    if isinstance(exc, (oci.exceptions.RequestException, oci.exceptions.ConnectTimeout)):
        return _Failure(ERROR, f"no answer: {type(exc).__name__}", True)
    if isinstance(exc, oci.exceptions.ClientError):
        return _Failure(CONFIG, f"{type(exc).__name__}: {exc}")
    raise exc


def _out_of_capacity(message: Optional[str]) -> bool:
    # OCI reports no capacity only as a 500 InternalError with this documented message
    return "out of host capacity" in (message or "").lower()


def _retry_after(headers: Any) -> Optional[float]:
    try:
        value = headers.get("retry-after") if headers is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def backoff(attempt: int, retry_after: Optional[float] = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: equal jitter, at least Retry-After."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def retry_token(*parts: str) -> str:
    """An opc-retry-token (≤64 characters) that is the same whenever ``parts`` are."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:48]


def names_of(nodes: Sequence[Any]) -> str:
    """Node names for a log line, as a Slurm hostlist."""
    names = [getattr(n, "name", n) for n in nodes]
    try:
        return hostlist.collapse(names)
    except HostlistError:
        return ",".join(names)


@dataclasses.dataclass
class _Settings:
    auth: str
    config_file: Path
    profile: str
    key_file: Optional[Path]
    region: Optional[str]
    compartment: str
    subnet: Optional[str]
    vcn: Optional[str]
    image: str
    cluster: str
    user_data: Optional[str]  # base64
    ssh_keys: Optional[str]
    endpoint: Optional[str]
    identity_endpoint: Optional[str]
    rate: float
    concurrency: int
    launch_timeout: float
    poll_interval: float


class _TooLate(Exception):
    """The call's deadline passed while a request waited for its turn."""


class _NoGate:
    """An async context manager that lets everyone through."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_GATE = _NoGate()


class _Api:
    """The SDK clients behind the pacing, the thread pool and the one retry loop."""

    def __init__(self, provider: str, settings: _Settings):
        self.provider = provider
        self.s = settings
        self.bucket = TokenBucket(settings.rate)
        self.slots = asyncio.Semaphore(settings.concurrency)
        self._loop = asyncio.get_running_loop()
        self.pending = 0  # requests waiting for their turn
        # the watcher's requests run beside the ``concurrency`` node requests
        self.pool = BlockingPool(settings.concurrency + 2, name="citc-oci")
        self.compute: Any = None
        self.network: Any = None
        self.identity: Any = None
        self.tenancy: Optional[str] = None

    def connect(self) -> None:
        """Load the credentials and build the clients (blocking; run in the pool).

        :raises ProviderError: the credentials cannot be loaded.
        """
        config, signer = self._credentials()
        common: dict[str, Any] = {
            "retry_strategy": oci.retry.NoneRetryStrategy(),  # this module owns retries
            "circuit_breaker_strategy": oci.circuit_breaker.NoCircuitBreakerStrategy(),
            "timeout": (10.0, max(5.0, min(60.0, self.s.launch_timeout / 4))),
        }
        if signer is not None:
            common["signer"] = signer
        endpoint = {"service_endpoint": self.s.endpoint} if self.s.endpoint else {}
        identity_endpoint = self.s.identity_endpoint or self.s.endpoint
        self.compute = oci.core.ComputeClient(config, **common, **endpoint)
        self.network = oci.core.VirtualNetworkClient(config, **common, **endpoint)
        self.identity = oci.identity.IdentityClient(
            config, **common, **({"service_endpoint": identity_endpoint} if identity_endpoint else {})
        )
        for client in (self.compute, self.network, self.identity):
            self._widen_pool(client.base_client.session)

    def _credentials(self) -> tuple[dict[str, Any], Any]:
        where = f"providers.{self.provider}"
        try:
            if self.s.auth == "instance_principal":
                signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
                self.tenancy = signer.tenancy_id
                return {"region": self.s.region or signer.region}, signer
            config = oci.config.from_file(str(self.s.config_file), self.s.profile)
            if self.s.key_file is not None:
                config["key_file"] = str(self.s.key_file)
            if self.s.region:
                config["region"] = self.s.region
            key = Path(config.get("key_file") or "").expanduser()
            problem = secret_file_problem(key) if config.get("key_file") else None
            if problem:
                raise ProviderError(CONFIG, f"{where}: key_file of profile {self.s.profile} "
                                            f"in {self.s.config_file}: {problem}")
            oci.config.validate_config(config)
            self.tenancy = config.get("tenancy")
            return config, oci.signer.Signer.from_config(config)
        except ProviderError:
            raise
        except (oci.exceptions.ClientError, oci.exceptions.ServiceError, OSError, ValueError) as exc:
            # the message names the file or field at fault, never the key itself
            raise ProviderError(CONFIG, f"{where}: cannot load OCI credentials: {type(exc).__name__}: {exc}") from None

    def _widen_pool(self, session: Any) -> None:
        # requests keeps 10 connections per host by default; more threads would open and
        # drop a new connection per request
        adapters = oci._vendor.requests.adapters
        session.mount("http://", adapters.HTTPAdapter(pool_maxsize=self.s.concurrency))
        https = getattr(oci.base_client, "OCIHTTPAdapter", adapters.HTTPAdapter)
        session.mount("https://", https(pool_maxsize=self.s.concurrency))

    async def call(self, what: str, op: str, deadline: Deadline, fn: Callable[..., T], *args: Any,
                   attempts: int = MAX_ATTEMPTS, priority: bool = False, **kwargs: Any) -> T:
        """One API request, paced, retried while worth it and time allows.

        ``priority`` requests (the watcher's, one at a time) skip the queue of node requests,
        though not the rate limit, so that a poll is not stuck behind hundreds of launches.

        :raises RequestFailed: the request failed for good; ``code`` is the outcome code.
        """
        self._same_loop()
        attempt = 0
        while True:
            try:
                return await self._attempt(fn, args, kwargs, priority, deadline)
            except _TooLate:
                raise RequestFailed(TIMEOUT, f"{op} not sent: launch_timeout passed while it waited "
                                             "its turn under max_requests_per_second") from None
            except Exception as exc:  # noqa: BLE001 - classify() re-raises what is not the SDK's
                failure = classify(exc)
            attempt += 1
            delay = backoff(attempt, failure.retry_after)
            if failure.status == 429:
                # the server counts differently or others share the limit: slow everyone down
                self.bucket.penalise(failure.retry_after or 1.0 / self.bucket.rate)
            if not failure.retryable or attempt >= attempts or delay >= deadline.remaining():
                raise RequestFailed(failure.code, f"{op} failed: {failure.message}", failure.status,
                                    failure.retryable)
            log.debug("%s: %s failed (%s); retry %d in %.2fs", what, op, failure.message, attempt, delay)
            await asyncio.sleep(delay)

    async def _attempt(self, fn: Callable[..., T], args: Any, kwargs: Any, priority: bool,
                       deadline: Deadline) -> T:
        gate: Any = _NO_GATE if priority else self.slots
        self.pending += 1
        queued = True
        try:
            async with gate:
                await self.bucket.acquire()
                self.pending -= 1
                queued = False
                if deadline.expired():
                    raise _TooLate()
                return await self.pool.run(fn, *args, **kwargs)
        finally:
            if queued:
                self.pending -= 1

    def _same_loop(self) -> None:
        # asyncio primitives belong to one event loop; a caller may run each call in its own
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self.bucket = TokenBucket(self.s.rate)
            self.slots = asyncio.Semaphore(self.s.concurrency)

    async def list_all(self, what: str, op: str, deadline: Deadline, fn: Callable[..., Any], *args: Any,
                       attempts: int = MAX_ATTEMPTS, priority: bool = False, **kwargs: Any) -> list[Any]:
        """Every item of a paginated list operation, each page paced and retried."""
        items: list[Any] = []
        page: Optional[str] = None
        while True:
            extra = {"page": page} if page else {}
            response = await self.call(what, op, deadline, fn, *args, attempts=attempts, priority=priority,
                                       limit=PAGE_LIMIT, **kwargs, **extra)
            items.extend(response.data)
            page = response.next_page
            if not page:
                return items

    async def list_instances(self, what: str, deadline: Deadline, attempts: int = MAX_ATTEMPTS,
                             priority: bool = False) -> list[Any]:
        return await self.list_all(what, "ListInstances", deadline, self.compute.list_instances,
                                   self.s.compartment, attempts=attempts, priority=priority)

    def close(self) -> None:
        self.pool.close()
        for client in (self.compute, self.network, self.identity):
            if client is not None:
                client.base_client.session.close()


class _Watcher:
    """Waits for many instances at once: one ListInstances per round for all of them.

    Callers await :meth:`running` (RUNNING and the primary VNIC's address known) or
    :meth:`reaches` (one of some lifecycle states). The polling task runs while anyone waits;
    VNIC reads run beside it, so one slow read never holds up the others' rounds.
    """

    def __init__(self, api: _Api, deadline: Deadline, interval: float):
        self.api = api
        self.deadline = deadline
        self.interval = interval
        self._states: dict[str, list[tuple[frozenset[str], asyncio.Future]]] = {}
        self._running: dict[str, list[asyncio.Future]] = {}
        self._up: dict[str, Any] = {}  # RUNNING instances whose VNIC is still to be read
        self._reading: set[str] = set()  # instance ids with a GetVnic under way
        self._tasks: set[asyncio.Task] = set()
        self._missing: dict[str, float] = {}  # instance id -> when first missing
        self._nodes: dict[str, str] = {}  # instance id -> node name, for log lines
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task] = None

    async def reaches(self, instance: Any, states: frozenset[str]) -> Optional[Any]:
        """The instance once its state is one of ``states``; None if it is gone (TERMINATED).

        :raises ProviderError: ``timeout`` at the deadline, or the listing failed.
        """
        future = asyncio.get_running_loop().create_future()
        self._nodes[instance.id] = instance.display_name
        self._states.setdefault(instance.id, []).append((states, future))
        self._start()
        return await future

    async def running(self, instance: Any) -> tuple[Any, Any]:
        """(Instance, Vnic) once the instance is RUNNING and its private IP is known.

        :raises ProviderError: it was terminated or stopped meanwhile, ``timeout``, or a failed
            request.
        """
        future = asyncio.get_running_loop().create_future()
        self._nodes[instance.id] = instance.display_name
        self._running.setdefault(instance.id, []).append(future)
        if instance.lifecycle_state == RUNNING:  # no need to wait for a round to know that
            self._up[instance.id] = instance
            self._wake.set()
        self._start()
        result: tuple[Any, Any] = await future
        return result

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        for task in [self._task, *self._tasks]:
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    def _interval(self) -> float:
        """Seconds to the next round: longer while many requests are queued, since what a
        round would find could not be acted on before the queue drains anyway."""
        return max(self.interval, self.api.pending / self.api.bucket.rate / 2)

    def _node_names(self) -> str:
        return names_of([self._nodes.get(i, i) for i in self._waiting()])

    def _waiting(self) -> list[str]:
        """Instances a poll round must look at: not those whose VNIC is being read."""
        return sorted(set(self._states) | (set(self._running) - self._reading))

    async def _poll(self) -> None:
        clock = asyncio.get_running_loop().time
        next_round = clock() + self.interval
        while self._states or self._running:
            if not self._up:
                # woken early when an instance is known RUNNING or a waiter is settled
                timeout = min(max(0.0, next_round - clock()), self.deadline.remaining())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
            if self.deadline.expired():
                self._fail_all(ProviderError(TIMEOUT, TIMED_OUT))
                return
            try:
                if self._up:
                    await self._read_addresses()
                elif clock() >= next_round and self._waiting():
                    await self._round()
                    next_round = clock() + self._interval()
            except RequestFailed as exc:
                if not exc.retryable:
                    self._fail_all(ProviderError(TIMEOUT, TIMED_OUT) if exc.code == TIMEOUT else exc)
                    return
                # a poll is repeated anyway: try again next round rather than back off
                log.debug("%s: poll failed: %s; again in %.1fs", self._node_names(), exc, self.interval)

    async def _round(self) -> None:
        what = self._node_names()
        listed = await self.api.list_instances(what, self.deadline, attempts=1, priority=True)
        instances = {i.id: i for i in listed}
        for iid in self._waiting():
            instance = instances.get(iid)
            if instance is None:
                self._vanished(iid)
                continue
            self._missing.pop(iid, None)
            self._settle_states(iid, instance)
            if iid not in self._running:
                continue
            if instance.lifecycle_state == RUNNING:
                self._up[iid] = instance
            elif instance.lifecycle_state not in COMING_UP:
                self._settle_running(iid, exc=ProviderError(
                    ERROR, f"instance {iid} became {instance.lifecycle_state} while starting"))
        if self._up:
            await self._read_addresses()

    def _settle_states(self, iid: str, instance: Any) -> None:
        keep = []
        for states, future in self._states.pop(iid, []):
            if instance.lifecycle_state in states:
                _resolve(future, None if instance.lifecycle_state == TERMINATED else instance)
            else:
                keep.append((states, future))
        if keep:
            self._states[iid] = keep

    def _vanished(self, iid: str) -> None:
        # ListInstances stops showing an instance some time after it is TERMINATED, and shows a
        # new one a little after its launch
        for _, future in self._states.pop(iid, []):
            _resolve(future, None)
        since = self._missing.setdefault(iid, time.monotonic())
        if iid in self._running and time.monotonic() - since >= VANISHED_SECONDS:
            self._settle_running(iid, exc=ProviderError(ERROR, f"instance {iid} is no longer listed"))

    async def _read_addresses(self) -> None:
        """One ListVnicAttachments for the RUNNING instances, then a GetVnic task for each."""
        up, self._up = self._up, {}  # on failure the next round finds them RUNNING again
        attachments = await self.api.list_all(
            names_of([i.display_name for i in up.values()]), "ListVnicAttachments", self.deadline,
            self.api.compute.list_vnic_attachments, self.api.s.compartment, attempts=1, priority=True)
        for a in attachments:
            instance = up.get(a.instance_id)
            if instance is not None and a.lifecycle_state == "ATTACHED" and not a.nic_index:
                self._reading.add(instance.id)
                task = asyncio.create_task(self._read_vnic(instance, a.vnic_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        # an instance not attached yet is looked at again in the next round

    async def _read_vnic(self, instance: Any, vnic_id: str) -> None:
        try:
            response = await self.api.call(instance.display_name, "GetVnic", self.deadline,
                                           self.api.network.get_vnic, vnic_id)
        except ProviderError as exc:
            self._settle_running(instance.id, exc=exc)
            return
        finally:
            self._reading.discard(instance.id)
        if response.data.private_ip:
            self._settle_running(instance.id, value=(instance, response.data))

    def _settle_running(self, iid: str, value: Any = None, exc: Optional[BaseException] = None) -> None:
        for future in self._running.pop(iid, []):
            _resolve(future, value, exc)
        self._wake.set()  # the loop may have nothing left to wait for

    def _fail_all(self, exc: ProviderError) -> None:
        for iid in list(self._states):
            for _, future in self._states.pop(iid):
                _resolve(future, exc=exc)
        for iid in list(self._running):
            self._settle_running(iid, exc=exc)


def _resolve(future: asyncio.Future, value: Any = None, exc: Optional[BaseException] = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


class _Call:
    """What one provider call shares between its nodes: deadline, watcher, looked-up names."""

    def __init__(self, api: _Api, timeout: float, interval: float, names: str):
        self.names = names  # the nodes of the call, for log lines
        self.deadline = Deadline(timeout)
        self.watcher = _Watcher(api, self.deadline, interval)
        self.lookups: dict[tuple[str, str], asyncio.Task] = {}

    def once(self, key: tuple[str, str], make: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """The result of ``make()``, run once per call however many nodes ask."""
        if key not in self.lookups:
            self.lookups[key] = asyncio.ensure_future(make())
        return self.lookups[key]


@dataclasses.dataclass
class _Plan:
    """What to launch for one node."""

    shape: Shape
    ad: str
    image: str  # OCID
    subnet: str
    private_ip: Optional[str]


class OciProvider(Provider):
    """Launches, finds and terminates OCI compute instances for Slurm nodes."""

    SETTINGS = SETTINGS

    def __init__(self, name: str, settings: _Settings):
        super().__init__(name)
        self.s = settings
        self._api: Optional[_Api] = None
        self._connect_lock: Optional[asyncio.Lock] = None
        self._image_ids: dict[str, str] = {}  # display name -> OCID, across calls
        self._ads: Optional[list[str]] = None
        self._subnet: Optional[str] = settings.subnet

    # ----------------------------------------------------------------- settings
    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any]) -> "OciProvider":
        """Check the settings without touching OCI (local files only).

        :raises ConfigError: listing every problem, each naming the setting and the fix.
        """
        r = SettingsReader(name, settings, SETTINGS)
        auth = r.choice("auth", ["api_key", "instance_principal"], default="api_key")
        config_file = key_file = None
        if auth == "api_key":
            if "config_file" in r.settings:
                config_file = r.secret_file("config_file")
            else:
                config_file = _default_config_file(r)
            _readable(r, "config_file", config_file)
            key_file = _readable(r, "key_file", r.secret_file("key_file", default=None))
        compartment = _ocid_setting(r, "compartment", required=True)
        subnet = _ocid_setting(r, "subnet", required=False)
        vcn = _ocid_setting(r, "vcn", required=False)
        if subnet is None and vcn is None and "subnet" not in r.settings:
            r.problem("subnet", "missing; set it to the OCID of the nodes' subnet (or set vcn)")
        parsed = _Settings(
            auth=auth or "api_key",
            config_file=config_file or Path(DEFAULT_CONFIG_FILE).expanduser(),
            profile=r.str("profile", default="DEFAULT"),
            key_file=key_file,
            region=r.str("region", default=None),
            compartment=compartment or "",
            subnet=subnet,
            vcn=vcn,
            image=r.str("image") or "",
            cluster=r.str("cluster") or "",
            user_data=_file_text(r, "user_data_file", encode=True),
            ssh_keys=_file_text(r, "ssh_authorized_keys_file"),
            endpoint=_url(r, "endpoint"),
            identity_endpoint=_url(r, "identity_endpoint"),
            rate=r.float("max_requests_per_second", default=10.0, minimum=0.1),
            concurrency=r.int("concurrency", default=16, minimum=1),
            launch_timeout=r.float("launch_timeout", default=300.0, minimum=1),
            poll_interval=r.float("poll_interval", default=3.0, minimum=0.05),
        )
        r.done()
        return cls(name, parsed)

    # ----------------------------------------------------------------- plumbing
    async def _connected(self) -> _Api:
        """The API, connected on first use (the OCI config is read here, not in from_settings).

        :raises ProviderError: the credentials cannot be loaded.
        """
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._api is None:
                api = _Api(self.name, self.s)
                try:
                    await api.pool.run(api.connect)
                except BaseException:
                    api.close()
                    raise
                self._api = api
        return self._api

    def _call(self, api: _Api, nodes: Sequence[Node]) -> _Call:
        return _Call(api, self.s.launch_timeout, self.s.poll_interval, names_of(nodes))

    async def _instances(self, api: _Api, call: _Call, nodes: Sequence[Node]) -> dict[str, list[Any]]:
        """This cluster's instances of each node: live ones best first, then TERMINATED ones,
        newest first.

        :raises ProviderError: the listing failed.
        """
        wanted = {n.name for n in nodes}
        found: dict[str, list[Any]] = {}
        for instance in await api.list_instances(call.names, call.deadline):
            tags = instance.freeform_tags or {}
            node = tags.get("node", instance.display_name)
            if tags.get("cluster") == self.s.cluster and node in wanted:
                found.setdefault(node, []).append(instance)
        for node, instances in found.items():
            instances.sort(key=lambda i: str(i.time_created or ""), reverse=True)
            instances.sort(key=lambda i: PREFERENCE.get(i.lifecycle_state, 9))
            live = _live(instances)
            if len(live) > 1:
                log.warning("%s: %d live instances (%s); using %s", node, len(live),
                            ", ".join(i.id for i in live), live[0].id)
        return found

    async def _batch(self, nodes: Sequence[Node], what: str,
                     each: Callable[[_Api, _Call, Node, list[Any]], Awaitable[Outcome]]) -> list[Outcome]:
        """Look the nodes up once, then run ``each`` for every node concurrently."""
        if not nodes:
            return []
        api = await self._connected()
        call = self._call(api, nodes)
        try:
            found = await self._instances(api, call, nodes)
        except ProviderError as exc:
            log.error("%s: cannot list instances to %s: %s", names_of(nodes), what, exc)
            return [Outcome.failure(n.name, exc.code, str(exc)) for n in nodes]
        try:
            return list(await asyncio.gather(*(
                self._guarded(node, what, each(api, call, node, found.get(node.name, []))) for node in nodes
            )))
        finally:
            await call.watcher.close()
            for task in call.lookups.values():
                task.cancel()

    async def _guarded(self, node: Node, what: str, work: Awaitable[Outcome]) -> Outcome:
        """Run one node's work; a failure becomes that node's Outcome, never an exception."""
        try:
            outcome = await work
        except ProviderError as exc:
            outcome = Outcome.failure(node.name, exc.code, str(exc))
        except Exception as exc:  # a bug must not cost the other nodes their outcome
            log.exception("%s: unexpected error while trying to %s", node.name, what)
            outcome = Outcome.failure(node.name, ERROR, f"unexpected {type(exc).__name__} during {what}")
        # the caller logs every outcome; this line adds where it came from
        log.debug("%s: %s: ok=%s %s %s", node.name, what, outcome.ok, outcome.code, outcome.message)
        return outcome

    # ----------------------------------------------------------------- power on
    async def power_on(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Launch (or start, or find) an instance per node; report its private IP.

        :raises ProviderError: the OCI credentials cannot be loaded (no node can be started).
        """
        return await self._batch(nodes, "power on", self._bring_up)

    async def _bring_up(self, api: _Api, call: _Call, node: Node, instances: list[Any],
                        plan: Optional[_Plan] = None) -> Outcome:
        live = _live(instances)
        instance: Any = live[0] if live else None
        # The launch token names the node's previous instance: the same in a re-run of this
        # request, different after every power cycle (so a new launch never replays an old one).
        previous = next((i.id for i in instances if i.lifecycle_state == TERMINATED), "")
        for _ in range(5):  # each turn moves the instance one lifecycle step nearer RUNNING
            state = instance.lifecycle_state if instance is not None else TERMINATED
            if state in COMING_UP:
                return await self._report_up(call, node, instance)
            if state == STOPPED:
                await self._action(api, call, node, instance, "START")
                return await self._report_up(call, node, instance)
            if state in (STOPPING, TERMINATING):
                log.info("%s: waiting for instance %s to finish %s", node.name, instance.id, state.lower())
                previous = instance.id
                instance = await call.watcher.reaches(instance, frozenset({STOPPED, TERMINATED}))
                continue
            plan = plan or await self._plan(api, call, node)
            instance = await self._launch(api, call, node, plan, previous)
            if instance.lifecycle_state in (TERMINATING, TERMINATED):
                log.info("%s: launch token led to %s, already %s; launching anew",
                         node.name, instance.id, instance.lifecycle_state)
                previous, instance = instance.id, None
        return Outcome.failure(node.name, ERROR, "instance kept changing state; try again")

    async def _action(self, api: _Api, call: _Call, node: Node, instance: Any, action: str) -> None:
        """InstanceAction, its retries sharing one token so that a lost answer is not acted twice."""
        log.info("%s: %s instance %s", node.name, action, instance.id)
        await api.call(node.name, f"InstanceAction {action}", call.deadline, api.compute.instance_action,
                       instance.id, action, opc_retry_token=secrets.token_hex(16))

    async def _report_up(self, call: _Call, node: Node, instance: Any) -> Outcome:
        try:
            instance, vnic = await call.watcher.running(instance)
        except ProviderError as exc:
            return Outcome.failure(node.name, exc.code, str(exc), instance_id=instance.id,
                                   instance_type=instance.shape)
        return Outcome.success(
            node.name, f"{instance.id} at {vnic.private_ip}",
            address=vnic.private_ip, hostname=vnic.hostname_label or node.name,
            instance_id=instance.id, instance_type=instance.shape,
        )

    async def _launch(self, api: _Api, call: _Call, node: Node, plan: _Plan, previous: str) -> Any:
        """LaunchInstance with a retry token that is stable across retries and re-runs.

        :raises ProviderError: capacity, limit, bad settings, or retries exhausted.
        """
        token = retry_token(self.s.cluster, node.name, plan.shape.name, str(plan.shape.ocpus),
                            str(plan.shape.memory_in_gbs), plan.ad, plan.image, previous)
        details = self._launch_details(node, plan)
        log.info("%s: launching %s in %s", node.name, plan.shape.name, plan.ad)
        response = await api.call(node.name, "LaunchInstance", call.deadline,
                                  api.compute.launch_instance, details, opc_retry_token=token)
        return response.data

    def _launch_details(self, node: Node, plan: _Plan) -> Any:
        models = oci.core.models
        metadata = {}
        if self.s.ssh_keys:
            metadata["ssh_authorized_keys"] = self.s.ssh_keys
        if self.s.user_data:
            metadata["user_data"] = self.s.user_data
        shape_config = None
        if plan.shape.ocpus is not None:
            shape_config = models.LaunchInstanceShapeConfigDetails(
                ocpus=float(plan.shape.ocpus), memory_in_gbs=float(plan.shape.memory_in_gbs or 0))
        return models.LaunchInstanceDetails(
            compartment_id=self.s.compartment,
            availability_domain=plan.ad,
            display_name=node.name,
            shape=plan.shape.name,
            shape_config=shape_config,
            source_details=models.InstanceSourceViaImageDetails(image_id=plan.image),
            create_vnic_details=models.CreateVnicDetails(
                subnet_id=plan.subnet, hostname_label=node.name, private_ip=plan.private_ip,
                assign_public_ip=False),
            metadata=metadata,
            freeform_tags={"cluster": self.s.cluster, "node": node.name},
        )

    async def _plan(self, api: _Api, call: _Call, node: Node) -> _Plan:
        """Shape, AD, image, subnet and IP for a node, from its features and the settings.

        :raises ProviderError: ``config`` when the node's features are wrong.
        """
        shape_text = node.feature("shape")
        ad_text = node.feature("ad")
        if not shape_text or not ad_text:
            raise ProviderError(CONFIG, "node features need shape=<shape> and ad=<number or name>")
        try:
            shape = Shape.parse(shape_text)
        except ValueError as exc:
            raise ProviderError(CONFIG, str(exc)) from None
        ad = await self._ad(api, call, ad_text)
        image = await self._image(api, call, node.feature("image") or self.s.image)
        subnet = await self._subnet_id(api, call)
        return _Plan(shape, ad, image, subnet, _private_ip(node))

    async def _ad(self, api: _Api, call: _Call, text: str) -> str:
        if not text.isdigit():
            return text
        if self._ads is None:
            self._ads = await call.once(("ad", ""), lambda: self._list_ads(api, call))
        number = int(text)
        for name in self._ads:
            if name.endswith(f"-AD-{number}"):
                return name
        if 1 <= number <= len(self._ads):
            return self._ads[number - 1]
        raise ProviderError(CONFIG, f"ad={text}: the region has {len(self._ads)} availability domains")

    async def _list_ads(self, api: _Api, call: _Call) -> list[str]:
        response = await api.call(call.names, "ListAvailabilityDomains", call.deadline,
                                  api.identity.list_availability_domains, api.tenancy or self.s.compartment)
        return sorted(ad.name for ad in response.data)

    async def _image(self, api: _Api, call: _Call, image: str) -> str:
        if image.startswith("ocid1.image."):
            return image
        if image not in self._image_ids:
            self._image_ids[image] = await call.once(("image", image), lambda: self._find_image(api, call, image))
        return self._image_ids[image]

    async def _find_image(self, api: _Api, call: _Call, name: str) -> str:
        images = await api.list_all(call.names, "ListImages", call.deadline, api.compute.list_images,
                                    self.s.compartment, display_name=name, sort_by="TIMECREATED",
                                    sort_order="DESC", lifecycle_state="AVAILABLE")
        if not images:
            raise ProviderError(CONFIG, f"no available image named {name!r} in the compartment; "
                                        "set image to an image OCID or an existing display name")
        return str(images[0].id)

    async def _subnet_id(self, api: _Api, call: _Call) -> str:
        if self._subnet is None:
            self._subnet = await call.once(("subnet", ""), lambda: self._find_subnet(api, call))
        return self._subnet

    async def _find_subnet(self, api: _Api, call: _Call) -> str:
        subnets = await api.list_all(call.names, "ListSubnets", call.deadline, api.network.list_subnets,
                                     self.s.compartment, vcn_id=self.s.vcn)
        tagged = [s.id for s in subnets if (s.freeform_tags or {}).get("cluster") == self.s.cluster]
        if len(tagged) != 1:
            raise ProviderError(CONFIG, f"vcn {self.s.vcn} has {len(tagged)} subnets tagged "
                                        f"cluster={self.s.cluster}; set subnet to the subnet OCID")
        return str(tagged[0])

    # ----------------------------------------------------------------- power off
    async def power_off(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Terminate every live instance of the nodes; a node without one is a success.

        :raises ProviderError: the OCI credentials cannot be loaded.
        """
        return await self._batch(nodes, "power off", self._terminate)

    async def _terminate(self, api: _Api, call: _Call, node: Node, instances: list[Any]) -> Outcome:
        done = []
        for instance in _live(instances):
            if instance.lifecycle_state == TERMINATING:
                done.append(instance.id)
                continue
            try:
                await api.call(node.name, "TerminateInstance", call.deadline,
                               api.compute.terminate_instance, instance.id, preserve_boot_volume=False)
            except RequestFailed as exc:
                if exc.status == 404:  # already gone
                    continue
                return Outcome.failure(node.name, exc.code, f"terminating {instance.id}: {exc}",
                                       instance_id=instance.id)
            done.append(instance.id)
        message = f"terminating {', '.join(done)}" if done else "no instance"
        return Outcome.success(node.name, message, instance_id=done[0] if done else None)

    # ----------------------------------------------------------------- reboot
    async def reboot(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Soft-reset running instances; rebuild those whose image differs; power on the rest.

        :raises ProviderError: the OCI credentials cannot be loaded.
        """
        return await self._batch(nodes, "reboot", self._reboot_one)

    async def _reboot_one(self, api: _Api, call: _Call, node: Node, instances: list[Any]) -> Outcome:
        live = _live(instances)
        instance = live[0] if live else None
        if instance is None or instance.lifecycle_state != RUNNING:
            return await self._bring_up(api, call, node, instances)
        plan = await self._plan(api, call, node)
        if _image_of(instance) != plan.image:
            log.info("%s: rebuilding %s from image %s", node.name, instance.id, plan.image)
            await api.call(node.name, "TerminateInstance", call.deadline,
                           api.compute.terminate_instance, instance.id, preserve_boot_volume=False)
            await call.watcher.reaches(instance, frozenset({TERMINATED}))
            instance.lifecycle_state = TERMINATED  # now the node's previous instance
            return await self._bring_up(api, call, node, [instance], plan)
        await self._action(api, call, node, instance, "SOFTRESET")
        return Outcome.success(node.name, f"soft reset {instance.id}", instance_id=instance.id,
                               instance_type=instance.shape)

    # ----------------------------------------------------------------- state
    async def power_state(self, nodes: Sequence[Node]) -> dict[str, PowerState]:
        """Each node's state from one ListInstances; UNKNOWN for all if it fails.

        :raises ProviderError: the OCI credentials cannot be loaded.
        """
        if not nodes:
            return {}
        api = await self._connected()
        try:
            found = await self._instances(api, self._call(api, nodes), nodes)
        except ProviderError as exc:
            log.error("%s: cannot read power state: %s", names_of(nodes), exc)
            return {n.name: PowerState.UNKNOWN for n in nodes}
        states = {}
        for node in nodes:
            instances = found.get(node.name)
            state = instances[0].lifecycle_state if instances else TERMINATED
            states[node.name] = STATE_MAP.get(state, PowerState.TRANSITION)
        return states

    async def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


# --------------------------------------------------------------------- helpers
def _live(instances: list[Any]) -> list[Any]:
    return [i for i in instances if i.lifecycle_state != TERMINATED]


def _image_of(instance: Any) -> Optional[str]:
    source = getattr(instance, "source_details", None)
    return getattr(source, "image_id", None) or getattr(instance, "image_id", None)


def _private_ip(node: Node) -> Optional[str]:
    """Slurm's NodeAddr, to keep the node's address across power cycles, if it is an IP."""
    if not node.address or node.address == node.name:
        return None
    try:
        return str(ipaddress.ip_address(node.address))
    except ValueError:
        return None


def _ocid_setting(r: SettingsReader, key: str, required: bool) -> Optional[str]:
    value = r.str(key) if required else r.str(key, default=None)
    kinds = OCID_KINDS[key]
    if value is not None and not _is_ocid(value, kinds):
        r.problem(key, f"{value!r} is not an OCID; use the ocid1.{kinds[0]}.… id from the console")
        return None
    return value


def _default_config_file(r: SettingsReader) -> Optional[Path]:
    path = Path(DEFAULT_CONFIG_FILE).expanduser()
    if not path.exists():
        r.problem("config_file", f"{path} does not exist; create it (oci setup config) or set config_file")
        return None
    problem = secret_file_problem(path)
    if problem:
        r.problem("config_file", problem)
    return path


def _readable(r: SettingsReader, key: str, path: Optional[Path]) -> Optional[Path]:
    """``path`` if it is a file that can be opened; else a problem for ``key``."""
    if path is None or not path.exists():
        return path
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        r.problem(key, f"{path} cannot be read ({exc.strerror}); point {key} at a readable file")
    return path


def _file_text(r: SettingsReader, key: str, encode: bool = False) -> Optional[str]:
    path = r.path(key, default=None)
    if path is None or not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        r.problem(key, f"{path} cannot be read ({exc.strerror}); point {key} at a readable file")
        return None
    return base64.b64encode(data).decode() if encode else data.decode(errors="replace").strip()


def _url(r: SettingsReader, key: str) -> Optional[str]:
    value = r.str(key, default=None)
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        r.problem(key, f"{value!r} is not a URL; use e.g. https://iaas.uk-london-1.oraclecloud.com")
        return None
    return value

