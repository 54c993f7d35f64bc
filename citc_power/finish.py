"""``finish``: write the nodes of limits.yaml into slurm.conf, safely.

The node and partition lines go between a ``# STARTNODES`` and a ``# ENDNODES`` line of
slurm.conf (or of the file given with ``--slurm-conf``, such as an included nodes file);
everything outside the markers stays byte for byte as it was. The limits file is described in
:mod:`citc_power.limits`; ``slurm_templates/limits.example.yaml`` is a commented example.

Safety, in order:

1. Every problem of the limits file, the shapes files and slurm.conf is reported at once,
   one line each (``file:line: what is wrong; fix``), and nothing is written.
2. Nodes that would disappear while Slurm still has them powered up are refused (their
   machines would keep running with nobody to stop them) unless ``--force``.
3. ``--dry-run`` prints the unified diff and changes nothing.
4. The file is replaced atomically (a temporary file in the same directory, then rename),
   keeping its mode and owner, after a timestamped copy ``<file>.<YYYYmmdd-HHMMSS>.bak``.
5. Then Slurm is told: ``scontrol reconfigure``, or, when nodes were added or removed on a
   Slurm older than 23.11 (which reads its node list only at start), a message that slurmctld
   must be restarted.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Protocol

import click

from . import hostlist
from .errors import CitcPowerError, ConfigError, HostlistError, SlurmError, UsageError
from .limits import Plan, load_catalog, read_limits, render

log = logging.getLogger(__name__)

START = "# STARTNODES"
END = "# ENDNODES"
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
# from this Slurm on, `scontrol reconfigure` restarts slurmctld in place and so takes new nodes
RECONFIGURE_ADDS_NODES = (23, 11)
_MARKER = re.compile(r"^#\s*(STARTNODES|ENDNODES)\s*$")
_NODE_LINE = re.compile(r"^\s*NodeName\s*=\s*(\"[^\"]*\"|\S+)", re.IGNORECASE)
_PART_LINE = re.compile(r"^\s*PartitionName\s*=\s*(\"[^\"]*\"|\S+)", re.IGNORECASE)
# node states in which a node has no machine running (flags of `scontrol show node` State=)
_POWERED_OFF = {"POWERED_DOWN", "FUTURE"}


class SlurmLike(Protocol):
    """What finish asks of :class:`citc_power.slurm.Slurm`."""

    def version(self) -> tuple[int, int] | None: ...

    def read_nodes(self, names: Sequence[str]) -> dict[str, Any]: ...

    def reconfigure(self) -> None: ...


# -- slurm.conf -------------------------------------------------------------------------------

@dataclasses.dataclass
class ConfFile:
    """A slurm.conf split at its markers; ``lines`` keep their line endings."""

    path: Path
    lines: list[str]
    start: int  # index of the STARTNODES line
    end: int  # index of the ENDNODES line

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def block(self) -> list[str]:
        return self.lines[self.start + 1:self.end]

    def outside(self) -> list[tuple[int, str]]:
        """(line number, text) of every line outside the markers."""
        return [(i + 1, line) for i, line in enumerate(self.lines) if not self.start <= i <= self.end]

    def with_block(self, block: str) -> str:
        return "".join(self.lines[:self.start + 1]) + block + "".join(self.lines[self.end:])


def read_conf(path: Path) -> ConfFile:
    """Read ``path`` and find its markers; raises ConfigError if they are missing or doubled."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give the slurm.conf that holds the node lines"
                          " with --slurm-conf") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror}); run finish as root") from None
    # surrogateescape: bytes that are not UTF-8 come back out unchanged
    lines = data.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    found: dict[str, list[int]] = {"STARTNODES": [], "ENDNODES": []}
    for index, line in enumerate(lines):
        match = _MARKER.match(line.strip())
        if match:
            found[match.group(1)].append(index)
    problems = _marker_problems(path, found)
    if problems:
        raise ConfigError(problems)
    return ConfFile(path, lines, found["STARTNODES"][0], found["ENDNODES"][0])


def _marker_problems(path: Path, found: dict[str, list[int]]) -> list[str]:
    fix = f'add a "{START}" line and an "{END}" line where the node definitions belong'
    problems = []
    for word, marker in (("STARTNODES", START), ("ENDNODES", END)):
        where = found[word]
        if not where:
            problems.append(f'{path}: no "{marker}" line; {fix}')
        elif len(where) > 1:
            problems.append(f'{path}:{where[1] + 1}: a second "{marker}" line (first at line'
                            f" {where[0] + 1}); keep one")
    if not problems and found["ENDNODES"][0] < found["STARTNODES"][0]:
        problems.append(f'{path}:{found["ENDNODES"][0] + 1}: "{END}" comes before "{START}"'
                        f" (line {found['STARTNODES'][0] + 1}); swap them")
    return problems


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0]


