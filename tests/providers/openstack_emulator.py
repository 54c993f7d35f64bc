"""A small OpenStack cloud on 127.0.0.1 for the real openstacksdk: Keystone, Nova, Glance, Neutron.

Only what the OpenStack provider uses is served, in the shapes the real services answer with:

- Keystone v3: version document, ``POST /v3/auth/tokens`` (password or application credential)
  returning ``X-Subject-Token`` and a catalog pointing at the services below.
- Nova (microversion 2.1): servers create / get / list (``/servers`` and ``/servers/detail``, with
  the ``name`` regular-expression filter and ``limit``/``marker`` pages) / delete, the ``reboot``,
  ``rebuild`` and ``os-start`` actions, flavors (detail).
- Glance v2 images and Neutron v2.0 networks, enough for name-or-id look-ups.

Servers move through their lifecycle by the clock (BUILD -> ACTIVE or ERROR with a ``fault``;
REBUILD / REBOOT / HARD_REBOOT -> ACTIVE). Faults per server name, HTTP 429 for a fraction of
the compute requests (with or without ``Retry-After``) and a per-request latency can be injected.
Everything the provider asked for is recorded for the tests to check. ``hooks`` let a server's
"machine" act when it comes up, goes down for a reboot or rebuild, or is deleted (the real-Slurm
test starts and stops the node's slurmd there).
"""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import json
import queue
import random
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import yaml

NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
DEFAULT_FLAVORS = {"m1.small": (1, 2048), "m1.large": (4, 8192), "c2.xlarge": (8, 16384)}
DEFAULT_IMAGES = ("rocky-9", "rocky-9-new", "ubuntu-22.04")
DEFAULT_NETWORKS = ("cluster-net", "other-net")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class EmulatedServer:
    id: str
    name: str
    flavor_id: str
    image_id: str  # "" when booted from a volume
    network: str  # network name the fixed address is on
    address: str
    key_name: str | None
    metadata: dict[str, str]
    security_groups: list[str]
    availability_zone: str
    user_data: str | None
    block_device_mapping: list[dict[str, Any]]
    created: str
    status: str = "BUILD"  # the status reached when ``until`` passes is ``next_status``
    next_status: str = "ACTIVE"
    until: float = 0.0
    task_state: str | None = "spawning"
    fault: dict[str, Any] | None = None
    deleted_at: float | None = None  # set when a delete is in progress


