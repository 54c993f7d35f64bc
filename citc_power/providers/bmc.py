"""Where each node's BMC is and which credentials open it; shared by the bare-metal providers.

A provider that talks to BMCs (IPMI, Redfish) reads these settings with :meth:`BmcDirectory.read`
inside its ``from_settings``::

    address: "{node}-ipmi"            # template; {node} is the Slurm node name
    addresses:                        # per-node address (and port), wins over the template
      bm001: 10.0.0.1
      bm002: {address: 10.0.0.2, port: 6230}
    manifest: /etc/citc/bmc.yaml      # node: {address, port, username, password_file, node_address}
    port: 623
    username: admin
    password_file: /etc/citc/bmc.pw   # mode 0600; or password_env: BMC_PASSWORD
    node_address: "{node}-data"       # what Slurm's NodeAddr becomes; a fixed string or a map

Lookup order for a node: manifest entry, then ``addresses``, then the ``address`` template.
Nothing here talks to a BMC: only the manifest and the password files' modes are looked at.
Passwords are read when first needed and never appear in a repr, a log line or an exception.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from ..errors import ConfigError, ProviderError
from ..settings import SettingsReader, read_secret, secret_file_problem
from .base import CONFIG

BMC_SETTINGS: dict[str, str] = {
    "address": "BMC address template, {node} is the node name, e.g. '{node}-ipmi' or '{node}.oob'",
    "addresses": "per-node BMC address: node: host, or node: {address: host, port: N}",
    "manifest": "YAML file of node: {address, port, username, password_file, node_address}",
    "port": "BMC port for nodes whose entry gives none",
    "username": "BMC user for nodes whose manifest entry gives none",
    "password_file": "file holding the BMC password (mode 0600) for nodes without their own",
    "password_env": "environment variable holding the BMC password (removed once read)",
    "node_address": "NodeAddr to report to Slurm: a fixed address, a '{node}' template or a map; "
    "unset = leave Slurm's NodeAddr alone",
}

_ENTRY_KEYS = ("address", "port", "username", "password_file", "node_address")


class Secret:
    """A password from a file (read on first use) or an environment variable; never shown."""

    def __init__(
        self, path: Optional[Path] = None, env: Optional[str] = None, value: Optional[str] = None
    ):
        self.path = path
        self.env = env
        self._value = value
        self._lock = threading.Lock()

    def reveal(self, what: str = "BMC password") -> str:
        """The password itself.

        :raises ConfigError: the file cannot be read or is readable by others.
        """
        with self._lock:
            if self._value is None:
                self._value = read_secret(path=self.path, env=self.env, what=what)
            return self._value

    def __repr__(self) -> str:
        source = f"file={self.path}" if self.path is not None else f"env={self.env}"
        return f"Secret({source})"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class BmcEndpoint:
    """How to reach one node's BMC."""

    node: str
    address: str
    port: int
    username: str
    password: Secret

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}"


@dataclasses.dataclass(frozen=True)
class _Entry:
    address: str
    port: Optional[int] = None
    username: Optional[str] = None
    password: Optional[Secret] = None
    node_address: Optional[str] = None


class BmcDirectory:
    """Resolves node names to BMC endpoints and to the NodeAddr to report."""

    def __init__(
        self,
        template: Optional[str],
        entries: Mapping[str, _Entry],
        port: int,
        username: Optional[str],
        password: Optional[Secret],
        node_address: Any = None,
    ):
        self.template = template
        self.entries = dict(entries)
        self.port = port
        self.username = username
        self.password = password
        self._node_address = node_address  # None, a str template or a {node: address} map

    @classmethod
    def read(
        cls, s: SettingsReader, default_port: int, template_needs_node: bool = True
    ) -> "BmcDirectory":
        """Read the BMC settings from ``s``, recording every problem in it (no BMC traffic).

        ``template_needs_node``: an ``address`` without ``{node}`` is refused (every node would
        share one BMC), as fits IPMI; a Redfish service may serve many systems at one address.
        """
        template = s.str("address", None)
        if template is not None:
            _check_template(s, "address", template, template_needs_node)
        port = s.int("port", default_port, minimum=1)
        username = s.str("username", None)
        password = _read_password(s)
        entries = _read_addresses(s)
        manifest = s.path("manifest", None)
        if manifest is not None and manifest.exists():
            entries.update(_read_manifest(s, manifest))
        node_address = _read_node_address(s)
        if template is None and not entries:
            s.problem(
                "address",
                "missing; set a template such as '{node}-ipmi', or addresses, or manifest",
            )
        no_user = sorted(n for n, e in entries.items() if e.username is None)
        if username is None and (template is not None or no_user or not entries):
            why = f", and node {no_user[0]} has no username of its own" if no_user else ""
            s.problem("username", f"missing{why}; set the BMC user name")
        no_password = sorted(n for n, e in entries.items() if e.password is None)
        if password is None and (template is not None or no_password or not entries):
            why = (
                f", and node {no_password[0]} has no password_file of its own"
                if no_password
                else ""
            )
            s.problem(
                "password_file", f"missing{why}; set password_file (mode 0600) or password_env"
            )
        return cls(template, entries, port or default_port, username, password, node_address)

    def endpoint(self, node: str) -> BmcEndpoint:
        """Where ``node``'s BMC is.

        :raises ProviderError: (code ``config``) the node has no address or no credentials.
        """
        entry = self.entries.get(node)
        if entry is None:
            if self.template is None:
                raise ProviderError(
                    CONFIG, f"no BMC address for {node}; add it to addresses or the manifest"
                )
            entry = _Entry(address=self.template.format(node=node))
        username = entry.username or self.username
        password = entry.password or self.password
        if username is None or password is None:
            raise ProviderError(
                CONFIG, f"no BMC credentials for {node}; set username and password_file"
            )
        return BmcEndpoint(node, entry.address, entry.port or self.port, username, password)

    def node_address(self, node: str) -> Optional[str]:
        """The NodeAddr to report for ``node``, or None to leave Slurm's as it is."""
        entry = self.entries.get(node)
        if entry is not None and entry.node_address:
            return entry.node_address
        if isinstance(self._node_address, str):
            return self._node_address.format(node=node)
        if isinstance(self._node_address, Mapping):
            value = self._node_address.get(node)
            return str(value) if value is not None else None
        return None