def defined(lines: Sequence[tuple[int, str]], pattern: re.Pattern[str], path: Path,
            expand: bool, strict: bool = True) -> dict[str, int]:
    """Names defined by NodeName= or PartitionName= lines, mapped to their line number.

    A NodeName= hostlist that cannot be read raises ConfigError when ``strict``; otherwise the
    line counts as defining that text as one name.
    """
    names: dict[str, int] = {}
    for number, line in lines:
        match = pattern.match(_strip_comment(line))
        if not match:
            continue
        value = match.group(1).strip('"')
        if value.upper() == "DEFAULT":
            continue
        found = [value]
        if expand:
            try:
                found = hostlist.expand(value)
            except HostlistError as exc:
                if strict:
                    raise ConfigError(f"{path}:{number}: cannot read NodeName={value} ({exc});"
                                      " fix that line") from None
        for name in found:
            names.setdefault(name, number)
    return names


def check_outside(conf: ConfFile, plan: Plan) -> None:
    """Refuse nodes or partitions that slurm.conf also defines outside the markers."""
    outside = conf.outside()
    problems = []
    # lines outside the markers are the site's: read what we can, never refuse them
    nodes = defined(outside, _NODE_LINE, conf.path, expand=True, strict=False)
    clash = [name for name in plan.node_names() if name in nodes]
    if clash:
        problems.append(f"{conf.path}:{nodes[clash[0]]}: {hostlist.collapse(clash)} also defined"
                        " outside the markers; remove them there or from the limits file")
    parts = defined(outside, _PART_LINE, conf.path, expand=False)
    for part in plan.partitions:
        if part.name in parts:
            problems.append(f"{conf.path}:{parts[part.name]}: partition {part.name} is also defined"
                            " outside the markers; remove it there or rename it in partitions:")
    if problems:
        raise ConfigError(problems)


# -- asking Slurm -------------------------------------------------------------------------------

def powered_up(slurm: SlurmLike, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that Slurm has powered up (or powering); raises SlurmError."""
    if not names:
        return []
    nodes = slurm.read_nodes(names)
    # a node Slurm does not list is unknown to it or hidden powered-down CLOUD node: no machine
    return [name for name in names
            if name in nodes and not _POWERED_OFF & set(str(nodes[name].state).split("+"))]


# -- writing ------------------------------------------------------------------------------------

def write_atomic(path: Path, text: str, now: Callable[[], float] = time.time) -> Path:
    """Replace ``path`` (following symlinks) by ``text`` atomically; returns the backup's path.

    The new file keeps the old one's mode and owner. Raises UsageError if that cannot be done.
    """
    real = Path(os.path.realpath(path))
    data = text.encode("utf-8", "surrogateescape")
    try:
        st = real.stat()
        backup = _backup(real, st, now())
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.")
    except OSError as exc:
        raise UsageError(f"{real}: cannot write next to it ({exc.strerror}); run finish as root") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(out.fileno(), st.st_uid, st.st_gid)
        os.replace(tmp, real)
    except OSError as exc:
        os.unlink(tmp)
        raise UsageError(f"{real}: cannot replace it keeping its mode and owner ({exc.strerror});"
                         " run finish as root") from None
    _fsync_dir(real.parent)
    return backup


def _backup(real: Path, st: os.stat_result, when: float) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    backup = real.with_name(f"{real.name}.{stamp}.bak")
    counter = 1
    while backup.exists():
        backup = real.with_name(f"{real.name}.{stamp}-{counter}.bak")
        counter += 1
    # O_EXCL: never overwrite; the mode keeps the copy as private as the original
    fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode))
    with os.fdopen(fd, "wb") as out:
        out.write(real.read_bytes())
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(out.fileno(), st.st_uid, st.st_gid)
    return backup


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


# -- the whole run ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
    limits: Path
    slurm_conf: Path
    shapes: tuple[Path, ...] = ()
    names: str | None = None
    dry_run: bool = False
    reconfigure: bool = True
    force: bool = False


def run(opts: Options, slurm: SlurmLike | None = None,
        echo: Callable[[str], None] = click.echo) -> int:
    """Do what ``finish`` does; returns the exit code. Raises CitcPowerError for bad input."""
    plan = read_limits(opts.limits, load_catalog(opts.shapes), opts.names)
    conf = read_conf(opts.slurm_conf)
    check_outside(conf, plan)
    new_text = conf.with_block(render(plan))
    if new_text == conf.text:
        echo(f"{conf.path} already holds these {len(plan.node_names())} nodes; nothing to do")
        return 0
    old = defined([(conf.start + 2 + i, line) for i, line in enumerate(conf.block())], _NODE_LINE,
                  conf.path, expand=True)
    new = plan.node_names()
    kept = set(new)
    added = [n for n in new if n not in old]
    removed = [n for n in old if n not in kept]
    slurm = slurm or _default_slurm()
    busy = _busy(slurm, removed, opts, echo)
    if opts.dry_run:
        echo(diff(conf, new_text).rstrip("\n"))
        echo(summary(plan, added, removed, "would change"))
        if busy:
            echo(f"finish: would refuse: {hostlist.collapse(busy)} would be removed while powered up")
        return 0
    if busy and not opts.force:
        raise UsageError(f"{hostlist.collapse(busy)} would be removed while powered up; power them"
                         " down first (stopnode) or use --force")
    backup = write_atomic(conf.path, new_text)
    log.info("wrote %s (backup %s): nodes %s", conf.path, backup, hostlist.collapse(new) or "none")
    echo(f"wrote {conf.path} (backup {backup})")
    echo(summary(plan, added, removed, "changed"))
    if busy:
        echo(f"warning: {hostlist.collapse(busy)} removed while powered up; their machines still"
             " run: stop them by hand")
    return tell_slurm(slurm, opts, bool(added or removed), echo)


def _default_slurm() -> SlurmLike:
    from .slurm import Slurm  # only slurm.py runs programs; imported late to keep startup light

    return Slurm()


def _busy(slurm: SlurmLike, removed: list[str], opts: Options,
          echo: Callable[[str], None]) -> list[str]:
    try:
        return powered_up(slurm, removed)
    except SlurmError as exc:
        if not (opts.force or opts.dry_run):
            raise UsageError(f"cannot ask Slurm whether {hostlist.collapse(removed)} are powered"
                             f" down ({exc}); start slurmctld or use --force") from None
        echo(f"warning: cannot ask Slurm whether {hostlist.collapse(removed)} are powered down ({exc})")
        return []


def diff(conf: ConfFile, new_text: str) -> str:
    name = str(conf.path)
    return "".join(difflib.unified_diff(conf.text.splitlines(keepends=True),
                                        new_text.splitlines(keepends=True), name, name))


def summary(plan: Plan, added: Sequence[str], removed: Sequence[str], verb: str) -> str:
    parts = [f"{len(plan.node_names())} nodes in {len(plan.groups)} groups"]
    if added:
        parts.append(f"{len(added)} added ({hostlist.collapse(added)})")
    if removed:
        parts.append(f"{len(removed)} removed ({hostlist.collapse(removed)})")
    return f"{verb}: " + ", ".join(parts)


def tell_slurm(slurm: SlurmLike, opts: Options, nodes_changed: bool,
               echo: Callable[[str], None]) -> int:
    """Reconfigure slurmctld, or say that it needs a restart; returns the exit code."""
    if nodes_changed:
        version = slurm.version()
        if version is None or version < RECONFIGURE_ADDS_NODES:
            seen = "this Slurm" if version is None else f"Slurm {version[0]}.{version[1]:02d}"
            echo(f"restart slurmctld now: {seen} reads its node list only when it starts"
                 " (systemctl restart slurmctld)")
            return 0
    if not opts.reconfigure:
        echo("left Slurm alone (--no-reconfigure): run scontrol reconfigure to apply")
        return 0
    try:
        slurm.reconfigure()
    except SlurmError as exc:
        raise SlurmError(f"wrote {opts.slurm_conf} but scontrol reconfigure failed ({exc});"
                         " run it by hand") from None
    echo("ran scontrol reconfigure")
    return 0


# -- the command --------------------------------------------------------------------------------

@click.command("finish", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("limits", default="limits.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--slurm-conf", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File with the # STARTNODES / # ENDNODES markers"
                   " (default: $SLURM_CONF, then /etc/slurm/slurm.conf).")
@click.option("--shapes", "shapes", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Site shapes file, read over the packaged catalog (repeatable).")
@click.option("--names", default=None, metavar="PATTERN",
              help="Node name pattern, e.g. '{shape}-ad{ad}-{n:04d}' (overrides names: in LIMITS).")
@click.option("--dry-run", is_flag=True, help="Print the diff; change nothing.")
@click.option("--no-reconfigure", is_flag=True, help="Do not run scontrol reconfigure afterwards.")
@click.option("--force", is_flag=True,
              help="Remove nodes even if Slurm has them powered up (or cannot be asked).")
def command(limits: Path, slurm_conf: Path | None, shapes: tuple[Path, ...], names: str | None,
            dry_run: bool, no_reconfigure: bool, force: bool) -> None:
    """Write the nodes of LIMITS (default ./limits.yaml) into slurm.conf.

    The lines between "# STARTNODES" and "# ENDNODES" are replaced; nothing else is touched.
    """
    conf = slurm_conf or Path(os.environ.get("SLURM_CONF") or DEFAULT_CONF)
    opts = Options(limits, conf, tuple(shapes), names, dry_run, not no_reconfigure, force)
    try:
        code = run(opts)
    except CitcPowerError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            click.echo(f"finish: {line}", err=True)
        code = exc.exit_code
    sys.exit(code)
