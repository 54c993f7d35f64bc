"""An emulator of the OCI Core and Identity REST API (version 20160918) on 127.0.0.1.

The real ``oci`` SDK talks HTTP to it (``service_endpoint=emulator.url``), so tests exercise the
SDK's own serialisation, signing and error handling. It serves what citc-power uses:

- Compute: LaunchInstance, GetInstance, ListInstances, TerminateInstance, InstanceAction,
  ListVnicAttachments, ListImages
- Virtual network: GetVnic, ListSubnets
- Identity: ListAvailabilityDomains

Instances move through their lifecycle by the clock (PROVISIONING -> RUNNING after
``provision_delay``, TERMINATING -> TERMINATED after ``terminate_delay``, ...). A hook can be
called when an instance turns RUNNING or TERMINATED. Faults are injected through
:class:`Faults`, which may be changed while the server runs. Launches honour
``opc-retry-token``: the same token returns the same instance and never launches a second one.

Run standalone for manual poking: ``python3 tests/providers/oci_emulator.py``.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import hashlib
import heapq
import http.server
import itertools
import json
import queue
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterable, Optional

API = "/20160918"
REGION = "emu-region-1"
DEFAULT_ADS = ("Uocm:EMU-AD-1", "Uocm:EMU-AD-2", "Uocm:EMU-AD-3")
OUT_OF_CAPACITY = "Out of host capacity."
Hook = Callable[[dict], None]


@dataclasses.dataclass
class Faults:
    """What goes wrong, and how often. Fractions are probabilities per request."""

    throttle_fraction: float = 0.0  # 429 TooManyRequests at random
    error_fraction: float = 0.0  # 500 InternalError (transient) at random
    reset_fraction: float = 0.0  # connection closed before the request is handled
    reset_after_fraction: float = 0.0  # request handled, then connection closed unanswered
    operations: Optional[set[str]] = None  # random faults only for these operations (None = all)
    capacity_nodes: set[str] = dataclasses.field(default_factory=set)  # display names
    capacity_shapes: set[str] = dataclasses.field(default_factory=set)
    limit_nodes: set[str] = dataclasses.field(default_factory=set)
    limit_code: str = "LimitExceeded"  # or QuotaExceeded
    latency: float = 0.0  # seconds added to every answered request
    rate_limit: Optional[float] = None  # server-side token bucket, requests per second
    rate_burst: float = 5.0
    retry_after: Optional[int] = None  # seconds sent in Retry-After with every 429
    throttle_first: int = 0  # the first N requests (of ``operations``) get 429
    list_lag: float = 0.0  # ListInstances shows an instance only this long after its launch


class _RateLimiter:
    """Server-side token bucket: True if the request may go ahead now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: Optional[float] = None
        self._last = time.monotonic()

    def allow(self, rate: float, burst: float) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._tokens is None:
                self._tokens = burst
            self._tokens = min(burst, self._tokens + (now - self._last) * rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class ApiError(Exception):
    """An error answer: HTTP status, OCI error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Reset(Exception):
    """Close the connection without answering."""


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _ocid(kind: str) -> str:
    return f"ocid1.{kind}.oc1.emu.{random.getrandbits(120):030x}"


ROUTES = [
    ("POST", re.compile(r"^/instances/?$"), "LaunchInstance"),
    ("GET", re.compile(r"^/instances/?$"), "ListInstances"),
    ("GET", re.compile(r"^/instances/(?P<id>[^/]+)$"), "GetInstance"),
    ("DELETE", re.compile(r"^/instances/(?P<id>[^/]+)$"), "TerminateInstance"),
    ("POST", re.compile(r"^/instances/(?P<id>[^/]+)$"), "InstanceAction"),
    ("GET", re.compile(r"^/vnicAttachments/?$"), "ListVnicAttachments"),
    ("GET", re.compile(r"^/vnics/(?P<id>[^/]+)$"), "GetVnic"),
    ("GET", re.compile(r"^/images/?$"), "ListImages"),
    ("GET", re.compile(r"^/subnets/?$"), "ListSubnets"),
    ("GET", re.compile(r"^/availabilityDomains/?$"), "ListAvailabilityDomains"),
]


class OciEmulator:
    """The emulated service: state, lifecycle clock, fault injection and the HTTP server."""

    def __init__(
        self,
        *,
        provision_delay: float = 0.3,
        terminate_delay: float = 0.2,
        stop_delay: float = 0.2,
        start_delay: float = 0.2,
        page_size: int = 100,
        availability_domains: Iterable[str] = DEFAULT_ADS,
        images: Optional[dict[str, str]] = None,  # OCID -> display name
        subnets: Optional[list[dict[str, Any]]] = None,
        public_key: Any = None,  # verify signatures with this key; True: only check the format
        on_running: Optional[Hook] = None,
        on_terminated: Optional[Hook] = None,
        seed: int = 0,
    ):
        self.provision_delay = provision_delay
        self.terminate_delay = terminate_delay
        self.stop_delay = stop_delay
        self.start_delay = start_delay
        self.page_size = page_size
        self.availability_domains = list(availability_domains)
        self.images = dict(images or {})
        self.subnets = list(subnets or [])
        self.public_key = public_key
        self.on_running = on_running
        self.on_terminated = on_terminated
        self.faults = Faults()
        self.instances: dict[str, dict[str, Any]] = {}  # insertion order = list order
        self.vnics: dict[str, dict[str, Any]] = {}
        self.attachments: dict[str, dict[str, Any]] = {}
        self.received: collections.Counter[str] = collections.Counter()  # every request by operation
        self.handled: collections.Counter[str] = collections.Counter()  # requests that did their work
        self.rejected = 0  # 429s of the server-side rate limit
        self.injected: collections.Counter[str] = collections.Counter()  # injected faults by kind
        self.replays = 0  # launches answered from an earlier opc-retry-token
        self.log: list[tuple[float, str, int]] = []  # (monotonic time, operation, status)
        self.launch_bodies: dict[str, dict[str, Any]] = {}  # instance id -> LaunchInstance body
        self._tokens: dict[str, str] = {}  # opc-retry-token -> instance id
        self._lock = threading.RLock()
        self._events: list[tuple[float, int, str, str, int]] = []  # (due, seq, id, state, gen)
        self._seq = itertools.count()
        self._ips = itertools.count(2)
        self._random = random.Random(seed)
        self._limiter = _RateLimiter()
        self._wake = threading.Condition(self._lock)
        self._hooks: queue.Queue[Optional[tuple[Hook, dict]]] = queue.Queue()
        self._stopping = False
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- server life
    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "OciEmulator":
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        for target in (self._serve, self._tick, self._run_hooks):
            thread = threading.Thread(target=target, daemon=True, name=f"oci-emu-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def _serve(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.05)  # a quick shutdown keeps tests fast

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._hooks.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "OciEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- inspection
    def live_instances(self, name: Optional[str] = None) -> list[dict[str, Any]]:
        """Instances not TERMINATED (of display name ``name`` if given), in launch order."""
        with self._lock:
            self._advance()
            return [
                dict(i) for i in self.instances.values()
                if i["lifecycleState"] != "TERMINATED" and (name is None or i["displayName"] == name)
            ]

    def instances_per_name(self) -> collections.Counter[str]:
        """How many instances (of any state) were ever launched per display name."""
        with self._lock:
            return collections.Counter(i["displayName"] for i in self.instances.values())

    def private_ip(self, instance_id: str) -> str:
        with self._lock:
            return str(self.vnics[self.instances[instance_id]["_vnic"]]["privateIp"])

    def accepted_requests(self) -> int:
        """Requests not turned away by the server-side rate limit."""
        with self._lock:
            return sum(self.received.values()) - self.rejected

    def add_instance(self, name: str, state: str = "RUNNING", **fields: Any) -> dict[str, Any]:
        """Put an instance in place directly, e.g. a STOPPED one left from earlier."""
        body = {
            "compartmentId": fields.pop("compartmentId", "ocid1.compartment.oc1..emu"),
            "availabilityDomain": fields.pop("availabilityDomain", self.availability_domains[0]),
            "displayName": name,
            "shape": fields.pop("shape", "VM.Standard2.1"),
            "freeformTags": fields.pop("freeformTags", {"cluster": "emu", "node": name}),
            "sourceDetails": {"sourceType": "image", "imageId": fields.pop("imageId", "ocid1.image.oc1..emu")},
            "createVnicDetails": {"subnetId": "ocid1.subnet.oc1..emu"},
        }
        body.update(fields)
        with self._lock:
            instance = self._create(body)
            instance["lifecycleState"] = state
            instance["_gen"] += 1  # drop the scheduled PROVISIONING -> RUNNING
            if state == "RUNNING":
                self._attachment_of(instance)["lifecycleState"] = "ATTACHED"
            return dict(instance)

    # ----------------------------------------------------------------- lifecycle clock
    def _schedule(self, instance: dict[str, Any], steps: list[tuple[float, str]]) -> None:
        """Replace the instance's pending transitions with ``steps`` (delay, state)."""
        instance["_gen"] += 1
        now = time.monotonic()
        for delay, state in steps:
            heapq.heappush(self._events, (now + delay, next(self._seq), instance["id"], state, instance["_gen"]))
        self._wake.notify_all()

    def _advance(self) -> None:
        """Apply every transition that is due (caller holds the lock)."""
        now = time.monotonic()
        while self._events and self._events[0][0] <= now:
            _, _, iid, state, gen = heapq.heappop(self._events)
            instance = self.instances.get(iid)
            if instance is None or instance["_gen"] != gen:
                continue
            instance["lifecycleState"] = state
            attachment = self._attachment_of(instance)
            if state == "RUNNING":
                attachment["lifecycleState"] = "ATTACHED"
                if self.on_running:
                    self._hooks.put((self.on_running, self._public(instance)))
            elif state == "TERMINATED":
                attachment["lifecycleState"] = "DETACHED"
                if self.on_terminated:
                    self._hooks.put((self.on_terminated, self._public(instance)))

    def _tick(self) -> None:
        with self._wake:
            while not self._stopping:
                self._advance()
                timeout = self._events[0][0] - time.monotonic() if self._events else 1.0
                self._wake.wait(max(0.0, min(timeout, 1.0)))

    def _run_hooks(self) -> None:
        while True:
            item = self._hooks.get()
            if item is None:
                return
            hook, instance = item
            try:
                hook(instance)
            except Exception as exc:  # a failing hook must not stop the emulator
                print(f"oci emulator: hook {hook!r} failed for {instance['displayName']}: {exc!r}")

    # ----------------------------------------------------------------- operations
    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        vnic_details = body.get("createVnicDetails") or {}
        ip = vnic_details.get("privateIp") or self._next_ip()
        source = body.get("sourceDetails") or {"sourceType": "image", "imageId": body.get("imageId")}
        instance = {
            "id": _ocid("instance"),
            "compartmentId": body["compartmentId"],
            "availabilityDomain": body["availabilityDomain"],
            "displayName": body.get("displayName") or "instance",
            "shape": body["shape"],
            "shapeConfig": body.get("shapeConfig"),
            "imageId": source.get("imageId"),
            "sourceDetails": source,
            "freeformTags": body.get("freeformTags") or {},
            "metadata": body.get("metadata") or {},
            "region": REGION,
            "faultDomain": "FAULT-DOMAIN-1",
            "lifecycleState": "PROVISIONING",
            "timeCreated": _now_iso(),
            "_gen": 0,
            "_born": time.monotonic(),
        }
        vnic = {
            "id": _ocid("vnic"),
            "availabilityDomain": body["availabilityDomain"],
            "compartmentId": body["compartmentId"],
            "displayName": instance["displayName"],
            "hostnameLabel": vnic_details.get("hostnameLabel") or body.get("hostnameLabel"),
            "isPrimary": True,
            "lifecycleState": "AVAILABLE",
            "privateIp": ip,
            "subnetId": vnic_details.get("subnetId") or body.get("subnetId"),
            "macAddress": "02:00:17:00:00:01",
            "timeCreated": instance["timeCreated"],
        }
        attachment = {
            "id": _ocid("vnicattachment"),
            "availabilityDomain": body["availabilityDomain"],
            "compartmentId": body["compartmentId"],
            "instanceId": instance["id"],
            "vnicId": vnic["id"],
            "subnetId": vnic["subnetId"],
            "nicIndex": 0,
            "lifecycleState": "ATTACHING",
            "timeCreated": instance["timeCreated"],
        }
        instance["_vnic"] = vnic["id"]
        instance["_attachment"] = attachment["id"]
        self.instances[instance["id"]] = instance
        self.vnics[vnic["id"]] = vnic
        self.attachments[attachment["id"]] = attachment
        self._schedule(instance, [(self.provision_delay, "RUNNING")])
        return instance

    def _next_ip(self) -> str:
        used = {v["privateIp"] for v in self.vnics.values()}
        while True:
            n = next(self._ips)
            ip = f"127.0.{1 + n // 250}.{n % 250 + 2}"
            if ip not in used:
                return ip

    def _attachment_of(self, instance: dict[str, Any]) -> dict[str, Any]:
        return self.attachments[instance["_attachment"]]

    @staticmethod
    def _public(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if not k.startswith("_")}

    def _instance(self, iid: str) -> dict[str, Any]:
        instance = self.instances.get(iid)
        if instance is None:
            raise ApiError(404, "NotAuthorizedOrNotFound", f"Instance {iid} not found")
        return instance

    def launch(self, body: dict[str, Any], token: Optional[str]) -> dict[str, Any]:
        if token and token in self._tokens:
            self.replays += 1
            return self._public(self.instances[self._tokens[token]])
        self._check_launch(body)
        instance = self._create(body)
        self.launch_bodies[instance["id"]] = body
        if token:
            self._tokens[token] = instance["id"]
        return self._public(instance)

    def _check_launch(self, body: dict[str, Any]) -> None:
        for key in ("compartmentId", "availabilityDomain", "shape"):
            if not body.get(key):
                raise ApiError(400, "MissingParameter", f"{key} is required")
        if body["availabilityDomain"] not in self.availability_domains:
            raise ApiError(400, "InvalidParameter", f"unknown availabilityDomain {body['availabilityDomain']}")
        if ".Flex" in body["shape"] and not (body.get("shapeConfig") or {}).get("ocpus"):
            raise ApiError(400, "InvalidParameter", "shapeConfig.ocpus is required for flexible shapes")
        if not (body.get("createVnicDetails") or {}).get("subnetId") and not body.get("subnetId"):
            raise ApiError(400, "MissingParameter", "createVnicDetails.subnetId is required")
        source = body.get("sourceDetails") or {}
        if not (source.get("imageId") or body.get("imageId")):
            raise ApiError(400, "MissingParameter", "sourceDetails.imageId is required")
        name = body.get("displayName")
        faults = self.faults
        if name in faults.capacity_nodes or body["shape"] in faults.capacity_shapes:
            raise ApiError(500, "InternalError", OUT_OF_CAPACITY)
        if name in faults.limit_nodes:
            raise ApiError(400, faults.limit_code, "The following service limits were exceeded: "
                           "standard-e4-core-count. Request a service limit increase.")
        ip = (body.get("createVnicDetails") or {}).get("privateIp")
        if ip and any(self.vnics[i["_vnic"]]["privateIp"] == ip for i in self.instances.values()
                      if i["lifecycleState"] != "TERMINATED"):
            raise ApiError(409, "Conflict", f"private IP {ip} is already in use")

    def terminate(self, iid: str) -> None:
        instance = self._instance(iid)
        if instance["lifecycleState"] in ("TERMINATING", "TERMINATED"):
            return
        instance["lifecycleState"] = "TERMINATING"
        self._schedule(instance, [(self.terminate_delay, "TERMINATED")])

    def action(self, iid: str, action: str) -> dict[str, Any]:
        instance = self._instance(iid)
        state = instance["lifecycleState"]
        if action == "START" and state == "STOPPED":
            instance["lifecycleState"] = "STARTING"
            self._schedule(instance, [(self.start_delay, "RUNNING")])
        elif action == "START" and state in ("STARTING", "RUNNING"):
            pass  # already what was asked
        elif action in ("STOP", "SOFTSTOP") and state == "RUNNING":
            instance["lifecycleState"] = "STOPPING"
            self._schedule(instance, [(self.stop_delay, "STOPPED")])
        elif action in ("SOFTRESET", "RESET") and state == "RUNNING":
            instance["lifecycleState"] = "STOPPING"
            self._schedule(instance, [(self.stop_delay, "STARTING"),
                                      (self.stop_delay + self.start_delay, "RUNNING")])
        elif action not in ("START", "STOP", "SOFTSTOP", "SOFTRESET", "RESET"):
            raise ApiError(400, "InvalidParameter", f"unknown action {action}")
        else:
            raise ApiError(409, "IncorrectState", f"cannot {action} an instance that is {state}")
        return self._public(instance)

    def list_instances(self, q: dict[str, str]) -> list[dict[str, Any]]:
        seen_before = time.monotonic() - self.faults.list_lag
        return [
            self._public(i) for i in self.instances.values()
            if i["compartmentId"] == q.get("compartmentId") and i["_born"] <= seen_before
            and q.get("displayName") in (None, i["displayName"])
            and q.get("lifecycleState") in (None, i["lifecycleState"])
            and q.get("availabilityDomain") in (None, i["availabilityDomain"])
        ]

    def list_attachments(self, q: dict[str, str]) -> list[dict[str, Any]]:
        return [
            dict(a) for a in self.attachments.values()
            if a["compartmentId"] == q.get("compartmentId")
            and q.get("instanceId") in (None, a["instanceId"])
            and q.get("vnicId") in (None, a["vnicId"])
        ]

    def get_vnic(self, vid: str) -> dict[str, Any]:
        if vid not in self.vnics:
            raise ApiError(404, "NotAuthorizedOrNotFound", f"VNIC {vid} not found")
        return dict(self.vnics[vid])

    def list_images(self, q: dict[str, str]) -> list[dict[str, Any]]:
        return [
            {"id": oid, "displayName": name, "compartmentId": q.get("compartmentId"),
             "lifecycleState": "AVAILABLE", "operatingSystem": "Oracle Linux",
             "timeCreated": "2024-01-01T00:00:00.000Z"}
            for oid, name in self.images.items() if q.get("displayName") in (None, name)
        ]

    def list_subnets(self, q: dict[str, str]) -> list[dict[str, Any]]:
        return [dict(s) for s in self.subnets if q.get("vcnId") in (None, s.get("vcnId"))]

    def list_ads(self, q: dict[str, str]) -> list[dict[str, Any]]:
        return [{"name": n, "id": _ocid("ad"), "compartmentId": q.get("compartmentId")}
                for n in self.availability_domains]

    def dispatch(self, op: str, match: re.Match, q: dict[str, str], body: Any,
                 headers: Any) -> tuple[int, Any, dict[str, str]]:
        """Run one operation under the lock: (status, JSON payload, extra headers)."""
        with self._lock:
            self._advance()
            if op == "LaunchInstance":
                return 200, self.launch(body, headers.get("opc-retry-token")), {}
            if op == "GetInstance":
                return 200, self._public(self._instance(match["id"])), {}
            if op == "TerminateInstance":
                self.terminate(match["id"])
                return 204, None, {}
            if op == "InstanceAction":
                return 200, self.action(match["id"], q.get("action", "")), {}
            if op == "GetVnic":
                return 200, self.get_vnic(match["id"]), {}
            if op == "ListAvailabilityDomains":
                return 200, self.list_ads(q), {}
            lister = {
                "ListInstances": self.list_instances,
                "ListVnicAttachments": self.list_attachments,
                "ListImages": self.list_images,
                "ListSubnets": self.list_subnets,
            }[op]
            if op in ("ListInstances", "ListVnicAttachments") and not q.get("compartmentId"):
                raise ApiError(400, "MissingParameter", "compartmentId is required")
            return self._page(lister(q), q)

    def _page(self, items: list[Any], q: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        start = int(q.get("page") or 0)
        size = min(int(q.get("limit") or self.page_size), self.page_size)
        headers = {}
        if start + size < len(items):
            headers["opc-next-page"] = str(start + size)
        return 200, items[start:start + size], headers

    # ----------------------------------------------------------------- request admission
    def admit(self, op: str) -> None:
        """Decide the fate of a request before it is handled (rate limit, injected faults)."""
        faults = self.faults
        with self._lock:
            self.received[op] += 1
            roll = self._random.random
            if faults.reset_fraction and self._applies(op) and roll() < faults.reset_fraction:
                self.injected["reset"] += 1
                raise _Reset()
            if faults.rate_limit and not self._limiter.allow(faults.rate_limit, faults.rate_burst):
                self.rejected += 1
                raise ApiError(429, "TooManyRequests", "Too many requests for the tenancy")
        if faults.latency:
            time.sleep(faults.latency)
        with self._lock:
            if not self._applies(op):
                return
            if faults.throttle_first > 0:
                faults.throttle_first -= 1
                self.injected["throttle"] += 1
                raise ApiError(429, "TooManyRequests", "Too many requests")
            if faults.throttle_fraction and roll() < faults.throttle_fraction:
                self.injected["throttle"] += 1
                raise ApiError(429, "TooManyRequests", "Too many requests")
            if faults.error_fraction and roll() < faults.error_fraction:
                self.injected["error"] += 1
                raise ApiError(500, "InternalError", "Internal error, please retry")

    def _applies(self, op: str) -> bool:
        return self.faults.operations is None or op in self.faults.operations

    def reset_after(self, op: str) -> bool:
        with self._lock:
            hit = bool(self.faults.reset_after_fraction and self._applies(op)
                       and self._random.random() < self.faults.reset_after_fraction)
            if hit:
                self.injected["reset_after"] += 1
            return hit

    def record(self, op: str, status: int) -> None:
        with self._lock:
            self.log.append((time.monotonic(), op, status))
            if status < 300:
                self.handled[op] += 1


# --------------------------------------------------------------------- credentials
def write_oci_config(directory: Any, profile: str = "DEFAULT") -> tuple[Any, Any]:
    """A fresh RSA key and an OCI config file (both mode 600) in ``directory``.

    Returns (config file path, public key) so the emulator can verify the SDK's signatures.
    """
    import os
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    directory = Path(directory)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = directory / "oci_api_key.pem"
    config_file = directory / "oci_config"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    for path, data in ((key_file, pem), (config_file, (
        f"[{profile}]\nuser=ocid1.user.oc1..emu\nfingerprint=12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0\n"
        f"tenancy=ocid1.tenancy.oc1..emu\nregion={REGION}\nkey_file={key_file}\n").encode())):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return config_file, key.public_key()


# --------------------------------------------------------------------- request signatures
_AUTH = re.compile(r'(\w+)="([^"]*)"')


def check_signature(public_key: Any, method: str, target: str, headers: Any, body: bytes) -> Optional[str]:
    """Why the request's OCI signature is not acceptable, or None if it is.

    ``public_key`` True checks only that the Authorization header is present and well formed;
    an RSA public key also verifies the signature over the signed headers.
    """
    auth = headers.get("authorization", "")
    if not auth.startswith("Signature "):
        return "no Signature authorization header"
    fields = dict(_AUTH.findall(auth))
    for key in ("version", "keyId", "algorithm", "headers", "signature"):
        if key not in fields:
            return f"authorization header has no {key}"
    if fields["algorithm"] != "rsa-sha256" or fields["keyId"].count("/") != 2:
        return "unsupported algorithm or malformed keyId"
    signed = fields["headers"].split()
    required = {"date", "(request-target)", "host"}
    if method in ("POST", "PUT", "PATCH"):
        required |= {"content-length", "content-type", "x-content-sha256"}
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if headers.get("x-content-sha256") != digest:
            return "x-content-sha256 does not match the body"
    if not required <= set(signed):
        return f"signature does not cover {sorted(required - set(signed))}"
    if public_key is True:
        return None
    lines = []
    for name in signed:
        value = f"{method.lower()} {target}" if name == "(request-target)" else headers.get(name, "")
        lines.append(f"{name}: {value}")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        public_key.verify(base64.b64decode(fields["signature"]), "\n".join(lines).encode(),
                          padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return "signature does not verify"
    return None


# --------------------------------------------------------------------- HTTP plumbing
class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


def _handler_for(emu: OciEmulator) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._serve()

        do_POST = do_DELETE = do_PUT = do_GET

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            path = url.path[len(API):] if url.path.startswith(API) else None
            op, match = self._route(path)
            if op is None or match is None:
                return self._send(404, {"code": "NotFound", "message": f"no route {self.command} {url.path}"})
            problem = check_signature(emu.public_key, self.command, self.path, self.headers, raw) \
                if emu.public_key is not None else None
            if problem:
                return self._answer(op, 401, {"code": "NotAuthenticated", "message": problem})
            try:
                emu.admit(op)
                body = json.loads(raw) if raw else None
                status, payload, headers = emu.dispatch(op, match, q, body, self.headers)
            except _Reset:
                return self._reset()
            except ApiError as err:
                return self._answer(op, err.status, {"code": err.code, "message": err.message})
            if emu.reset_after(op):
                return self._reset()
            self._answer(op, status, payload, headers)

        def _route(self, path: Optional[str]) -> tuple[Optional[str], Optional[re.Match]]:
            for method, pattern, op in ROUTES:
                match = pattern.match(path or "") if method == self.command else None
                if match:
                    return op, match
            return None, None

        def _answer(self, op: str, status: int, payload: Any, headers: Optional[dict] = None) -> None:
            emu.record(op, status)
            headers = dict(headers or {})
            if status == 429 and emu.faults.retry_after is not None:
                headers["Retry-After"] = str(emu.faults.retry_after)
            self._send(status, payload, headers)

        def _send(self, status: int, payload: Any, headers: Optional[dict] = None) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("opc-request-id", f"{random.getrandbits(64):016X}")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _reset(self) -> None:
            # SO_LINGER 0: close() sends RST, as a dropped connection or a crashed proxy would
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True

    return Handler


if __name__ == "__main__":
    with OciEmulator(images={"ocid1.image.oc1..emu": "emu-image"}) as emulator:
        print(f"OCI emulator on {emulator.url}{API}; Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
