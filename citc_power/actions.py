"""The actions: group nodes by provider, call the providers, report to Slurm.

Every entrypoint runs the same shape: expand -> group -> provider -> report. Nothing else
calls a provider. Failures are reported to Slurm at once (DOWN with a coded reason), so
Slurm requeues the jobs now rather than after ResumeTimeout.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Callable, Mapping, Optional, Sequence

from . import hostlist
from .config import Config
from .errors import CitcPowerError, ConfigError, ProviderError, SlurmError
from .providers import provider_class
from .providers.base import CONFIG, ERROR, STUCK, Node, Outcome, PowerState, Provider
from .slurm import Slurm, outcomes_by_reason

log = logging.getLogger(__name__)

# action -> provider method
METHODS = {
    "resume": "power_on",
    "start": "power_on",
    "suspend": "power_off",
    "stop": "power_off",
    "resume-fail": "power_off",
    "reboot": "reboot",
}
POWERING_UP = ("resume", "start", "reboot")


@dataclasses.dataclass
class Result:
    """What an action did: one outcome per node, and what could not be told to Slurm."""

    action: str
    outcomes: list[Outcome]
    unreported: list[str] = dataclasses.field(default_factory=list)
    config_problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def exit_code(self, strict: bool = False) -> int:
        """2 for config problems, 1 if a node was neither done nor reported, else 0.

        ``strict`` (by-hand start/stop): any failed node gives 1, reported or not.
        """
        if self.config_problems:
            return 2
        if self.unreported or (strict and self.failed):
            return 1
        return 0


class Runner:
    """Runs one action for a set of nodes against the configured providers and Slurm."""

    def __init__(self, config: Config, slurm: Slurm, jobs: Optional[Mapping[str, list[int]]] = None,
                 dry_run: bool = False, strict_config: bool = False):
        self.config = config
        self.strict_config = strict_config  # by hand: a config problem changes nothing at all
        self.slurm = slurm
        self.jobs = dict(jobs or {})
        self.dry_run = dry_run
        self.config_problems: list[str] = []

    def run(self, action: str, names: Sequence[str]) -> Result:
        return asyncio.run(self.run_async(action, names))

    async def run_async(self, action: str, names: Sequence[str]) -> Result:
        names = list(dict.fromkeys(names))
        log.info("%s %s (%d nodes)", action, hostlist.collapse(names), len(names))
        plan, failures = self._providers_for(names)
        if self.config_problems and self.strict_config:
            raise ConfigError(self.config_problems)
        nodes = self._read_nodes(names)
        if self.dry_run:
            await asyncio.gather(*(p.close() for p, _ in plan))
            return Result(action, self._dry_run(plan, failures, nodes), config_problems=self.config_problems)
        outcomes = await self._call_providers(action, plan, failures, nodes)
        self._note_node_config_problems(outcomes, failures)
        self._log_outcomes(action, outcomes)
        result = Result(action, outcomes, config_problems=self.config_problems)
        self._report(result)
        return result

    async def power_states(self, names: Sequence[str]) -> dict[str, PowerState]:
        """Ask each provider for the power state of its nodes (for ``citc-power status``)."""
        plan, _ = self._providers_for(names)
        if self.config_problems:
            raise ConfigError(self.config_problems)
        nodes = self._read_nodes(names)
        states: dict[str, PowerState] = {}
        for provider, members in plan:
            try:
                states.update(await provider.power_state([nodes[n] for n in members]))
            except CitcPowerError as exc:
                log.error("provider %s: cannot read power state of %s: %s", provider.name, hostlist.collapse(members), exc)
            finally:
                await provider.close()
        return {n: states.get(n, PowerState.UNKNOWN) for n in names}

    # -- steps ------------------------------------------------------------------------------
    def _providers_for(self, names: Sequence[str]) -> tuple[list[tuple[Provider, list[str]]], list[Outcome]]:
        """Build the providers the nodes need; nodes they cannot serve get config outcomes."""
        grouped, unknown = self.config.by_provider(names)
        failures = []
        if unknown:
            problem = f"{self.config.path}: nodes {hostlist.collapse(unknown)} are in no group; add them to groups:"
            self.config_problems.append(problem)
            failures += [Outcome.failure(n, CONFIG, f"node is in no group of {self.config.path}") for n in unknown]
        plan: list[tuple[Provider, list[str]]] = []
        for pname, members in grouped.items():
            try:
                plan.append((build_provider(self.config, pname), members))
            except ConfigError as exc:
                self.config_problems.extend(exc.problems)
                failures += [Outcome.failure(n, CONFIG, exc.problems[0]) for n in members]
        return plan, failures

    def _read_nodes(self, names: Sequence[str]) -> dict[str, Node]:
        try:
            known = self.slurm.read_nodes(names)
        except SlurmError as exc:
            # powering the nodes matters more than their features; go on with names only
            log.warning("cannot read nodes %s from Slurm: %s", hostlist.collapse(names), exc)
            known = {}
        return {n: known.get(n) or Node(name=n) for n in names}

    async def _call_providers(self, action: str, plan: Sequence[tuple[Provider, list[str]]],
                              failures: list[Outcome], nodes: Mapping[str, Node]) -> list[Outcome]:
        method = METHODS[action]
        results = await asyncio.gather(*(_call(p, method, [nodes[n] for n in members], action)
                                         for p, members in plan))
        by_name = {o.node: o for o in failures}
        for outcomes in results:
            by_name.update({o.node: o for o in outcomes})
        return [by_name[n] for n in nodes]

    def _note_node_config_problems(self, outcomes: Sequence[Outcome], known: Sequence[Outcome]) -> None:
        """A provider's ``config`` outcomes (a bad shape feature, say) are config errors too: exit 2."""
        already = {o.node for o in known}
        by_message: dict[str, list[str]] = {}
        for o in outcomes:
            if not o.ok and o.code == CONFIG and o.node not in already:
                by_message.setdefault(o.message, []).append(o.node)
        for message, names in by_message.items():
            self.config_problems.append(f"{hostlist.collapse(names)}: {message}")

    def _dry_run(self, plan: Sequence[tuple[Provider, list[str]]], failures: list[Outcome],
                 nodes: Mapping[str, Node]) -> list[Outcome]:
        by_name = {o.node: o for o in failures}
        for provider, members in plan:
            for name in members:
                feats = ",".join(f"{k}={v}" if v else k for k, v in nodes[name].features.items()) or "-"
                by_name[name] = Outcome.success(
                    name, f"would use provider {provider.name} ({type(provider).__name__}); features {feats}")
        return [by_name[n] for n in nodes]

    def _log_outcomes(self, action: str, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            if o.ok:
                log.info("%s %s: done%s%s", action, o.node,
                         f" address={o.address}" if o.address else "",
                         f" instance={o.instance_id}" if o.instance_id else "")
            else:
                log.error("%s %s: failed [%s] %s%s", action, o.node, o.code, o.message,
                          f" (instance {o.instance_id})" if o.instance_id else "")

    # -- reporting to Slurm -----------------------------------------------------------------
    def _report(self, result: Result) -> None:
        ok = [o for o in result.outcomes if o.ok]
        if result.action in POWERING_UP:
            self._tell(result, [o.node for o in ok], lambda: self.slurm.report_addresses(ok))
        elif result.action == "resume-fail":
            names = [o.node for o in ok]
            self._tell(result, names, lambda: self.slurm.power_down(names))
            if names:
                log.info("resume-fail %s: returned to service powered down", hostlist.collapse(names))
        self._report_failures(result)

    def _report_failures(self, result: Result) -> None:
        verb = "start" if result.action in POWERING_UP else "stop"
        for reason, names in outcomes_by_reason(result.failed).items():
            # comment first: once its node is DOWN a job may end, and then it takes no comment
            self._comment_jobs(names, f"citc-power: could not {verb} node(s) {hostlist.collapse(names)}: {reason}")
            if self._tell(result, names, functools.partial(self.slurm.set_down, names, reason)):
                log.info("%s: set DOWN with reason %r", hostlist.collapse(names), reason)

    def _comment_jobs(self, names: Sequence[str], text: str) -> None:
        job_ids = sorted({j for n in names for j in self.jobs.get(n, [])})
        if not job_ids:
            return
        try:
            self.slurm.comment_jobs(job_ids, text)
        except SlurmError as exc:
            log.warning("cannot comment jobs %s: %s", job_ids, exc)

    def _tell(self, result: Result, names: Sequence[str], call: Callable[[], None]) -> bool:
        if not names:
            return True
        try:
            call()
            return True
        except SlurmError as exc:
            log.error("could not tell Slurm about %s: %s", hostlist.collapse(names), exc)
            result.unreported.extend(names)
            return False


async def _call(provider: Provider, method: str, nodes: Sequence[Node], action: str = "") -> list[Outcome]:
    """Call one provider method, turning every exception into per-node outcomes."""
    try:
        outcomes = await getattr(provider, method)(nodes)
        if action == "resume-fail" and provider.BARE_METAL:
            outcomes = [_stuck(o) for o in outcomes]
    except ProviderError as exc:
        log.error("provider %s: %s failed for %s: [%s] %s", provider.name, method,
                  hostlist.collapse([n.name for n in nodes]), exc.code, exc)
        outcomes = [Outcome.failure(n.name, exc.code, str(exc)) for n in nodes]
    except CitcPowerError as exc:
        outcomes = [Outcome.failure(n.name, CONFIG if isinstance(exc, ConfigError) else ERROR, str(exc).splitlines()[0])
                    for n in nodes]
    except Exception as exc:  # a bug or an SDK surprise: the nodes must still be reported
        log.exception("provider %s: %s crashed for %s", provider.name, method,
                      hostlist.collapse([n.name for n in nodes]))
        outcomes = [Outcome.failure(n.name, ERROR, f"internal error: {type(exc).__name__}") for n in nodes]
    finally:
        try:
            await provider.close()
        except Exception:
            log.exception("provider %s: close failed", provider.name)
    return _complete(outcomes, nodes, provider.name)


def _stuck(outcome: Outcome) -> Outcome:
    """A bare-metal node that did not register in time: powered off, but left DOWN to inspect."""
    if not outcome.ok:
        return outcome
    return Outcome.failure(outcome.node, STUCK, "powered on but never registered with Slurm before "
                           "ResumeTimeout; powered off, check its console", instance_id=outcome.instance_id)


def _complete(outcomes: Sequence[Outcome], nodes: Sequence[Node], provider: str) -> list[Outcome]:
    """One outcome per node even if a provider forgot one."""
    by_name = {o.node: o for o in outcomes}
    missing = [n.name for n in nodes if n.name not in by_name]
    if missing:
        log.error("provider %s returned no result for %s", provider, hostlist.collapse(missing))
    return [by_name.get(n.name) or Outcome.failure(n.name, ERROR, f"provider {provider} gave no result")
            for n in nodes]


def build_provider(config: Config, name: str) -> Provider:
    """Instantiate the provider ``name`` from the config, checking its settings offline.

    :raises ConfigError: naming the file and setting.
    """
    spec = config.providers[name]
    try:
        cls = provider_class(spec.type, where=f"providers.{name}.type")
        return cls.from_settings(name, spec.settings)
    except ConfigError as exc:
        raise exc.located(str(config.path)) from None
