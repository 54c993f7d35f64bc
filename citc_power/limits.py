"""limits.yaml and the shapes catalog: which nodes a cluster has and what each one is.

``finish`` reads a limits file with :func:`read_limits` into a :class:`Plan` (node groups and
partitions) and renders it with :func:`render` into the node and partition lines of slurm.conf.
Nothing here touches slurm.conf or Slurm; see :mod:`citc_power.finish` for that.

The limits file
===============

Cloud shapes, in either form citc has always used (a count per shape, or a count per
availability domain)::

    VM.Standard2.1: 4                  # vm-standard2-1-0001 .. -0004 (no AD)
    VM.Standard.E4.Flex.16.128:        # a flexible shape: <shape>.<OCPUs>.<memory GB>
      1: 2                             # vm-standard-e4-flex-16-128-ad1-0001 .. -0002
      2: 2                             # vm-standard-e4-flex-16-128-ad2-0001 .. -0002

Each shape must be in the shapes catalog (``citc_power/data/shapes.yaml``, or a site file given
with ``finish --shapes``), which holds its CPU topology, memory, GPUs and architecture. Counts
are whole numbers >= 0; ADs are whole numbers >= 1. The nodes get ``State=CLOUD`` and the
features ``shape=<shape>,ad=<AD>,arch=<arch>`` that the providers read.

Besides shapes, these keys (all optional) set how nodes are written:

``names``
    Pattern of generated node names. Fields: ``{shape}`` (the shape in lower case with dots
    as dashes), ``{ad}`` and ``{n}`` (the node's number, from 1, per shape and AD; format it,
    e.g. ``{n:04d}``). Default ``{shape}-ad{ad}-{n:04d}`` for shapes counted per AD and
    ``{shape}-{n:04d}`` for the others. ``finish --names`` overrides it.

``memory_reserve``
    Memory kept back from each node's RealMemory, since the operating system sees less than
    the shape's memory and Slurm drains a node that reports less than its RealMemory:
    ``{percent: 5, minimum: 1G}`` (the default) keeps the larger of 5 % and 1 GiB.

``groups``
    Nodes named by an explicit hostlist, such as bare-metal machines, each with its facts::

        groups:
          - nodes: "bm[001-032]"
            cpus: 64                     # or sockets / cores_per_socket / threads_per_core
            memory: 256G                 # installed memory (reserve applied) or MiB
            features: {rack: r12}        # extra key=value features for the providers
          - nodes: "gpu[01-04]"
            shape: BM.GPU4.8             # facts from the catalog; keys here override them
            real_memory: 2000000         # exact RealMemory in MiB, no reserve applied
            state: static                # a node Slurm knows without State=CLOUD
            options: {Weight: 10}        # more NodeName options, written as they are

    Keys: ``nodes`` (required), ``shape``, ``cpus``, ``sockets``, ``cores_per_socket``,
    ``threads_per_core``, ``memory``, ``real_memory``, ``gres``, ``arch``, ``features``,
    ``state`` (``cloud``, the default, or ``static``) and ``options``.

``partitions``
    Partitions to write, by name. Default: one partition ``compute`` holding every node,
    ``Default=YES``. Each partition takes ``shapes`` (a list of shapes from this file),
    ``nodes`` (a hostlist of names this file makes), or neither for all nodes; ``default``
    (true/false) and ``options`` (more PartitionName options, such as ``MaxTime: INFINITE``).
    ``partitions: {}`` writes no partition.

Memory is a number of MiB (Slurm's unit) or a number with a unit: ``512M``, ``15G`` (GiB,
which is what OCI means by GB), ``2T``.

Every problem is reported at once, each on one line as ``file:line: what is wrong; fix``.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import hostlist
from .errors import ConfigError, HostlistError

DEFAULT_NAMES_AD = "{shape}-ad{ad}-{n:04d}"
DEFAULT_NAMES = "{shape}-{n:04d}"
DEFAULT_RESERVE_PERCENT = 5.0
DEFAULT_RESERVE_MINIMUM = 1024  # MiB
DEFAULT_PARTITION = "compute"
SETTINGS = ("names", "memory_reserve", "groups", "partitions")
GROUP_KEYS = (
    "nodes", "shape", "cpus", "sockets", "cores_per_socket", "threads_per_core", "memory",
    "real_memory", "gres", "arch", "features", "state", "options",
)
FACT_KEYS = ("cpus", "sockets", "cores_per_socket", "threads_per_core", "memory", "gres", "arch")
SHAPE_KEYS = FACT_KEYS + ("flex",)
PARTITION_KEYS = ("shapes", "nodes", "default", "options")
# NodeName/PartitionName options finish writes itself, so a group's `options` may not set them
NODE_OWN = {"nodename", "state", "cpus", "sockets", "socketsperboard", "corespersocket",
            "threadspercore", "realmemory", "gres", "feature", "features"}
PARTITION_OWN = {"partitionname", "nodes", "default"}
# Slurm splits node and partition lines on whitespace and features on commas; keep them out
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FEATURE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")
_OPTION_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_OPTION_VALUE = re.compile(r"^[^\s#\"']+$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([MGT])(?:i?B)?$", re.IGNORECASE)
_UNIT = {"M": 1, "G": 1024, "T": 1024 * 1024}
_FLEX_NAME = re.compile(r"^(?P<base>.+\.Flex)\.(?P<ocpus>\d+)\.(?P<memory>\d+)$")
MAX_HOSTLIST = 800  # characters of a NodeName= value; longer lists are split over lines


# -- YAML with line numbers -------------------------------------------------------------------

class LMap(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of each of its keys."""

    line = 0
    key_lines: dict[Any, int]