def _check_template(s: SettingsReader, key: str, template: str, needs_node: bool) -> None:
    try:
        template.format(node="node1")
    except (KeyError, IndexError, ValueError) as exc:
        s.problem(key, f"{template!r} is not a valid template ({exc!r}); only {{node}} may be used")
        return
    if needs_node and "{node}" not in template:
        s.problem(
            key,
            f"{template!r} has no {{node}}, so every node would use one BMC; "
            "use a template like '{node}-ipmi', or addresses/manifest",
        )


def _read_password(s: SettingsReader) -> Optional[Secret]:
    path = s.secret_file("password_file", None)
    env = s.str("password_env", None)
    if path is not None and env is not None:
        s.problem("password_env", "set either password_file or password_env, not both")
    if path is not None:
        return Secret(path=path)
    if env is not None:
        try:
            return Secret(env=env, value=read_secret(env=env, what=s.where("password_env")))
        except ConfigError as exc:
            s.problems.extend(exc.problems)
    return None


def _read_addresses(s: SettingsReader) -> dict[str, _Entry]:
    raw = s.mapping("addresses", None) or {}
    entries: dict[str, _Entry] = {}
    for node, value in raw.items():
        where = f"{s.where('addresses')}.{node}"
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            entries[str(node)] = _Entry(address=str(value))
        elif isinstance(value, Mapping):
            entry = _parse_entry(where, value, ("address", "port"), s.problems, base=None)
            if entry is not None:
                entries[str(node)] = entry
        else:
            s.problems.append(f"{where}: must be an address or {{address: host, port: N}}")
    return entries


def _read_manifest(s: SettingsReader, path: Path) -> dict[str, _Entry]:
    where = f"{s.where('manifest')}: {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        s.problems.append(f"{where}: cannot be read ({exc.strerror}); check the path")
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        s.problems.append(f"{where}:{line} is not valid YAML; fix the syntax")
        return {}
    if not isinstance(data, Mapping):
        s.problems.append(
            f"{where}: must be a mapping of node: {{address, port, username, password_file}}"
        )
        return {}
    entries: dict[str, _Entry] = {}
    for node, value in data.items():
        if not isinstance(value, Mapping):
            s.problems.append(f"{where}: {node}: must be a mapping with at least address")
            continue
        entry = _parse_entry(f"{where}: {node}", value, _ENTRY_KEYS, s.problems, base=path.parent)
        if entry is not None:
            entries[str(node)] = entry
    return entries


def _parse_entry(
    where: str,
    value: Mapping[str, Any],
    keys: tuple[str, ...],
    problems: list[str],
    base: Optional[Path],
) -> Optional[_Entry]:
    start = len(problems)
    for key in sorted(set(value) - set(keys)):
        problems.append(f"{where}.{key}: unknown; known ones are {', '.join(keys)}")
    address = value.get("address")
    if not isinstance(address, str) or not address:
        problems.append(f"{where}.address: missing; give the BMC host name or IP address")
    port = value.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        problems.append(f"{where}.port: must be a port number, not {port!r}")
    strings = {k: value.get(k) for k in ("username", "password_file", "node_address")}
    for key, text in strings.items():
        if text is not None and not isinstance(text, str):
            problems.append(f"{where}.{key}: must be a string")
    password = None
    if isinstance(strings["password_file"], str):
        path = Path(strings["password_file"]).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        problem = secret_file_problem(path)
        if problem:
            problems.append(f"{where}.password_file: {problem}")
        password = Secret(path=path)
    if len(problems) > start:
        return None
    return _Entry(str(address), port, strings["username"], password, strings["node_address"])


def _read_node_address(s: SettingsReader) -> Any:
    raw = s.settings.get("node_address")
    if raw is None:
        return None
    if isinstance(raw, str):
        _check_template(s, "node_address", raw, needs_node=False)
        return raw
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    s.problem("node_address", "must be an address, a '{node}' template or a map of node: address")
    return None
