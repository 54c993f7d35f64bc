"""Load and check the citc-power YAML config.

Lookup order: ``--config PATH``, then ``$CITC_POWER_CONFIG``, then ``/etc/citc/power.yaml``.
Every problem is collected and reported at once, each as ``file: key: what is wrong; fix``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from . import hostlist
from .errors import ConfigError, HostlistError

DEFAULT_PATH = Path("/etc/citc/power.yaml")
ENV_VAR = "CITC_POWER_CONFIG"
LEVELS = ("debug", "info", "warning", "error")
TOP_KEYS = ("log", "groups", "providers", "slurm")


@dataclasses.dataclass(frozen=True)
class LogSettings:
    file: Optional[Path] = Path("/var/log/slurm/citc-power.log")
    level: str = "info"


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    bin_dir: Optional[Path] = None  # where scontrol lives; default: search the usual places
    timeout: float = 60.0  # per scontrol call
    batch_size: int = 100  # nodes per scontrol update


@dataclasses.dataclass(frozen=True)
class Group:
    nodes: str
    provider: str
    names: frozenset[str]


@dataclasses.dataclass(frozen=True)
class ProviderSpec:
    name: str
    type: str
    settings: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Config:
    path: Path
    log: LogSettings
    slurm: SlurmSettings
    groups: tuple[Group, ...]
    providers: Mapping[str, ProviderSpec]

    def provider_of(self, node: str) -> Optional[str]:
        """The provider powering ``node``: the first group that lists it wins."""
        for group in self.groups:
            if node in group.names:
                return group.provider
        return None

    def by_provider(self, names: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
        """Split ``names`` into {provider: [names]} and the names no group lists."""
        grouped: dict[str, list[str]] = {}
        unknown: list[str] = []
        for name in names:
            provider = self.provider_of(name)
            if provider is None:
                unknown.append(name)
            else:
                grouped.setdefault(provider, []).append(name)
        return grouped, unknown


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false.

    Under YAML 1.1 the keys ``on:`` and ``off:`` of the command provider, or a node named
    ``no``, would silently become booleans.
    """


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def find_path(explicit: Optional[str] = None) -> Path:
    """The config file to use, by the lookup order above."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_PATH


def load(path: Path, check_providers: bool = False) -> Config:
    """Read and check the config at ``path``.

    With ``check_providers`` every provider's settings are checked too (offline), which
    imports each configured provider's module; the actions only build the providers they use.

    :raises ConfigError: every problem found, each prefixed with the file name.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; create it, or pass --config or set {ENV_VAR}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror}); check its permissions") from None
    try:
        data = yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{where}: invalid YAML ({problem}); fix the syntax") from None
    try:
        return parse(data, path, check_providers)
    except ConfigError as exc:
        raise exc.located(str(path)) from None


