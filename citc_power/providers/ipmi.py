"""Bare-metal power over IPMI 2.0 (RMCP+), with python-ipmi's native ``rmcpplus`` interface.

Each node's BMC is found through :mod:`citc_power.providers.bmc` (template, map or manifest).
One session per BMC at a time, many BMCs at once in a bounded thread pool. Nothing is run in a
shell and the password travels only inside the RAKP handshake, never in argv or a log line.

- power on: already on is a success; else power up and wait until the BMC reports on.
- power off: soft shutdown (ACPI), wait up to ``soft_off_timeout``, then hard power down; a node
  still on after that is ``stuck``.
- reboot: power cycle; a node that is off is powered up.

Retries belong to python-ipmi alone (``retries``: a request without answer within ``timeout`` is
sent again); the provider adds none of its own, so a dead BMC costs at most
``timeout x (retries + 1)`` per request, and an unanswered ping costs ``timeout``.

Settings: see ``IpmiProvider.SETTINGS``. Example::

    bmc: {type: ipmi, address: "{node}-ipmi", username: admin, password_file: /etc/citc/ipmi.pw}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional, Sequence

import pyipmi
import pyipmi.interfaces
from pyipmi.errors import (
    AuthenticationError,
    CompletionCodeError,
    DecodingError,
    IpmiConnectionError,
    IpmiLongPasswordError,
    IpmiTimeoutError,
    MessageStatusCodeError,
    NotSupportedError,
    RetryError,
)
from pyipmi.interfaces.rmcpplus import CIPHER_SUITES, CONFIDENTIALITY_ALGO_NONE, aes_available
from pyipmi.msgs import constants as ipmi_constants
from pyipmi.msgs.chassis import (
    CONTROL_POWER_CYCLE,
    CONTROL_POWER_DOWN,
    CONTROL_POWER_UP,
    CONTROL_SOFT_SHUTDOWN,
)

from ..errors import ConfigError, ProviderError
from ..pacing import BlockingPool, Deadline
from ..settings import SettingsReader
from .base import (
    AUTH,
    BMC_ERROR,
    CONFIG,
    ERROR,
    STUCK,
    TIMEOUT,
    UNREACHABLE,
    Node,
    Outcome,
    PowerState,
    Provider,
)
from .bmc import BMC_SETTINGS, BmcDirectory, BmcEndpoint

log = logging.getLogger(__name__)

IPMI_SETTINGS: dict[str, str] = {
    "cipher_suite": "RMCP+ cipher suite tried first (default 3: HMAC-SHA1, AES-128)",
    "fallback_cipher_suites": "cipher suites tried, in order, if the BMC refuses cipher_suite "
    "(default [17])",
    "privilege": "session privilege: operator or administrator (default administrator)",
    "timeout": "seconds to wait for the BMC to answer one request (default 5)",
    "retries": "times a request without answer is sent again (default 1)",
    "verify_timeout": "seconds to wait for the BMC to report the new power state (default 15)",
    "soft_off_timeout": "seconds a soft shutdown may take before a hard power off; 0 = hard "
    "off at once (default 20; keep it and verify_timeout under SuspendTimeout)",
    "boot_timeout": "seconds a powered-on node may take to register with Slurm before it is "
    "labelled stuck (default 600)",
    "concurrency": "BMCs talked to at the same time (default 32)",
}

# the BMC's answers to Open Session / RAKP that mean the credentials or the role are refused
_AUTH_STATUS = frozenset(
    {
        ipmi_constants.MSC_INVALID_ROLE,
        ipmi_constants.MSC_UNAUTHORIZED_ROLE,
        ipmi_constants.MSC_INVALID_NAME_LENGTH,
        ipmi_constants.MSC_UNAUTHORIZED_NAME,
        ipmi_constants.MSC_INVALID_INTEGRITY_CHECK_VALUE,
    }
)
_CIPHER_STATUS = frozenset(
    {
        ipmi_constants.MSC_INVALID_AUTHENTICATION_ALGORITHM,
        ipmi_constants.MSC_INVALID_INTEGRITY_ALGORITHM,
        ipmi_constants.MSC_NO_MATCHING_AUTHENTICATION_PAYLOAD,
        ipmi_constants.MSC_NO_MATCHING_INTEGRITY_PAYLOAD,
        ipmi_constants.MSC_INVALID_CONFIDENTIALITY_ALGORITHM,
        ipmi_constants.MSC_NO_CIPHER_SUITE_MATCH,
    }
)
# failures after which the BMC is not worth a Close Session request
_NO_ANSWER = (IpmiConnectionError, RetryError, TimeoutError, IpmiTimeoutError, OSError)

BMC_IPMB_ADDRESS = 0x20
FIRST_POLL = 0.1  # seconds; doubled after each read up to LAST_POLL
LAST_POLL = 2.0


class _QuietSession(pyipmi.Session):
    """A python-ipmi session whose text form leaves the password out.

    python-ipmi formats the session into a debug line when it closes it, password included.
    """

    def __str__(self) -> str:
        return f"Session(host={self.rmcp_host}:{self.rmcp_port}, user={self.auth_username!r})"

    __repr__ = __str__


class _Bmc:
    """One open session with a node's BMC: read the power and switch it."""

    def __init__(self, ipmi: pyipmi.Ipmi, endpoint: BmcEndpoint):
        self._ipmi = ipmi
        self.endpoint = endpoint

    def is_on(self) -> bool:
        """Whether the chassis power is on.

        :raises CompletionCodeError: the BMC could not read it.
        """
        rsp = self._ipmi.send_message_by_name("GetChassisStatus")  # checks the completion code
        return bool(rsp.current_power_state.power_on)

    def control(self, option: int) -> None:
        """Send a Chassis Control request (power up, down, cycle, soft shutdown)."""
        self._ipmi.chassis_control(option)

    def wait_for(self, on: bool, seconds: float) -> bool:
        """Poll until the power is ``on`` (True) or off; False if ``seconds`` pass first."""
        deadline = Deadline(seconds)
        delay = FIRST_POLL
        while self.is_on() != on:
            if deadline.expired():
                return False
            time.sleep(min(delay, deadline.remaining()))
            delay = min(delay * 2, LAST_POLL)
        return True


class IpmiProvider(Provider):
    """Powers bare-metal nodes through their BMCs over IPMI 2.0 (RMCP+)."""

    SETTINGS: ClassVar[Mapping[str, str]] = {**BMC_SETTINGS, **IPMI_SETTINGS}
    BARE_METAL = True

    def __init__(
        self,
        name: str,
        directory: BmcDirectory,
        cipher_suites: Sequence[int] = (3, 17),
        privilege: str = "administrator",
        timeout: float = 5.0,
        retries: int = 1,
        verify_timeout: float = 15.0,
        soft_off_timeout: float = 20.0,
        boot_timeout: float = 600.0,
        concurrency: int = 32,
    ):
        super().__init__(name)
        self.directory = directory
        self.cipher_suites = tuple(cipher_suites)
        self.privilege = privilege
        self.timeout = timeout
        self.retries = retries
        self.verify_timeout = verify_timeout
        self.soft_off_timeout = soft_off_timeout
        self.boot_timeout = boot_timeout
        self.concurrency = concurrency
        self._pool: Optional[BlockingPool] = None
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any]) -> "IpmiProvider":
        """Build the provider from its config section; reads no BMC.

        :raises ConfigError: listing every problem, each naming the setting and the fix.
        """
        s = SettingsReader(name, settings, cls.SETTINGS)
        directory = BmcDirectory.read(s, default_port=623)
        first = s.int("cipher_suite", 3)
        fallback = s.settings.get("fallback_cipher_suites", [17])
        suites = _cipher_suites(s, first, fallback)
        provider = cls(
            name,
            directory,
            cipher_suites=suites,
            privilege=s.choice("privilege", ("operator", "administrator"), "administrator"),
            timeout=s.float("timeout", 5.0, minimum=0.1),
            retries=s.int("retries", 1, minimum=0),
            verify_timeout=s.float("verify_timeout", 15.0, minimum=0),
            soft_off_timeout=s.float("soft_off_timeout", 20.0, minimum=0),
            boot_timeout=s.float("boot_timeout", 600.0, minimum=1),
            concurrency=s.int("concurrency", 32, minimum=1),
        )
        s.done()
        return provider

    # -- the contract -------------------------------------------------------------------

    async def power_on(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Power the nodes up and wait until their BMCs report them on.

        Never raises for one node: failures are Outcomes coded ``auth``, ``unreachable``,
        ``timeout``, ``bmc_error`` or ``config``.
        """
        return await self._each(nodes, "power on", self._power_on)

    async def power_off(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Shut the nodes down softly, then hard; a node that stays on is coded ``stuck``."""
        return await self._each(nodes, "power off", self._power_off)

    async def reboot(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Power cycle the nodes; a node that is off is powered up."""
        return await self._each(nodes, "reboot", self._reboot)

    async def power_state(self, nodes: Sequence[Node]) -> dict[str, PowerState]:
        """Read each node's chassis power; UNKNOWN where the BMC cannot be read."""
        outcomes = await self._each(nodes, "power state", self._read_state)
        return {o.node: PowerState(o.message) if o.ok else PowerState.UNKNOWN for o in outcomes}

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- one node, in a worker thread ---------------------------------------------------

    def _power_on(self, node: Node, bmc: _Bmc) -> Outcome:
        if bmc.is_on():
            return self._done(node, "already on")
        bmc.control(CONTROL_POWER_UP)
        if not bmc.wait_for(True, self.verify_timeout):
            return Outcome.failure(
                node.name, TIMEOUT, f"still off {self.verify_timeout:g}s after power up"
            )
        return self._done(node, "powered on")

    def _power_off(self, node: Node, bmc: _Bmc) -> Outcome:
        if not bmc.is_on():
            return self._done(node, "already off")
        if self.soft_off_timeout > 0 and self._soft_off(node, bmc):
            return self._done(node, "shut down")
        bmc.control(CONTROL_POWER_DOWN)
        if not bmc.wait_for(False, self.verify_timeout):
            return Outcome.failure(
                node.name, STUCK, f"still on {self.verify_timeout:g}s after a hard power off"
            )
        return self._done(node, "powered off (hard)")

    def _soft_off(self, node: Node, bmc: _Bmc) -> bool:
        """Ask the OS to shut down; True if it did within soft_off_timeout."""
        try:
            bmc.control(CONTROL_SOFT_SHUTDOWN)
        except CompletionCodeError as exc:
            # some BMCs have no soft shutdown, or refuse it in some states: go hard at once
            log.info(
                "%s: BMC refused soft shutdown (cc=0x%02x); powering off hard", node.name, exc.cc
            )
            return False
        if bmc.wait_for(False, self.soft_off_timeout):
            return True
        log.warning(
            "%s: still on %gs after soft shutdown; powering off hard",
            node.name,
            self.soft_off_timeout,
        )
        return False

    def _reboot(self, node: Node, bmc: _Bmc) -> Outcome:
        if not bmc.is_on():
            bmc.control(CONTROL_POWER_UP)
            verb = "was off, powered on"
        else:
            bmc.control(CONTROL_POWER_CYCLE)
            verb = "power cycled"
        if not bmc.wait_for(True, self.verify_timeout):
            return Outcome.failure(
                node.name, TIMEOUT, f"still off {self.verify_timeout:g}s after {verb}"
            )
        return self._done(node, verb)

    def _read_state(self, node: Node, bmc: _Bmc) -> Outcome:
        state = PowerState.ON if bmc.is_on() else PowerState.OFF
        return Outcome.success(node.name, state.value)

    def _done(self, node: Node, message: str) -> Outcome:
        return Outcome.success(node.name, message, address=self.directory.node_address(node.name))

    # -- plumbing -----------------------------------------------------------------------

    async def _each(
        self, nodes: Sequence[Node], verb: str, action: Callable[[Node, _Bmc], Outcome]
    ) -> list[Outcome]:
        if not nodes:
            return []
        if self._pool is None:
            self._pool = BlockingPool(self.concurrency, name=f"ipmi-{self.name}")
        pool = self._pool
        jobs = [pool.run(self._attempt, node, verb, action) for node in nodes]
        return list(await asyncio.gather(*jobs))

    def _attempt(self, node: Node, verb: str, action: Callable[[Node, _Bmc], Outcome]) -> Outcome:
        """Run ``action`` on one node's BMC; every failure becomes a coded Outcome."""
        endpoint: Optional[BmcEndpoint] = None
        started = time.monotonic()
        try:
            endpoint = self.directory.endpoint(node.name)
            with self._lock(endpoint), self._session(endpoint) as bmc:
                outcome = action(node, bmc)
        except ProviderError as exc:
            outcome = Outcome.failure(node.name, exc.code, str(exc))
        except ConfigError as exc:
            outcome = Outcome.failure(node.name, CONFIG, "; ".join(exc.problems))
        except Exception as exc:  # noqa: BLE001 - one node's failure never stops the batch
            code, text = classify(exc, endpoint, self)
            outcome = Outcome.failure(node.name, code, text)
        outcome = _scrubbed(outcome, endpoint)
        _log_outcome(node, verb, outcome, endpoint, time.monotonic() - started)
        return outcome

    def _lock(self, endpoint: BmcEndpoint) -> threading.Lock:
        """The lock that keeps one session at a time on a BMC, across calls."""
        key = (endpoint.address, endpoint.port)
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def _session(self, endpoint: BmcEndpoint) -> Iterator[_Bmc]:
        """An authenticated RMCP+ session with ``endpoint``, closed on the way out."""
        password = endpoint.password.reveal(f"BMC password of {endpoint.node}")
        interface = pyipmi.interfaces.create_interface(
            "rmcpplus",
            cipher_suite=self.cipher_suites[0],
            keep_alive_interval=0,
            max_retries=self.retries,
        )
        # python-ipmi walks this list itself, moving on when the BMC refuses a suite
        interface.cipher_suites = self.cipher_suites
        ipmi = pyipmi.Ipmi(interface=interface, session=_QuietSession())
        ipmi.session.set_session_type_rmcp(endpoint.address, port=endpoint.port)
        ipmi.session.set_auth_type_user(endpoint.username, password)
        ipmi.session.set_priv_level(self.privilege)
        ipmi.target = pyipmi.Target(ipmb_address=BMC_IPMB_ADDRESS)
        interface.open()
        answering = True
        try:
            interface.set_timeout(self.timeout)
            ipmi.session.establish()
            yield _Bmc(ipmi, endpoint)
        except _NO_ANSWER:
            answering = False
            raise
        finally:
            _close(ipmi, interface, endpoint, answering)


def _close(ipmi: pyipmi.Ipmi, interface: Any, endpoint: BmcEndpoint, answering: bool) -> None:
    """Close the session (only if the BMC still answers) and the socket."""
    try:
        if answering:
            ipmi.session.close()
    except Exception as exc:  # noqa: BLE001 - the BMC expires sessions it never saw closed
        log.debug("%s: closing the BMC session failed: %s", endpoint.node, type(exc).__name__)
    finally:
        interface.close()


def classify(
    exc: BaseException, endpoint: Optional[BmcEndpoint], provider: IpmiProvider
) -> tuple[str, str]:
    """The outcome code and message for a python-ipmi or socket exception."""
    where = f"BMC {endpoint.where}" if endpoint is not None else "BMC"
    if isinstance(exc, (AuthenticationError, IpmiLongPasswordError)):
        return AUTH, f"{where} refused the credentials; check username and password"
    if isinstance(exc, MessageStatusCodeError):
        if exc.msc in _AUTH_STATUS:
            why = f"{where} refused the session ({exc.msc_desc})"
            return AUTH, f"{why}; check username, password and privilege"
        if exc.msc in _CIPHER_STATUS:
            suites = ", ".join(map(str, provider.cipher_suites))
            return BMC_ERROR, f"{where} accepts none of cipher suites {suites}; set cipher_suite"
        return BMC_ERROR, f"{where} refused the session ({exc.msc_desc})"
    if isinstance(exc, (RetryError, TimeoutError, IpmiTimeoutError)):
        waited = provider.timeout * (provider.retries + 1)
        return TIMEOUT, f"{where} did not answer a request within {waited:g}s"
    if isinstance(exc, IpmiConnectionError):
        return (
            UNREACHABLE,
            f"{where} does not answer (no RMCP ping reply within {provider.timeout:g}s)",
        )
    if isinstance(exc, socket.gaierror):
        return UNREACHABLE, f"{where}: address cannot be resolved; check address/manifest"
    if isinstance(exc, OSError):
        return UNREACHABLE, f"{where}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, CompletionCodeError):
        return BMC_ERROR, f"{where} answered completion code 0x{exc.cc:02x} ({exc.cc_desc})"
    if isinstance(exc, (DecodingError, NotSupportedError)):
        return BMC_ERROR, f"{where}: {type(exc).__name__}: {exc}"
    return ERROR, f"{where}: unexpected {type(exc).__name__}"


def _cipher_suites(s: SettingsReader, first: Any, fallback: Any) -> list[int]:
    if fallback is None:
        fallback = []
    if isinstance(fallback, int) and not isinstance(fallback, bool):
        fallback = [fallback]
    if not isinstance(fallback, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in fallback
    ):
        s.problem("fallback_cipher_suites", "must be a list of cipher suite numbers, e.g. [17]")
        fallback = []
    known = ", ".join(map(str, sorted(CIPHER_SUITES)))
    if first is not None and first not in CIPHER_SUITES:
        s.problem("cipher_suite", f"{first} is not supported; use one of {known}")
    for suite in fallback:
        if suite not in CIPHER_SUITES:
            s.problem("fallback_cipher_suites", f"{suite} is not supported; use some of {known}")
    suites = [first if first in CIPHER_SUITES else 3]
    suites += [x for x in fallback if x in CIPHER_SUITES and x not in suites]
    if not aes_available() and all(
        CIPHER_SUITES[x].confidentiality != CONFIDENTIALITY_ALGO_NONE for x in suites
    ):
        s.problem(
            "cipher_suite",
            f"cipher suites {', '.join(map(str, suites))} encrypt with AES, which needs "
            "the cryptography package; run: pip install 'citc-power[ipmi]'",
        )
    return suites


def _scrubbed(outcome: Outcome, endpoint: Optional[BmcEndpoint]) -> Outcome:
    """Belt and braces: the password never leaves in a message, whatever an SDK put there."""
    if endpoint is None or outcome.ok:
        return outcome
    try:
        password = endpoint.password.reveal()
    except ConfigError:
        return outcome
    if len(password) >= 4 and password in outcome.message:
        return Outcome.failure(outcome.node, outcome.code, outcome.message.replace(password, "***"))
    return outcome


def _log_outcome(
    node: Node, verb: str, outcome: Outcome, endpoint: Optional[BmcEndpoint], seconds: float
) -> None:
    where = endpoint.where if endpoint is not None else "-"
    if outcome.ok and verb == "power state":
        log.debug("%s: power state: %s (BMC %s, %.2fs)", node.name, outcome.message, where, seconds)
    elif outcome.ok:
        log.info("%s: %s: %s (BMC %s, %.2fs)", node.name, verb, outcome.message, where, seconds)
    else:
        log.warning(
            "%s: %s failed [%s]: %s (%.2fs)",
            node.name,
            verb,
            outcome.code,
            outcome.message,
            seconds,
        )