class OpenStackEmulator:
    """The emulated cloud; ``start()`` it, write a clouds.yaml with ``write_clouds_yaml``."""

    def __init__(
        self,
        build_seconds: float = 0.3,
        rebuild_seconds: float = 0.3,
        reboot_seconds: float = 0.2,
        delete_seconds: float = 0.0,
        page_size: int = 1000,
        flavors: dict[str, tuple[int, int]] | None = None,
        images: tuple[str, ...] = DEFAULT_IMAGES,
        networks: tuple[str, ...] = DEFAULT_NETWORKS,
        username: str = "demo",
        password: str = "secret-password",
        app_cred_id: str = "appcred-id-1",
        app_cred_secret: str = "appcred-secret-1",
        seed: int = 1,
    ):
        self.build_seconds = build_seconds
        self.rebuild_seconds = rebuild_seconds
        self.reboot_seconds = reboot_seconds
        self.delete_seconds = delete_seconds
        self.page_size = page_size
        self.credentials = {"password": (username, password), "app": (app_cred_id, app_cred_secret)}
        self.flavors = {
            name: {"id": f"flavor-{i + 1}", "name": name, "vcpus": vcpus, "ram": ram, "disk": 20}
            for i, (name, (vcpus, ram)) in enumerate((flavors or DEFAULT_FLAVORS).items())
        }
        self.images = {str(uuid.uuid5(uuid.NAMESPACE_DNS, n)): n for n in images}
        self.networks = {str(uuid.uuid5(uuid.NAMESPACE_URL, n)): n for n in networks}
        # injections
        self.faults: dict[str, str] = {}  # server name -> fault message (the server goes ERROR)
        self.throttle_fraction = 0.0  # share of compute API requests answered 429
        self.throttle_retry_after: int | None = None  # seconds in Retry-After, or none sent
        self.latency = 0.0  # seconds added to every response
        self.refuse_soft_reboot = False  # answer 409 to SOFT reboots, as Nova does in some states
        # records
        self.servers: dict[str, EmulatedServer] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.creates: list[dict[str, Any]] = []  # request bodies of accepted creates
        self.rebuilds: list[tuple[str, str, str]] = []  # (server name, server id, image id)
        self.reboots: list[tuple[str, str]] = []  # (server name, SOFT|HARD)
        self.starts: list[str] = []
        self.deletes: list[tuple[str, str]] = []  # (server name, server id)
        self.throttled = 0
        self.tokens_issued = 0
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._address_seq = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        # what a machine does when its server changes, e.g. start or stop a node's slurmd:
        # "active" (BUILD/REBUILD/REBOOT done), "down" (reboot or rebuild begins), "deleted"
        self.hooks: dict[str, Callable[[EmulatedServer], Any]] = {}
        self._events: queue.Queue[tuple[str, EmulatedServer] | None] = queue.Queue()
        self._stopping = threading.Event()

    # ---- lifecycle of the emulator itself ----
    @property
    def port(self) -> int:
        assert self._server is not None, "start() the emulator first"
        return self._server.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OpenStackEmulator:
        handler = type("Handler", (_Handler,), {"emulator": self})
        server = _HTTPServer(("127.0.0.1", 0), handler)
        self._server = server
        self._stopping.clear()
        for target, args in (
            (server.serve_forever, (0.05,)),
            (self._tick, ()),
            (self._run_hooks, ()),
        ):
            thread = threading.Thread(
                target=target, args=args, name="openstack-emulator", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._events.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads = []

    def _tick(self) -> None:
        """Move lifecycles on by the clock even when nobody asks, so hooks run on time."""
        while not self._stopping.wait(0.05):
            with self._lock:
                self._advance()

    def _run_hooks(self) -> None:
        """Run hooks one at a time, in order, outside the lock (they may take seconds)."""
        while True:
            event = self._events.get()
            if event is None:
                return
            kind, server = event
            hook = self.hooks.get(kind)
            if hook is None:
                continue
            try:
                hook(server)
            except Exception as exc:  # noqa: BLE001 - a failing hook must not stop the emulator
                print(f"openstack emulator: {kind} hook failed for {server.name}: {exc!r}")

    def write_clouds_yaml(
        self, path: Path, cloud: str = "testcloud", auth: str = "application_credential"
    ) -> Path:
        """Write a clouds.yaml as a site does; ``auth`` is application_credential or password."""
        entry: dict[str, Any]
        if auth == "application_credential":
            app_id, secret = self.credentials["app"]
            entry = {
                "auth_type": "v3applicationcredential",
                "auth": {
                    "auth_url": f"{self.base}/v3",
                    "application_credential_id": app_id,
                    "application_credential_secret": secret,
                },
            }
        else:
            user, password = self.credentials["password"]
            entry = {
                "auth": {
                    "auth_url": f"{self.base}/v3",
                    "username": user,
                    "password": password,
                    "project_name": "demo",
                    "user_domain_name": "Default",
                    "project_domain_name": "Default",
                },
            }
        entry.update({"region_name": "RegionOne", "interface": "public", "identity_api_version": 3})
        path.write_text(yaml.safe_dump({"clouds": {cloud: entry}}))
        path.chmod(0o600)
        return path

    # ---- helpers for tests ----
    def image_id(self, name: str) -> str:
        return next(i for i, n in self.images.items() if n == name)

    def network_id(self, name: str) -> str:
        return next(i for i, n in self.networks.items() if n == name)

    def live(self, name: str | None = None) -> list[EmulatedServer]:
        """Servers not deleted (only those called ``name`` if given), their lifecycle up to date."""
        with self._lock:
            self._advance()
            return [
                s
                for s in self.servers.values()
                if s.deleted_at is None and (name is None or s.name == name)
            ]

    def count(self, method: str, pattern: str) -> int:
        """How many requests matched ``method`` and the regular expression ``pattern``."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    def add_server(self, name: str, status: str = "ACTIVE", **kw: Any) -> EmulatedServer:
        """Place a server directly (as if made earlier), e.g. to test idempotency or leftovers."""
        with self._lock:
            server = self._new_server(
                {
                    "name": name,
                    "flavorRef": kw.pop("flavor_id", "flavor-1"),
                    "imageRef": kw.pop("image_id", self.image_id(DEFAULT_IMAGES[0])),
                    "metadata": kw.pop("metadata", {}),
                    **kw,
                },
                network=kw.get("network", DEFAULT_NETWORKS[0]),
            )
            server.status, server.next_status, server.task_state, server.until = (
                status,
                status,
                None,
                0.0,
            )
            if status == "ERROR":
                server.fault = {
                    "code": 500,
                    "message": self.faults.get(name, NO_VALID_HOST),
                    "created": _now_iso(),
                }
            return server

    # ---- state ----
    def _advance(self) -> None:
        now = time.monotonic()
        for sid in list(self.servers):
            s = self.servers[sid]
            if s.deleted_at is not None:
                if now >= s.deleted_at:
                    del self.servers[sid]
                continue
            if s.status != s.next_status and now >= s.until:
                s.status, s.task_state = s.next_status, None
                if s.status == "ACTIVE":
                    self._events.put(("active", s))
                if s.status == "ERROR":
                    s.fault = {
                        "code": 500,
                        "message": self.faults.get(s.name, "error"),
                        "created": _now_iso(),
                    }

    def _next_address(self) -> str:
        self._address_seq += 1
        n = self._address_seq
        return f"127.0.{1 + n // 250}.{n % 250 + 2}"

    def _new_server(self, body: dict[str, Any], network: str) -> EmulatedServer:
        server = EmulatedServer(
            id=str(uuid.uuid4()),
            name=body["name"],
            flavor_id=body["flavorRef"],
            image_id=body.get("imageRef") or "",
            network=network,
            address=self._next_address(),
            key_name=body.get("key_name"),
            metadata=dict(body.get("metadata") or {}),
            security_groups=[
                g["name"] for g in body.get("security_groups") or [{"name": "default"}]
            ],
            availability_zone=body.get("availability_zone") or "nova",
            user_data=body.get("user_data"),
            block_device_mapping=list(body.get("block_device_mapping_v2") or []),
            created=_now_iso(),
        )
        server.until = time.monotonic() + self.build_seconds
        server.next_status = "ERROR" if body["name"] in self.faults else "ACTIVE"
        self.servers[server.id] = server
        return server

    def server_json(self, s: EmulatedServer, detail: bool = True) -> dict[str, Any]:
        link = [{"rel": "self", "href": f"{self.base}/compute/v2.1/servers/{s.id}"}]
        if not detail:
            return {"id": s.id, "name": s.name, "links": link}
        body: dict[str, Any] = {
            "id": s.id,
            "name": s.name,
            "status": s.status,
            "links": link,
            "tenant_id": "project-1",
            "user_id": "user-1",
            "hostId": "host-1",
            "metadata": s.metadata,
            "key_name": s.key_name,
            "image": {"id": s.image_id, "links": []} if s.image_id else "",
            "flavor": {"id": s.flavor_id, "links": []},
            "addresses": {
                s.network: [
                    {
                        "addr": s.address,
                        "version": 4,
                        "OS-EXT-IPS:type": "fixed",
                        "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01",
                    }
                ]
            }
            if s.status != "BUILD"
            else {},
            "created": s.created,
            "updated": _now_iso(),
            "accessIPv4": "",
            "accessIPv6": "",
            "OS-EXT-STS:task_state": "deleting" if s.deleted_at is not None else s.task_state,
            "OS-EXT-STS:vm_state": s.status.lower(),
            "OS-EXT-STS:power_state": 1 if s.status == "ACTIVE" else 0,
            "OS-EXT-AZ:availability_zone": s.availability_zone,
            "security_groups": [{"name": g} for g in s.security_groups],
            "os-extended-volumes:volumes_attached": [],
            "config_drive": "",
            "progress": 0,
        }
        if s.fault is not None:
            body["fault"] = s.fault
        return body


class _HTTPServer(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of concurrent clients must not see refused connections
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    emulator: OpenStackEmulator
    protocol_version = "HTTP/1.1"
    _raw = b""
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # -- plumbing --
    def _send(self, code: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str, kind: str = "itemNotFound") -> None:
        self._send(code, {kind: {"code": code, "message": message}})

    def _body(self) -> dict[str, Any]:
        return json.loads(self._raw or b"{}")

    def _dispatch(self, method: str) -> None:
        emu = self.emulator
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # read the body even when refusing the request, or it would be taken for the next one
        self._raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with emu._lock:
            emu.requests.append((method, self.path))
        if emu.latency:
            time.sleep(emu.latency)
        for pattern, verb, handler in _ROUTES:
            match = re.fullmatch(pattern, url.path.rstrip("/") or "/")
            if match and verb == method:
                if url.path.startswith("/compute/v2.1/") and self._throttled():
                    return
                handler(self, query, *match.groups())
                return
        self._error(404, f"no route for {method} {url.path}")

    def _throttled(self) -> bool:
        emu = self.emulator
        with emu._lock:
            hit = emu.throttle_fraction > 0 and emu._rng.random() < emu.throttle_fraction
            if hit:
                emu.throttled += 1
        if hit:
            headers = (
                {}
                if emu.throttle_retry_after is None
                else {"Retry-After": str(emu.throttle_retry_after)}
            )
            self._send(429, {"overLimit": {"code": 429, "message": "Rate limit exceeded"}}, headers)
        return hit

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- keystone --
    def identity_version(self, query: dict[str, str]) -> None:
        self._send(
            200,
            {
                "version": {
                    "id": "v3.14",
                    "status": "stable",
                    "updated": "2020-04-07T00:00:00Z",
                    "links": [{"rel": "self", "href": f"{self.emulator.base}/v3/"}],
                    "media-types": [
                        {
                            "base": "application/json",
                            "type": "application/vnd.openstack.identity-v3+json",
                        }
                    ],
                }
            },
        )

    def tokens(self, query: dict[str, str]) -> None:
        emu = self.emulator
        identity = self._body().get("auth", {}).get("identity", {})
        methods = identity.get("methods", [])
        if "application_credential" in methods:
            cred = identity.get("application_credential", {})
            ok = (cred.get("id"), cred.get("secret")) == emu.credentials["app"]
        elif "password" in methods:
            user = identity.get("password", {}).get("user", {})
            ok = (user.get("name"), user.get("password")) == emu.credentials["password"]
        else:
            ok = False
        if not ok:
            self._send(
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
            )
            return
        with emu._lock:
            emu.tokens_issued += 1
        self._send(201, _token_body(emu.base, methods), {"X-Subject-Token": uuid.uuid4().hex})

    # -- version documents of the services --
    def compute_versions(self, query: dict[str, str]) -> None:
        self._send(200, {"versions": [self._compute_version()]})

    def compute_version(self, query: dict[str, str]) -> None:
        self._send(200, {"version": self._compute_version()})

    def _compute_version(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": "2.1",
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self.emulator.base}/compute/v2.1/"}],
        }

    def image_versions(self, query: dict[str, str]) -> None:
        self._send(
            200,
            {
                "versions": [
                    {
                        "id": "v2.15",
                        "status": "CURRENT",
                        "links": [{"rel": "self", "href": f"{self.emulator.base}/image/v2/"}],
                    }
                ]
            },
        )

    def network_versions(self, query: dict[str, str]) -> None:
        self._send(
            200,
            {
                "versions": [
                    {
                        "id": "v2.0",
                        "status": "CURRENT",
                        "links": [{"rel": "self", "href": f"{self.emulator.base}/network/v2.0/"}],
                    }
                ]
            },
        )

    # -- nova --
    def list_servers(self, query: dict[str, str], detail: str | None) -> None:
        emu = self.emulator
        with emu._lock:
            emu._advance()
            pattern = query.get("name")
            found = [s for s in emu.servers.values() if not pattern or re.search(pattern, s.name)]
            found.sort(key=lambda s: (s.created, s.id))
            if "marker" in query:
                ids = [s.id for s in found]
                if query["marker"] not in ids:
                    self._error(400, f"marker [{query['marker']}] not found", "badRequest")
                    return
                found = found[ids.index(query["marker"]) + 1 :]
            limit = min(int(query.get("limit", emu.page_size)), emu.page_size)
            page = found[:limit]
            body: dict[str, Any] = {"servers": [emu.server_json(s, bool(detail)) for s in page]}
            if len(found) > limit:
                rest = {k: v for k, v in query.items() if k != "marker"}
                qs = "&".join(
                    f"{k}={v}"
                    for k, v in {**rest, "limit": str(limit), "marker": page[-1].id}.items()
                )
                body["servers_links"] = [
                    {"rel": "next", "href": f"{emu.base}/compute/v2.1/servers{detail or ''}?{qs}"}
                ]
        self._send(200, body)

    def get_server(self, query: dict[str, str], sid: str) -> None:
        emu = self.emulator
        with emu._lock:
            emu._advance()
            server = emu.servers.get(sid)
            body = emu.server_json(server) if server else None
        if body is None:
            self._error(404, f"Instance {sid} could not be found.")
        else:
            self._send(200, {"server": body})

    def create_server(self, query: dict[str, str]) -> None:
        emu = self.emulator
        body = self._body().get("server", {})
        problem = self._check_create(body)
        if problem:
            self._error(400, problem, "badRequest")
            return
        nets = body.get("networks") or []
        net_id = nets[0].get("uuid") if nets and isinstance(nets, list) else None
        network = emu.networks.get(net_id or "", DEFAULT_NETWORKS[0])
        with emu._lock:
            emu.creates.append(body)
            server = emu._new_server(body, network)
        self._send(
            202,
            {
                "server": {
                    "id": server.id,
                    "links": [],
                    "adminPass": "x",
                    "OS-DCF:diskConfig": "MANUAL",
                    "security_groups": [{"name": g} for g in server.security_groups],
                }
            },
        )

    def _check_create(self, body: dict[str, Any]) -> str | None:
        emu = self.emulator
        if not body.get("name"):
            return "Invalid input for field/attribute server. 'name' is a required property"
        if body.get("flavorRef") not in {f["id"] for f in emu.flavors.values()}:
            return f"Flavor {body.get('flavorRef')} could not be found."
        bdm = body.get("block_device_mapping_v2") or []
        image = body.get("imageRef") or (bdm[0].get("uuid") if bdm else None)
        if image not in emu.images:
            return f"Image {image} could not be found."
        for net in body.get("networks") or []:
            if net.get("uuid") not in emu.networks:
                return f"Network {net.get('uuid')} could not be found."
        return None

    def delete_server(self, query: dict[str, str], sid: str) -> None:
        emu = self.emulator
        with emu._lock:
            server = emu.servers.get(sid)
            if server is None or server.deleted_at is not None:
                server = None
            else:
                emu.deletes.append((server.name, sid))
                emu._events.put(("deleted", server))
                server.deleted_at = time.monotonic() + emu.delete_seconds
                emu._advance()
        if server is None:
            self._error(404, f"Instance {sid} could not be found.")
        else:
            self._send(204)

    def server_action(self, query: dict[str, str], sid: str) -> None:
        emu = self.emulator
        body = self._body()
        with emu._lock:
            emu._advance()
            server = emu.servers.get(sid)
            if server is None:
                self._error(404, f"Instance {sid} could not be found.")
                return
            problem = self._apply_action(server, body)
        if problem:
            self._error(409, problem, "conflictingRequest")
        else:
            self._send(202)

    def _apply_action(self, s: EmulatedServer, body: dict[str, Any]) -> str | None:
        emu = self.emulator
        now = time.monotonic()
        if "reboot" in body:
            kind = body["reboot"].get("type", "SOFT").upper()
            if kind == "SOFT" and emu.refuse_soft_reboot:
                return f"Cannot 'reboot' instance {s.id} while it is in task_state reboot_pending"
            if s.status != "ACTIVE" and not (kind == "HARD" and s.status in ("SHUTOFF", "ERROR")):
                return f"Cannot 'reboot' instance {s.id} while it is in vm_state {s.status.lower()}"
            emu.reboots.append((s.name, kind))
            emu._events.put(("down", s))
            s.status = "REBOOT" if kind == "SOFT" else "HARD_REBOOT"
            s.next_status, s.until, s.task_state = "ACTIVE", now + emu.reboot_seconds, "rebooting"
        elif "rebuild" in body:
            image = body["rebuild"].get("imageRef")
            if s.status not in ("ACTIVE", "SHUTOFF", "ERROR"):
                return (
                    f"Cannot 'rebuild' instance {s.id} while it is in vm_state {s.status.lower()}"
                )
            if image not in emu.images:
                return f"Image {image} could not be found."
            emu.rebuilds.append((s.name, s.id, image))
            emu._events.put(("down", s))
            s.image_id, s.status, s.fault = image, "REBUILD", None
            s.next_status, s.until, s.task_state = "ACTIVE", now + emu.rebuild_seconds, "rebuilding"
        elif "os-start" in body:
            if s.status != "SHUTOFF":
                return f"Cannot 'start' instance {s.id} while it is in vm_state {s.status.lower()}"
            emu.starts.append(s.name)
            s.status, s.next_status, s.until, s.task_state = "ACTIVE", "ACTIVE", now, None
            emu._events.put(("active", s))
        else:
            return f"unsupported action {sorted(body)}"
        return None

    def list_flavors(self, query: dict[str, str], detail: str | None) -> None:
        flavors = [self._flavor_json(f) for f in self.emulator.flavors.values()]
        self._send(200, {"flavors": flavors})

    def get_flavor(self, query: dict[str, str], fid: str) -> None:
        found = [f for f in self.emulator.flavors.values() if f["id"] == fid]
        if found:
            self._send(200, {"flavor": self._flavor_json(found[0])})
        else:
            self._error(404, f"Flavor {fid} could not be found.")

    def _flavor_json(self, f: dict[str, Any]) -> dict[str, Any]:
        return {
            **f,
            "links": [],
            "swap": 0,
            "OS-FLV-EXT-DATA:ephemeral": 0,
            "OS-FLV-DISABLED:disabled": False,
            "os-flavor-access:is_public": True,
            "rxtx_factor": 1.0,
        }

    # -- glance --
    def list_images(self, query: dict[str, str]) -> None:
        found = [
            self._image_json(i, n)
            for i, n in self.emulator.images.items()
            if "name" not in query or query["name"] == n
        ]
        self._send(200, {"images": found, "first": "/v2/images", "schema": "/v2/schemas/images"})

    def get_image(self, query: dict[str, str], iid: str) -> None:
        name = self.emulator.images.get(iid)
        if name is None:
            self._send(404, None)
        else:
            self._send(200, self._image_json(iid, name))

    def _image_json(self, iid: str, name: str) -> dict[str, Any]:
        return {
            "id": iid,
            "name": name,
            "status": "active",
            "visibility": "public",
            "disk_format": "qcow2",
            "container_format": "bare",
            "min_disk": 0,
            "min_ram": 0,
            "size": 1024,
            "tags": [],
            "self": f"/v2/images/{iid}",
            "file": f"/v2/images/{iid}/file",
            "schema": "/v2/schemas/image",
        }

    # -- neutron --
    def list_networks(self, query: dict[str, str]) -> None:
        found = [
            self._network_json(i, n)
            for i, n in self.emulator.networks.items()
            if "name" not in query or query["name"] == n
        ]
        self._send(200, {"networks": found})

    def get_network(self, query: dict[str, str], nid: str) -> None:
        name = self.emulator.networks.get(nid)
        if name is None:
            self._send(
                404,
                {
                    "NeutronError": {
                        "type": "NetworkNotFound",
                        "message": f"Network {nid} could not be found.",
                        "detail": "",
                    }
                },
            )
        else:
            self._send(200, {"network": self._network_json(nid, name)})

    def _network_json(self, nid: str, name: str) -> dict[str, Any]:
        return {
            "id": nid,
            "name": name,
            "status": "ACTIVE",
            "admin_state_up": True,
            "subnets": [],
            "shared": False,
            "tenant_id": "project-1",
            "project_id": "project-1",
            "mtu": 1500,
        }


def _token_body(base: str, methods: list[str]) -> dict[str, Any]:
    def service(kind: str, name: str, path: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": name,
            "id": f"svc-{name}",
            "endpoints": [
                {
                    "id": f"ep-{name}-{iface}",
                    "interface": iface,
                    "region": "RegionOne",
                    "region_id": "RegionOne",
                    "url": f"{base}{path}",
                }
                for iface in ("public", "internal")
            ],
        }

    domain = {"id": "default", "name": "Default"}
    token: dict[str, Any] = {
        "methods": methods,
        "audit_ids": [uuid.uuid4().hex[:22]],
        "expires_at": "2099-01-01T00:00:00.000000Z",
        "issued_at": _now_iso().replace("Z", ".000000Z"),
        "user": {"id": "user-1", "name": "demo", "domain": domain, "password_expires_at": None},
        "project": {"id": "project-1", "name": "demo", "domain": domain},
        "is_domain": False,
        "roles": [{"id": "role-1", "name": "member"}],
        "catalog": [
            service("identity", "keystone", "/v3"),
            service("compute", "nova", "/compute/v2.1"),
            service("image", "glance", "/image"),
            service("network", "neutron", "/network"),
        ],
    }
    if "application_credential" in methods:
        token["application_credential"] = {"id": "appcred-id-1", "name": "citc", "restricted": True}
    return {"token": token}


Route = tuple[str, str, Callable[..., None]]
_ROUTES: list[Route] = [
    (r"/v3", "GET", _Handler.identity_version),
    (r"/v3/auth/tokens", "POST", _Handler.tokens),
    (r"/compute", "GET", _Handler.compute_versions),
    (r"/compute/v2\.1", "GET", _Handler.compute_version),
    (r"/compute/v2\.1/servers(/detail)?", "GET", _Handler.list_servers),
    (r"/compute/v2\.1/servers", "POST", _Handler.create_server),
    (r"/compute/v2\.1/servers/([^/]+)", "GET", _Handler.get_server),
    (r"/compute/v2\.1/servers/([^/]+)", "DELETE", _Handler.delete_server),
    (r"/compute/v2\.1/servers/([^/]+)/action", "POST", _Handler.server_action),
    (r"/compute/v2\.1/flavors(/detail)?", "GET", _Handler.list_flavors),
    (r"/compute/v2\.1/flavors/([^/]+)", "GET", _Handler.get_flavor),
    (r"/image", "GET", _Handler.image_versions),
    (r"/image/v2/images", "GET", _Handler.list_images),
    (r"/image/v2/images/([^/]+)", "GET", _Handler.get_image),
    (r"/network", "GET", _Handler.network_versions),
    (r"/network/v2\.0/networks", "GET", _Handler.list_networks),
    (r"/network/v2\.0/networks/([^/]+)", "GET", _Handler.get_network),
]