class LSeq(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the line of each item."""

    line = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int, int]] = []


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> LMap:
    loader.flatten_mapping(node)
    result = LMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise yaml.MarkedYAMLError(problem="a key must be a plain value",
                                       problem_mark=key_node.start_mark) from None
        if key in result:
            loader.duplicates.append((key, line, result.key_lines[key]))
            continue
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> LSeq:
    result = LSeq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def load_yaml(path: Path, text: str | None = None) -> Any:
    """Parse YAML keeping line numbers; syntax errors and duplicate keys raise ConfigError."""
    if text is None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file; create it or name another file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it ({exc}); check the file") from None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{path}:{line}: invalid YAML: {what}; fix the syntax") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}; fix the syntax") from None
    finally:
        loader.dispose()
    problems = [f"{path}:{line}: {key!r} appears twice (first at line {first}); keep one"
                for key, line, first in loader.duplicates]
    if problems:
        raise ConfigError(problems)
    return data


# -- small checks shared by the catalog and the limits ----------------------------------------

class Problems:
    """Collects ``file:line: what; fix`` lines, to raise them all at once."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[str] = []

    def add(self, line: int, text: str) -> None:
        self.lines.append(f"{self.path}:{line}: {text}")

    def raise_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_memory(value: Any) -> int | None:
    """MiB from a number of MiB or a string such as ``15G``; None when it is neither."""
    if is_int(value):
        return int(value) if value > 0 else None
    if isinstance(value, str):
        match = _MEMORY.match(value.strip())
        if match:
            mib = float(match.group(1)) * _UNIT[match.group(2).upper()]
            return int(mib) if mib >= 1 else None
    return None


def key_line(mapping: Any, key: Any) -> int:
    lines = getattr(mapping, "key_lines", {})
    return int(lines.get(key, getattr(mapping, "line", 1)))


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def check_keys(mapping: LMap, known: Sequence[str], where: str, problems: Problems) -> None:
    for key in mapping:
        if key not in known:
            problems.add(key_line(mapping, key), f"{where}: unknown key {key!r}{suggest(key, known)};"
                         f" use one of {', '.join(known)}")


# -- the shapes catalog -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Facts:
    """What a node line says about the hardware."""

    sockets: int
    cores_per_socket: int
    threads_per_core: int
    memory: int  # MiB installed, before the reserve
    gres: str = ""
    arch: str = ""

    @property
    def cpus(self) -> int:
        return self.sockets * self.cores_per_socket * self.threads_per_core


@dataclasses.dataclass(frozen=True)
class Flex:
    """The sizes a flexible shape accepts (memory in GB)."""

    ocpus: tuple[int, int]
    memory_per_ocpu: tuple[int, int]
    memory: tuple[int, int]
    threads_per_core: int
    gres: str = ""
    arch: str = ""

    def size(self, base: str, ocpus: int, memory_gb: int) -> Facts:
        """Facts of one size; raises ValueError saying what is out of range and the fix."""
        lo, hi = self.ocpus
        if not lo <= ocpus <= hi:
            raise ValueError(f"{ocpus} OCPUs is outside {lo}-{hi} for {base}; choose {lo} to {hi}")
        lo, hi = self.memory
        if not lo <= memory_gb <= hi:
            raise ValueError(f"{memory_gb} GB is outside {lo}-{hi} GB for {base}; choose {lo} to {hi}")
        lo, hi = self.memory_per_ocpu
        if not lo * ocpus <= memory_gb <= hi * ocpus:
            raise ValueError(f"{memory_gb} GB for {ocpus} OCPUs is outside {lo}-{hi} GB per OCPU"
                             f" for {base}; choose {lo * ocpus} to {min(hi * ocpus, self.memory[1])} GB")
        return Facts(1, ocpus, self.threads_per_core, memory_gb * 1024, self.gres, self.arch)


class Catalog:
    """Shapes by name: fixed ones and flexible ones (``<base>.<ocpus>.<memory GB>``)."""

    def __init__(self, fixed: Mapping[str, Facts], flex: Mapping[str, Flex]):
        self.fixed = dict(fixed)
        self.flex = dict(flex)

    def names(self) -> list[str]:
        return sorted(self.fixed) + sorted(self.flex)

    def resolve(self, name: str) -> Facts:
        """The facts of shape ``name``; raises ValueError with what is wrong and the fix."""
        if name in self.fixed:
            return self.fixed[name]
        match = _FLEX_NAME.match(name)
        if match and match.group("base") in self.flex:
            base = match.group("base")
            return self.flex[base].size(base, int(match.group("ocpus")), int(match.group("memory")))
        if name in self.flex:
            raise ValueError(f"{name} is flexible and needs a size; write {name}.<OCPUs>.<memory GB>,"
                             f" e.g. {name}.4.16")
        raise ValueError(f"unknown shape {name}{suggest(name, self.names())}; check the spelling"
                         " or describe it in a site shapes file (finish --shapes FILE)")


def packaged_shapes() -> str:
    return (resources.files("citc_power") / "data" / "shapes.yaml").read_text()


def load_catalog(site_files: Sequence[Path] = (), packaged: str | None = None) -> Catalog:
    """The packaged catalog with each site file's shapes replacing those of the same name."""
    fixed: dict[str, Facts] = {}
    flex: dict[str, Flex] = {}
    sources: list[tuple[Path, str | None]] = [
        (Path("citc_power/data/shapes.yaml"), packaged or packaged_shapes())]
    sources += [(Path(p), None) for p in site_files]
    for path, text in sources:
        data = load_yaml(path, text)
        problems = Problems(path)
        if data is None:
            data = LMap()
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:1: must map shape names to their facts; see citc_power/data/shapes.yaml")
        for name, entry in data.items():
            fixed.pop(str(name), None)
            flex.pop(str(name), None)
            _read_shape(str(name), entry, key_line(data, name), problems, fixed, flex)
        problems.raise_any()
    return Catalog(fixed, flex)


def _read_shape(name: str, entry: Any, line: int, problems: Problems,
                fixed: dict[str, Facts], flex: dict[str, Flex]) -> None:
    if not isinstance(entry, LMap):
        problems.add(line, f"{name}: must be a mapping of facts such as"
                     " {sockets: 1, cores_per_socket: 2, threads_per_core: 2, memory: 30G}")
        return
    check_keys(entry, SHAPE_KEYS, name, problems)
    if "flex" in entry:
        spec = _read_flex(name, entry, problems)
        if spec:
            flex[name] = spec
        return
    facts = read_facts(name, entry, problems, need_memory=True)
    if facts:
        fixed[name] = facts


def _read_flex(name: str, entry: LMap, problems: Problems) -> Flex | None:
    spec = entry["flex"]
    line = key_line(entry, "flex")
    if not isinstance(spec, LMap):
        problems.add(line, f"{name}.flex: must be {{ocpus: [min, max], memory_per_ocpu: [min, max],"
                     " memory: [min, max]}")
        return None
    check_keys(spec, ("ocpus", "memory_per_ocpu", "memory"), f"{name}.flex", problems)
    ranges = {}
    for key in ("ocpus", "memory_per_ocpu", "memory"):
        value = spec.get(key)
        if not (isinstance(value, list) and len(value) == 2 and all(is_int(v) and v > 0 for v in value)
                and value[0] <= value[1]):
            problems.add(key_line(spec, key), f"{name}.flex.{key}: must be [min, max], two whole"
                         " numbers > 0 with min <= max")
            continue
        ranges[key] = (int(value[0]), int(value[1]))
    threads = entry.get("threads_per_core", 2)
    if not (is_int(threads) and threads > 0):
        problems.add(key_line(entry, "threads_per_core"), f"{name}.threads_per_core: must be a whole number > 0")
        return None
    if len(ranges) < 3:
        return None
    return Flex(ranges["ocpus"], ranges["memory_per_ocpu"], ranges["memory"], int(threads),
                str(entry.get("gres") or ""), str(entry.get("arch") or ""))


def read_facts(where: str, entry: Mapping[str, Any], problems: Problems, need_memory: bool,
               base: Facts | None = None) -> Facts | None:
    """CPU topology, memory, gres and arch from ``entry`` (over ``base``, if given)."""
    ok = True

    def number(key: str, default: int | None) -> int | None:
        nonlocal ok
        value = entry.get(key, default)
        if value is None:
            return None
        if not (is_int(value) and value > 0):
            problems.add(key_line(entry, key), f"{where}.{key}: {value!r} is not a whole number > 0; fix it")
            ok = False
            return None
        return int(value)

    b = base
    sockets = number("sockets", b.sockets if b else None)
    cores = number("cores_per_socket", b.cores_per_socket if b else None)
    threads = number("threads_per_core", b.threads_per_core if b else None)
    cpus = number("cpus", None)
    topology = _topology(where, entry, problems, cpus, sockets, cores, threads)
    memory: int | None = b.memory if b else None
    if "memory" in entry:
        memory = parse_memory(entry["memory"])
        if memory is None:
            problems.add(key_line(entry, "memory"), f"{where}.memory: {entry['memory']!r} is not a"
                         " memory size; write MiB as a number or a size such as 15G")
            ok = False
    elif memory is None and need_memory:
        problems.add(getattr(entry, "line", 1), f"{where}: no memory; add memory: <size> such as 16G")
        ok = False
    gres = _word(where, entry, "gres", b.gres if b else "", problems)
    arch = _word(where, entry, "arch", b.arch if b else "", problems)
    if not ok or topology is None or gres is None or arch is None:
        return None
    return Facts(*topology, memory=memory or 0, gres=gres, arch=arch)


def _topology(where: str, entry: Mapping[str, Any], problems: Problems, cpus: int | None,
              sockets: int | None, cores: int | None,
              threads: int | None) -> tuple[int, int, int] | None:
    """(sockets, cores per socket, threads per core), from the topology or from ``cpus``."""
    if cores is not None:
        topology = (sockets or 1, cores, threads or 1)
        if cpus is not None and cpus != topology[0] * topology[1] * topology[2]:
            problems.add(key_line(entry, "cpus"), f"{where}.cpus: {cpus} is not sockets x"
                         f" cores_per_socket x threads_per_core = {topology[0] * topology[1] * topology[2]};"
                         " fix one of them or leave cpus out")
            return None
        return topology
    if cpus is not None:
        s, t = sockets or 1, threads or 1
        if cpus % (s * t):
            problems.add(key_line(entry, "cpus"), f"{where}.cpus: {cpus} cannot be split into {s}"
                         f" sockets of {t} threads per core; give cores_per_socket")
            return None
        return (s, cpus // (s * t), t)
    problems.add(getattr(entry, "line", 1), f"{where}: no CPUs; add cpus: <count> or"
                 " sockets/cores_per_socket/threads_per_core")
    return None


def _word(where: str, entry: Mapping[str, Any], key: str, default: str,
          problems: Problems) -> str | None:
    value = entry.get(key, default)
    if value is None or value == "":
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not _FEATURE.match(str(value)):
        problems.add(key_line(entry, key), f"{where}.{key}: {value!r} must be one word such as"
                     f" {'gpu:2' if key == 'gres' else 'x86_64'}")
        return None
    return str(value)


# -- the limits file ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """Nodes that share one node line (or a few, when the hostlist is long)."""

    names: tuple[str, ...]
    facts: Facts
    real_memory: int  # MiB, what RealMemory says
    features: tuple[tuple[str, str], ...]
    cloud: bool
    options: tuple[tuple[str, str], ...]
    shape: str  # the shape as written in limits.yaml, "" for a group without one
    where: str  # file:line it comes from


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[str, ...]
    default: bool
    options: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything finish writes between the markers."""

    groups: tuple[NodeGroup, ...]
    partitions: tuple[Partition, ...]
    source: str = "limits.yaml"

    def node_names(self) -> list[str]:
        return [name for group in self.groups for name in group.names]


@dataclasses.dataclass(frozen=True)
class Reserve:
    percent: float = DEFAULT_RESERVE_PERCENT
    minimum: int = DEFAULT_RESERVE_MINIMUM

    def real_memory(self, memory: int) -> int:
        """RealMemory for ``memory`` MiB installed: the larger reserve kept back."""
        return memory - max(math.ceil(memory * self.percent / 100), self.minimum)


def read_limits(path: Path, catalog: Catalog, names: str | None = None,
                text: str | None = None) -> Plan:
    """Read and check a limits file; raises ConfigError listing every problem."""
    data = load_yaml(path, text)
    problems = Problems(path)
    if data is None:
        raise ConfigError(f"{path}:1: is empty; list shapes with their counts (see limits.example.yaml)")
    if not isinstance(data, LMap):
        raise ConfigError(f"{path}:1: must be a mapping of shapes to counts; see limits.example.yaml")
    pattern_ad, pattern = _read_names(data, names, problems)
    reserve = _read_reserve(data, problems)
    groups: list[NodeGroup] = []
    for key, value in data.items():
        if key in SETTINGS:
            continue
        groups += _shape_groups(str(key), value, key_line(data, key), catalog, reserve,
                                (pattern_ad, pattern), names is not None or "names" in data, problems)
    explicit = data.get("groups")
    if isinstance(explicit, LSeq):
        for entry, line in zip(explicit, explicit.item_lines):
            group = _explicit_group(entry, line, catalog, reserve, problems)
            if group:
                groups.append(group)
    elif explicit is not None:
        problems.add(key_line(data, "groups"), "groups: must be a list of {nodes: HOSTLIST, ...}")
    _check_duplicates(groups, problems)
    _check_names(groups, problems)
    partitions = _read_partitions(data, groups, problems)
    problems.raise_any()
    return Plan(tuple(groups), tuple(partitions), source=path.name)


def _read_names(data: LMap, override: str | None, problems: Problems) -> tuple[str, str]:
    value = override if override is not None else data.get("names")
    if value is None:
        return DEFAULT_NAMES_AD, DEFAULT_NAMES
    line = 0 if override is not None else key_line(data, "names")
    where = "--names" if override is not None else "names"
    if not isinstance(value, str):
        _pattern_problem(problems, line, f"{where}: must be a string such as {DEFAULT_NAMES_AD!r}")
        return DEFAULT_NAMES_AD, DEFAULT_NAMES
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        _pattern_problem(problems, line, f"{where}: {value!r} is not a valid pattern ({exc});"
                         f" write it like {DEFAULT_NAMES_AD!r}")
        return DEFAULT_NAMES_AD, DEFAULT_NAMES
    if fields - {"shape", "ad", "n"} or "n" not in fields:
        _pattern_problem(problems, line, f"{where}: {value!r} must use {{n}} and only the fields"
                         " {shape}, {ad} and {n}")
        return DEFAULT_NAMES_AD, DEFAULT_NAMES
    try:
        value.format(shape="s", ad=1, n=1)
    except (ValueError, KeyError, IndexError) as exc:
        _pattern_problem(problems, line, f"{where}: {value!r} is not a valid pattern ({exc});"
                         f" write it like {DEFAULT_NAMES_AD!r}")
        return DEFAULT_NAMES_AD, DEFAULT_NAMES
    return value, value


def _pattern_problem(problems: Problems, line: int, text: str) -> None:
    if line:
        problems.add(line, text)
    else:
        problems.lines.append(text)


def _read_reserve(data: LMap, problems: Problems) -> Reserve:
    value = data.get("memory_reserve")
    if value is None:
        return Reserve()
    line = key_line(data, "memory_reserve")
    if not isinstance(value, LMap):
        problems.add(line, "memory_reserve: must be {percent: 5, minimum: 1G}")
        return Reserve()
    check_keys(value, ("percent", "minimum"), "memory_reserve", problems)
    percent = value.get("percent", DEFAULT_RESERVE_PERCENT)
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent < 100:
        problems.add(key_line(value, "percent"), f"memory_reserve.percent: {percent!r} must be a"
                     " number from 0 to below 100")
        percent = DEFAULT_RESERVE_PERCENT
    minimum = value.get("minimum", DEFAULT_RESERVE_MINIMUM)
    mib = 0 if minimum == 0 else parse_memory(minimum)
    if mib is None:
        problems.add(key_line(value, "minimum"), f"memory_reserve.minimum: {minimum!r} is not a"
                     " memory size; write MiB or a size such as 1G")
        mib = DEFAULT_RESERVE_MINIMUM
    return Reserve(float(percent), mib)


def _shape_groups(shape: str, value: Any, line: int, catalog: Catalog, reserve: Reserve,
                  patterns: tuple[str, str], custom_names: bool, problems: Problems) -> list[NodeGroup]:
    if "." not in shape and shape not in catalog.fixed:
        problems.add(line, f"unknown key {shape!r}{suggest(shape, SETTINGS)}; use a shape name"
                     f" or one of {', '.join(SETTINGS)}")
        return []
    try:
        facts = catalog.resolve(shape)
    except ValueError as exc:
        problems.add(line, f"{shape}: {exc}")
        return []
    counts = _read_counts(shape, value, line, problems)
    groups = []
    for ad, count in counts:
        pattern = patterns[0] if ad is not None else patterns[1]
        if ad is None and custom_names and "{ad}" in pattern.replace(" ", ""):
            problems.add(line, f"{shape}: names uses {{ad}} but this shape has no AD; count it per"
                         " AD ({1: N}) or drop {ad} from names")
            continue
        base = shape.lower().replace(".", "-")
        names = tuple(pattern.format(shape=base, ad=ad, n=n) for n in range(1, count + 1))
        features = [("shape", shape)] + ([("ad", str(ad))] if ad is not None else [])
        features += [("arch", facts.arch)] if facts.arch else []
        real = reserve.real_memory(facts.memory)
        if real < 1:
            problems.add(line, f"{shape}: memory_reserve leaves no memory; lower it")
            continue
        groups.append(NodeGroup(names, facts, real, tuple(features), True, (), shape,
                                f"{problems.path}:{line}"))
    return groups


def _read_counts(shape: str, value: Any, line: int,
                 problems: Problems) -> list[tuple[int | None, int]]:
    if is_int(value):
        if value < 0:
            problems.add(line, f"{shape}: count {value} is negative; use a whole number >= 0")
            return []
        return [(None, int(value))]
    if isinstance(value, LMap):
        counts = []
        for ad, count in value.items():
            ad_line = key_line(value, ad)
            if not (is_int(ad) and ad >= 1):
                problems.add(ad_line, f"{shape}: AD {ad!r} must be a whole number >= 1; write it like"
                             " 1: 4")
            elif not (is_int(count) and count >= 0):
                problems.add(ad_line, f"{shape}: count {count!r} for AD {ad} must be a whole number >= 0")
            else:
                counts.append((int(ad), int(count)))
        return sorted(counts, key=lambda item: item[0] or 0)
    problems.add(line, f"{shape}: count {value!r} must be a whole number >= 0 or a mapping of AD to"
                 " count such as {1: 2, 2: 2}")
    return []


def _explicit_group(entry: Any, line: int, catalog: Catalog, reserve: Reserve,
                    problems: Problems) -> NodeGroup | None:
    if not isinstance(entry, LMap):
        problems.add(line, "groups: each item must be a mapping such as {nodes: \"bm[001-032]\","
                     " cpus: 64, memory: 256G}")
        return None
    check_keys(entry, GROUP_KEYS, "groups", problems)
    names = _group_names(entry, line, problems)
    base, shape = None, ""
    if "shape" in entry:
        shape = str(entry["shape"])
        try:
            base = catalog.resolve(shape)
        except ValueError as exc:
            problems.add(key_line(entry, "shape"), f"groups: {exc}")
            return None
    where = f"groups ({entry.get('nodes')})"
    facts = read_facts(where, entry, problems, need_memory="real_memory" not in entry, base=base)
    real = _group_real_memory(where, entry, facts, reserve, problems)
    features = _group_features(where, entry, shape, facts, problems)
    options = read_options(where, entry.get("options"), key_line(entry, "options"), NODE_OWN, problems)
    state = entry.get("state", "cloud")
    if state not in ("cloud", "static"):
        problems.add(key_line(entry, "state"), f"{where}.state: {state!r} must be cloud or static")
    if names is None or facts is None or real is None or features is None or options is None:
        return None
    return NodeGroup(tuple(names), facts, real, features, state != "static", options, shape,
                     f"{problems.path}:{line}")


def _group_names(entry: LMap, line: int, problems: Problems) -> list[str] | None:
    expr = entry.get("nodes")
    if not isinstance(expr, str) or not expr.strip():
        problems.add(key_line(entry, "nodes") if "nodes" in entry else line,
                     "groups: nodes must be a hostlist such as \"bm[001-032]\"")
        return None
    try:
        names = hostlist.expand(expr)
    except HostlistError as exc:
        problems.add(key_line(entry, "nodes"), f"groups: nodes: {exc}")
        return None
    if not names:
        problems.add(key_line(entry, "nodes"), f"groups: nodes {expr!r} names no node; give a hostlist")
        return None
    return names


def _group_real_memory(where: str, entry: LMap, facts: Facts | None, reserve: Reserve,
                       problems: Problems) -> int | None:
    if "real_memory" in entry:
        value = parse_memory(entry["real_memory"])
        if value is None:
            problems.add(key_line(entry, "real_memory"), f"{where}.real_memory: {entry['real_memory']!r}"
                         " is not a memory size; write MiB as a number or a size such as 250G")
        return value
    if facts is None:
        return None
    real = reserve.real_memory(facts.memory)
    if real < 1:
        problems.add(key_line(entry, "memory"), f"{where}: memory_reserve leaves no memory; lower it"
                     " or give real_memory")
        return None
    return real


def _group_features(where: str, entry: LMap, shape: str, facts: Facts | None,
                    problems: Problems) -> tuple[tuple[str, str], ...] | None:
    features: list[tuple[str, str]] = [("shape", shape)] if shape else []
    if facts and facts.arch:
        features.append(("arch", facts.arch))
    extra = entry.get("features")
    if extra is None:
        return tuple(features)
    line = key_line(entry, "features")
    if not isinstance(extra, LMap):
        problems.add(line, f"{where}.features: must be a mapping of key: value, e.g. {{rack: r12}}")
        return None
    ok = True
    for key, value in extra.items():
        text = "" if value is None else str(value)
        if not _FEATURE.match(str(key)) or (text and not _FEATURE.match(text)) or isinstance(value, bool):
            problems.add(key_line(extra, key), f"{where}.features.{key}: {value!r} must be one word"
                         " without spaces, commas, quotes or =")
            ok = False
            continue
        features = [(k, v) for k, v in features if k != str(key)] + [(str(key), text)]
    return tuple(features) if ok else None


def read_options(where: str, value: Any, line: int, own: set[str],
                 problems: Problems) -> tuple[tuple[str, str], ...] | None:
    """Extra ``Key=Value`` options of a node or partition line, checked to stay one word each."""
    if value is None:
        return ()
    if not isinstance(value, LMap):
        problems.add(line, f"{where}.options: must be a mapping such as {{Weight: 10}}")
        return None
    options = []
    ok = True
    for key, item in value.items():
        text = str(item).upper() if isinstance(item, bool) else str(item)
        if not (isinstance(key, str) and _OPTION_KEY.match(key)) or not _OPTION_VALUE.match(text):
            problems.add(key_line(value, key), f"{where}.options: {key}: {item!r} must be a word"
                         " option with a value without spaces, quotes or #")
            ok = False
        elif key.lower() in own:
            problems.add(key_line(value, key), f"{where}.options: {key} is written by finish; set it"
                         " through the matching key of the group or partition instead")
            ok = False
        else:
            options.append((key, text))
    return tuple(options) if ok else None


def _check_duplicates(groups: Sequence[NodeGroup], problems: Problems) -> None:
    seen: dict[str, NodeGroup] = {}
    for group in groups:
        clashes: dict[str, list[str]] = {}
        for name in group.names:
            other = seen.get(name)
            if other is not None:
                clashes.setdefault(other.where, []).append(name)
            else:
                seen[name] = group
        for other_where, names in clashes.items():
            problems.lines.append(
                f"{group.where}: node names {hostlist.collapse(names)} are also made at {other_where};"
                " give each node one entry (with names: include {ad} when counting per AD)")


def _check_names(groups: Sequence[NodeGroup], problems: Problems) -> None:
    for group in groups:
        bad = [name for name in group.names if not _NAME.match(name)]
        if bad:
            problems.lines.append(f"{group.where}: {bad[0]!r} is not a usable node name; use letters,"
                                  " digits, '-', '_' and '.' only")


def _read_partitions(data: LMap, groups: Sequence[NodeGroup], problems: Problems) -> list[Partition]:
    all_names = [name for group in groups for name in group.names]
    spec = data.get("partitions", LMap({DEFAULT_PARTITION: LMap({"default": True})}))
    line = key_line(data, "partitions")
    if spec is None:
        spec = LMap()
    if not isinstance(spec, LMap):
        problems.add(line, "partitions: must map partition names to {shapes: [...], nodes: ...,"
                     " default: true}")
        return []
    partitions = []
    for name, entry in spec.items():
        part = _read_partition(str(name), entry, key_line(spec, name), groups, all_names, problems)
        if part:
            partitions.append(part)
    if sum(p.default for p in partitions) > 1:
        problems.add(line, "partitions: more than one has default: true; keep one")
    return partitions


def _read_partition(name: str, entry: Any, line: int, groups: Sequence[NodeGroup],
                    all_names: list[str], problems: Problems) -> Partition | None:
    where = f"partitions.{name}"
    if not _NAME.match(name):
        problems.add(line, f"{where}: {name!r} is not a usable partition name; use letters, digits,"
                     " '-', '_' and '.'")
        return None
    if entry is None:
        entry = LMap()
    if not isinstance(entry, LMap):
        problems.add(line, f"{where}: must be a mapping such as {{shapes: [VM.Standard2.1], default: true}}")
        return None
    check_keys(entry, PARTITION_KEYS, where, problems)
    default = entry.get("default", False)
    if not isinstance(default, bool):
        problems.add(key_line(entry, "default"), f"{where}.default: must be true or false")
    options = read_options(where, entry.get("options"), key_line(entry, "options"), PARTITION_OWN,
                           problems)
    nodes = _partition_nodes(where, entry, groups, all_names, problems)
    if nodes is None or options is None:
        return None
    return Partition(name, tuple(nodes), default is True, options)


def _partition_nodes(where: str, entry: LMap, groups: Sequence[NodeGroup], all_names: list[str],
                     problems: Problems) -> list[str] | None:
    if "shapes" not in entry and "nodes" not in entry:
        return all_names
    chosen: set[str] = set()
    ok = True
    shapes = entry.get("shapes") or []
    if not isinstance(shapes, list):
        problems.add(key_line(entry, "shapes"), f"{where}.shapes: must be a list of shapes")
        shapes, ok = [], False
    known = {g.shape for g in groups if g.shape}
    for shape in shapes:
        if str(shape) not in known:
            problems.add(key_line(entry, "shapes"), f"{where}.shapes: {shape} is not a shape of this"
                         f" file{suggest(str(shape), known)}; use one listed above")
            ok = False
        chosen.update(n for g in groups if g.shape == str(shape) for n in g.names)
    if "nodes" in entry:
        ok = _add_partition_hostlist(where, entry, set(all_names), chosen, problems) and ok
    return [n for n in all_names if n in chosen] if ok else None


def _add_partition_hostlist(where: str, entry: LMap, known: set[str], chosen: set[str],
                            problems: Problems) -> bool:
    expr = entry["nodes"]
    line = key_line(entry, "nodes")
    try:
        names = hostlist.expand(str(expr))
    except HostlistError as exc:
        problems.add(line, f"{where}.nodes: {exc}")
        return False
    unknown = [n for n in names if n not in known]
    if unknown:
        problems.add(line, f"{where}.nodes: {hostlist.collapse(unknown)} are not nodes of this file;"
                     " name only nodes it makes")
        return False
    chosen.update(names)
    return True


# -- rendering ----------------------------------------------------------------------------------

def hostlist_chunks(names: Sequence[str], limit: int = MAX_HOSTLIST) -> list[str]:
    """Collapsed hostlists of ``names``, each at most ``limit`` characters where possible."""
    text = hostlist.collapse(names)
    if len(text) <= limit or len(names) == 1:
        return [text]
    middle = len(names) // 2
    return hostlist_chunks(names[:middle], limit) + hostlist_chunks(names[middle:], limit)


def node_line(hosts: str, group: NodeGroup) -> str:
    f = group.facts
    parts = [f"NodeName={hosts}"]
    if group.cloud:
        parts.append("State=CLOUD")
    parts += [f"CPUs={f.cpus}", f"Sockets={f.sockets}", f"CoresPerSocket={f.cores_per_socket}",
              f"ThreadsPerCore={f.threads_per_core}", f"RealMemory={group.real_memory}"]
    if f.gres:
        parts.append(f"Gres={f.gres}")
    if group.features:
        text = ",".join(f"{k}={v}" if v else k for k, v in group.features)
        parts.append(f'Features="{text}"')
    parts += [f"{k}={v}" for k, v in group.options]
    return " ".join(parts)


def partition_line(part: Partition) -> str:
    parts = [f"PartitionName={part.name}"]
    if part.nodes:
        parts.append(f"Nodes={hostlist.collapse(part.nodes)}")
    if part.default:
        parts.append("Default=YES")
    parts += [f"{k}={v}" for k, v in part.options]
    if not any(k.lower() == "state" for k, _ in part.options):
        parts.append("State=UP")
    return " ".join(parts)


def render(plan: Plan) -> str:
    """The lines between ``# STARTNODES`` and ``# ENDNODES``, ending with a newline."""
    lines = [f"# Written by finish from {plan.source}: change that file and run finish again,",
             "# do not edit these lines by hand."]
    for group in plan.groups:
        for hosts in hostlist_chunks(group.names) if group.names else []:
            lines.append(node_line(hosts, group))
    lines += [partition_line(p) for p in plan.partitions]
    return "\n".join(lines) + "\n"