def parse(data: Any, path: Path = Path("<config>"), check_providers: bool = False) -> Config:
    """Build a Config from already-parsed YAML data."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError("top level must be a mapping with groups: and providers:")
    for key in sorted(set(data) - set(TOP_KEYS)):
        problems.append(f"{key}: unknown section; known ones are {', '.join(TOP_KEYS)}")
    log = _parse_log(data.get("log") or {}, problems)
    slurm = _parse_slurm(data.get("slurm") or {}, problems)
    providers = _parse_providers(data.get("providers"), problems)
    declared = set(data["providers"]) if isinstance(data.get("providers"), Mapping) else set()
    groups = _parse_groups(data.get("groups"), declared, problems)
    if check_providers:
        problems.extend(_provider_problems(providers))
    if problems:
        raise ConfigError(problems)
    return Config(path=path, log=log, slurm=slurm, groups=tuple(groups), providers=providers)


def _parse_log(raw: Any, problems: list[str]) -> LogSettings:
    if not isinstance(raw, Mapping):
        problems.append("log: must be a mapping such as {file: /var/log/slurm/citc-power.log, level: info}")
        return LogSettings()
    for key in sorted(set(raw) - {"file", "level"}):
        problems.append(f"log.{key}: unknown setting; use file or level")
    level = str(raw.get("level", "info")).lower()
    if level not in LEVELS:
        problems.append(f"log.level: {raw.get('level')!r} is not one of {', '.join(LEVELS)}")
    file = raw.get("file", LogSettings.file)
    return LogSettings(file=Path(file) if file else None, level=level)


def _parse_slurm(raw: Any, problems: list[str]) -> SlurmSettings:
    if not isinstance(raw, Mapping):
        problems.append("slurm: must be a mapping such as {bin_dir: /usr/bin}")
        return SlurmSettings()
    for key in sorted(set(raw) - {"bin_dir", "timeout", "batch_size"}):
        problems.append(f"slurm.{key}: unknown setting; use bin_dir, timeout or batch_size")
    timeout = raw.get("timeout", SlurmSettings.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        problems.append(f"slurm.timeout: must be a positive number of seconds, not {timeout!r}")
        timeout = SlurmSettings.timeout
    batch = raw.get("batch_size", SlurmSettings.batch_size)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 100:
        problems.append(f"slurm.batch_size: must be a whole number from 1 to 100, not {batch!r}")
        batch = SlurmSettings.batch_size
    bin_dir = raw.get("bin_dir")
    return SlurmSettings(bin_dir=Path(bin_dir) if bin_dir else None, timeout=float(timeout), batch_size=batch)


def _parse_providers(raw: Any, problems: list[str]) -> dict[str, ProviderSpec]:
    if raw is None:
        problems.append("providers: missing; add e.g. providers: {cloud: {type: oci, ...}}")
        return {}
    if not isinstance(raw, Mapping):
        problems.append("providers: must be a mapping of name: {type: ..., settings...}")
        return {}
    specs = {}
    for name, settings in raw.items():
        if not isinstance(settings, Mapping):
            problems.append(f"providers.{name}: must be a mapping with at least type:")
            continue
        ptype = settings.get("type")
        if not ptype:
            problems.append(f"providers.{name}.type: missing; set it to oci, openstack, ipmi, redfish or command")
            continue
        specs[str(name)] = ProviderSpec(name=str(name), type=str(ptype), settings=dict(settings))
    return specs


def _parse_groups(raw: Any, providers: set[str], problems: list[str]) -> list[Group]:
    if raw is None:
        problems.append('groups: missing; add e.g. groups: [{nodes: "cn[001-010]", provider: NAME}]')
        return []
    if not isinstance(raw, list):
        problems.append("groups: must be a list of {nodes: HOSTLIST, provider: NAME}")
        return []
    groups = []
    for i, item in enumerate(raw):
        where = f"groups[{i}]"
        if not isinstance(item, Mapping) or "nodes" not in item or "provider" not in item:
            problems.append(f"{where}: must be a mapping {{nodes: HOSTLIST, provider: NAME}}")
            continue
        for key in sorted(set(item) - {"nodes", "provider"}):
            problems.append(f"{where}.{key}: unknown key; a group has only nodes and provider")
        provider = str(item["provider"])
        if provider not in providers:
            known = ", ".join(sorted(providers)) or "none defined"
            problems.append(f"{where}.provider: {provider!r} is not defined under providers ({known})")
        try:
            names = frozenset(hostlist.expand(str(item["nodes"])))
        except HostlistError as exc:
            problems.append(f"{where}.nodes: {exc}")
            continue
        groups.append(Group(nodes=str(item["nodes"]), provider=provider, names=names))
    return groups


def _provider_problems(providers: Mapping[str, ProviderSpec]) -> list[str]:
    from .providers import provider_class  # imports only the provider types in use

    problems = []
    for spec in providers.values():
        try:
            provider_class(spec.type, where=f"providers.{spec.name}.type").from_settings(spec.name, spec.settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems
