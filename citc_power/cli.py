"""Command line: the programs slurmctld runs, and the same actions by hand.

slurm.conf runs ``citc-power resume|suspend|resume-fail|reboot HOSTLIST`` (through small
wrappers, since slurm.conf takes one path and no arguments). Admins run ``startnode`` and
``stopnode`` by hand, and ``citc-power check`` to validate a config offline.

Exit codes: 0 every node done or reported to Slurm; 1 something could be neither done nor
reported; 2 usage or config error (one line on stderr, no traceback).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Any, Callable, NoReturn, Optional

import click

from . import __version__, config as config_mod, hostlist
from .errors import CitcPowerError, ConfigError

log = logging.getLogger(__name__)
DEFAULT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin"


def prepare_process() -> None:
    """Undo how slurmctld starts its programs: closed fds, no PATH, blocked signals.

    Without this, writing to stdout fails and every child inherits a mask in which SIGTERM
    is blocked (so a slurmd started by a command provider could never be stopped).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.setdefault("PATH", DEFAULT_PATH)


class Context:
    def __init__(self, config_path: Optional[str] = None, verbose: bool = False):
        self.config_path = config_path
        self.verbose = verbose


pass_ctx = click.make_pass_decorator(Context)


def _set_config(ctx: click.Context, _param: click.Parameter, value: Optional[str]) -> None:
    if value:
        ctx.ensure_object(Context).config_path = value


config_option = click.option(
    "--config", metavar="PATH", expose_value=False, callback=_set_config, is_eager=True,
    help="Config file (default: $CITC_POWER_CONFIG, then /etc/citc/power.yaml).")


def fail(message: str, code: int = 2, prog_name: str = "citc-power") -> NoReturn:
    """Print each problem as one line on stderr and exit."""
    for line in message.splitlines() or [message]:
        click.echo(f"{prog_name}: {line}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar=None,
              help="Config file (default: $CITC_POWER_CONFIG, then /etc/citc/power.yaml).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail, also on stderr.")
@click.version_option(__version__, prog_name="citc-power")
@click.pass_context
def cli(ctx: click.Context, config_path: Optional[str], verbose: bool) -> None:
    """Power Slurm nodes up and down on clouds and bare metal."""
    ctx.obj = Context(config_path, verbose)


def _load(ctx: Context) -> config_mod.Config:
    return config_mod.load(config_mod.find_path(ctx.config_path))


def _expand(expr: str) -> list[str]:
    names = hostlist.expand(expr)
    if not names:
        raise ConfigError(f"HOSTLIST {expr!r} names no nodes; give e.g. cn[001-004]")
    return names


def run_action(ctx: Context, action: str, expr: str, console: bool = False, dry_run: bool = False) -> int:
    """Parse, expand, group, call the providers, report: the shape of every entrypoint."""
    from . import actions, logs, slurm

    jobs = slurm.read_resume_file()  # a memfd that vanishes when we exit: read it first
    names = _expand(expr)
    cfg = _load(ctx)
    logs.setup(action, cfg.log.file, cfg.log.level, console=console, verbose=ctx.verbose)
    s = slurm.Slurm(cfg.slurm.bin_dir, cfg.slurm.timeout, cfg.slurm.batch_size)
    runner = actions.Runner(cfg, s, jobs=jobs, dry_run=dry_run, strict_config=console)
    result = runner.run(action, names)
    if console:
        _print_outcomes(result, dry_run)
    code = result.exit_code(strict=action in ("start", "stop") and not dry_run)
    if result.config_problems:  # the nodes were reported to Slurm; now say what to fix
        raise ConfigError(list(dict.fromkeys(result.config_problems)))
    return code


def _print_outcomes(result: Any, dry_run: bool) -> None:
    for o in result.outcomes:
        if o.ok:
            facts = " ".join(f"{k}={v}" for k, v in (("address", o.address), ("instance", o.instance_id)) if v)
            word = "plan" if dry_run else "ok"
            click.echo(f"{o.node:<24} {word:<8} {o.message or facts}".rstrip())
        else:
            click.echo(f"{o.node:<24} {'FAILED':<8} [{o.code}] {o.message}")


def _slurm_command(action: str, help_text: str) -> Callable[..., None]:
    @cli.command(action, help=help_text)
    @click.argument("hostlist_expr", metavar="HOSTLIST")
    @config_option
    @pass_ctx
    def command(ctx: Context, hostlist_expr: str) -> None:
        sys.exit(run_action(ctx, action, hostlist_expr))

    return command


_slurm_command("resume", "ResumeProgram: power up HOSTLIST and tell Slurm their addresses.")
_slurm_command("suspend", "SuspendProgram: power down HOSTLIST.")
_slurm_command("resume-fail", "ResumeFailProgram: clean up HOSTLIST and return them to service powered down.")


@cli.command("reboot")
@config_option
@click.argument("hostlist_expr", metavar="[HOSTLIST]", required=False)
@pass_ctx
def reboot_command(ctx: Context, hostlist_expr: Optional[str]) -> None:
    """RebootProgram: restart HOSTLIST (or, run by slurmd with no argument, this node)."""
    sys.exit(run_action(ctx, "reboot", hostlist_expr or local_node_name()))


def local_node_name() -> str:
    """The Slurm name of the node we run on, for RebootProgram run by slurmd."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _by_hand(action: str, help_text: str) -> click.Command:
    @cli.command(action, help=help_text)
    @click.argument("hostlist_expr", metavar="HOSTLIST")
    @config_option
    @click.option("-n", "--dry-run", is_flag=True, help="Show which provider would act; change nothing.")
    @click.option("-v", "--verbose", is_flag=True, help="Log debug detail on stderr.")
    @pass_ctx
    def command(ctx: Context, hostlist_expr: str, dry_run: bool, verbose: bool) -> None:
        ctx.verbose = ctx.verbose or verbose
        sys.exit(run_action(ctx, action, hostlist_expr, console=True, dry_run=dry_run))

    return command


start_command = _by_hand("start", "Power up HOSTLIST by hand (what startnode runs).")
stop_command = _by_hand("stop", "Power down HOSTLIST by hand (what stopnode runs).")


@cli.command("check")
@config_option
@click.argument("hostlist_expr", metavar="[HOSTLIST]", required=False)
@pass_ctx
def check_command(ctx: Context, hostlist_expr: Optional[str]) -> None:
    """Validate the config offline; with HOSTLIST, show which provider powers each node."""
    cfg = config_mod.load(config_mod.find_path(ctx.config_path), check_providers=True)
    problems: list[str] = []
    unused = sorted(set(cfg.providers) - {g.provider for g in cfg.groups})
    for name in unused:
        click.echo(f"note: provider {name} is used by no group", err=True)
    if hostlist_expr:
        names = _expand(hostlist_expr)
        grouped, unknown = cfg.by_provider(names)
        for pname, members in grouped.items():
            spec = cfg.providers[pname]
            click.echo(f"{hostlist.collapse(members)}: provider {pname} (type {spec.type})")
        if unknown:
            problems.append(f"{cfg.path}: nodes {hostlist.collapse(unknown)} are in no group; add them to groups:")
    if problems:
        raise ConfigError(problems)
    click.echo(f"{cfg.path}: OK ({len(cfg.groups)} groups, {len(cfg.providers)} providers)")


@cli.command("status")
@config_option
@click.argument("hostlist_expr", metavar="HOSTLIST")
@pass_ctx
def status_command(ctx: Context, hostlist_expr: str) -> None:
    """Show the power state each provider reports for HOSTLIST."""
    import asyncio

    from . import actions, logs, slurm

    names = _expand(hostlist_expr)
    cfg = _load(ctx)
    logs.setup("status", cfg.log.file, cfg.log.level, console=True, verbose=ctx.verbose)
    s = slurm.Slurm(cfg.slurm.bin_dir, cfg.slurm.timeout, cfg.slurm.batch_size)
    states = asyncio.run(actions.Runner(cfg, s).power_states(names))
    for name, state in states.items():
        click.echo(f"{name:<24} {state.value}")


def _register_finish() -> None:
    try:
        from .finish import command as finish_cmd
    except ImportError:  # finish needs nothing beyond the core, but keep the CLI usable
        return
    cli.add_command(finish_cmd, "finish")


def main(argv: Optional[list[str]] = None, prog_name: str = "citc-power") -> None:
    """Entry point of ``citc-power``: one line on stderr and exit 2 for bad input, never a traceback."""
    prepare_process()
    _register_finish()
    try:
        cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        fail(f"{exc.format_message()} (see {prog_name} --help)", 2, prog_name)
    except click.exceptions.Abort:
        fail("aborted", 1, prog_name)
    except CitcPowerError as exc:
        if logging.getLogger().handlers:  # only once logs.setup has run; never Python's stderr fallback
            log.error("%s", exc, extra={"to_console": False})
        fail(str(exc), exc.exit_code, prog_name)
    except KeyboardInterrupt:
        fail("interrupted", 1, prog_name)
    except Exception as exc:  # last resort: a short line for the user, the traceback to the log
        if logging.getLogger().handlers:
            log.exception("internal error", extra={"to_console": False})
        fail(f"internal error: {type(exc).__name__}: {exc} (details in the log)", 1, prog_name)


def startnode() -> None:
    """``startnode HOSTLIST`` = ``citc-power start HOSTLIST``."""
    main(["start", *sys.argv[1:]], prog_name="startnode")


def stopnode() -> None:
    """``stopnode HOSTLIST`` = ``citc-power stop HOSTLIST``."""
    main(["stop", *sys.argv[1:]], prog_name="stopnode")


def finish_main() -> None:
    """``finish`` = ``citc-power finish`` (it prints its own one-line errors)."""
    prepare_process()
    from .finish import command as finish_cmd

    finish_cmd.main(prog_name="finish")
