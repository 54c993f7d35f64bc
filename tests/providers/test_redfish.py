"""The Redfish provider with the real sushy library against the real sushy-emulator.

Every test that talks to a BMC starts its own emulator (about 0.7 s) with a fresh state
directory, so no test sees another's power states. Power changes take effect after a pinned
delay (see sushy_emulator.py) instead of the fake driver's random 1-11 s.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sushy_emulator import SushyEmulator, fake_system, free_port

from citc_power.errors import ConfigError
from citc_power.providers.base import Node, PowerState
from citc_power.providers.redfish import RedfishProvider, bmc_url

USER = "admin"
PASSWORD = "s3cret-Bmc-pw!"
UUIDS = {f"bm{i}": f"5a1e0000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3)}
SYSTEMS_PATH = "/redfish/v1/Systems/{node}"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def three_systems() -> list[dict[str, Any]]:
    """bm1 off, bm2 on, bm3 off."""
    return [fake_system("bm1", UUIDS["bm1"], "Off"), fake_system("bm2", UUIDS["bm2"], "On"),
            fake_system("bm3", UUIDS["bm3"], "Off")]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "bmc.pw"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Callable[..., SushyEmulator]]:
    """Factory: start a sushy-emulator; every one started is stopped after the test."""
    started: list[SushyEmulator] = []

    def start(systems: list[dict[str, Any]] | None = None, **kwargs: Any) -> SushyEmulator:
        root = tmp_path / f"emulator{len(started)}"
        emulator = SushyEmulator(root, systems or three_systems(), {USER: PASSWORD}, **kwargs)
        started.append(emulator)
        return emulator.start()

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(start_emulator: Callable[..., SushyEmulator]) -> SushyEmulator:
    return start_emulator()


@pytest.fixture
def make_provider(password_file: Path) -> Iterator[Callable[..., RedfishProvider]]:
    """Factory: a provider with quick test timings; settings given as keywords win."""
    made: list[RedfishProvider] = []

    def make(url: str, **settings: Any) -> RedfishProvider:
        base: dict[str, Any] = {
            "type": "redfish", "address": url, "system_path": SYSTEMS_PATH, "username": USER,
            "password_file": str(password_file), "poll_interval": 0.1, "power_timeout": 10,
            "soft_off_timeout": 5, "http_retries": 1, "retry_delay": 0.1, "connect_timeout": 2,
            "read_timeout": 5,
        }
        base.update(settings)
        settings = {k: v for k, v in base.items() if v is not None}
        provider = RedfishProvider.from_settings("bmc", settings)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        run(provider.close())


def nodes(*names: str) -> list[Node]:
    return [Node(name) for name in names]


def state(emulator: SushyEmulator, node: str) -> str:
    return emulator.power_state(UUIDS[node], USER, PASSWORD)


# -- power on / off / reboot -----------------------------------------------------------------

def test_power_on_waits_until_the_bmc_reports_on(start_emulator, make_provider):
    # the emulator applies "On" 1-2 s after accepting it, so a provider that did not wait for
    # the state would return while the system still reads Off
    emulator = start_emulator(delays={"default": 2})
    provider = make_provider(emulator.url, node_address="{node}-data")

    [outcome] = run(provider.power_on(nodes("bm1")))

    assert outcome.ok, outcome
    assert outcome.address == "bm1-data"
    assert state(emulator, "bm1") == "On"
    assert emulator.resets() == [(UUIDS["bm1"], "On")]


def test_power_on_of_a_node_already_on_succeeds_without_a_reset(emulator, make_provider):
    provider = make_provider(emulator.url)

    [outcome] = run(provider.power_on(nodes("bm2")))

    assert outcome.ok and outcome.message == "already on"
    assert outcome.address is None  # no node_address configured: Slurm's NodeAddr is left alone
    assert emulator.resets() == []


def test_batch_gives_one_outcome_per_node_in_the_order_given(emulator, make_provider):
    provider = make_provider(emulator.url)

    outcomes = run(provider.power_on(nodes("bm3", "bm9", "bm1")))

    assert [o.node for o in outcomes] == ["bm3", "bm9", "bm1"]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].code == "config" and "/redfish/v1/Systems/bm9" in outcomes[1].message
    assert state(emulator, "bm3") == state(emulator, "bm1") == "On"


def test_power_off_shuts_down_gracefully_when_the_os_obeys(emulator, make_provider):
    provider = make_provider(emulator.url)

    [outcome] = run(provider.power_off(nodes("bm2")))

    assert outcome.ok and outcome.message == "shut down"
    assert emulator.reset_types() == ["GracefulShutdown"]
    assert state(emulator, "bm2") == "Off"


def test_power_off_forces_off_after_soft_off_timeout_when_shutdown_is_ignored(
    start_emulator, make_provider, caplog
):
    emulator = start_emulator(delays={"GracefulShutdown": None, "default": 1})
    provider = make_provider(emulator.url, soft_off_timeout=1)

    with caplog.at_level(logging.WARNING, logger="citc_power"):
        [outcome] = run(provider.power_off(nodes("bm2")))

    assert outcome.ok and outcome.message == "forced off"
    assert emulator.reset_types() == ["GracefulShutdown", "ForceOff"]
    assert state(emulator, "bm2") == "Off"
    assert "bm2: still on 1 s after GracefulShutdown; forcing it off" in caplog.text


def test_power_off_with_zero_soft_off_timeout_forces_off_at_once(emulator, make_provider):
    provider = make_provider(emulator.url, soft_off_timeout=0)

    [outcome] = run(provider.power_off(nodes("bm2")))

    assert outcome.ok
    assert emulator.reset_types() == ["ForceOff"]
    assert state(emulator, "bm2") == "Off"


def test_power_off_of_a_node_already_off_succeeds_without_a_reset(emulator, make_provider):
    provider = make_provider(emulator.url)

    [outcome] = run(provider.power_off(nodes("bm1")))

    assert outcome.ok and outcome.message == "already off"
    assert emulator.resets() == []


def test_reboot_force_restarts_a_node_that_is_on(emulator, make_provider):
    provider = make_provider(emulator.url)

    [outcome] = run(provider.reboot(nodes("bm2")))

    assert outcome.ok and outcome.message == "restarted"
    assert emulator.resets() == [(UUIDS["bm2"], "ForceRestart")]
    assert state(emulator, "bm2") == "On"


def test_reboot_switches_on_a_node_that_is_off(emulator, make_provider):
    provider = make_provider(emulator.url)

    [outcome] = run(provider.reboot(nodes("bm1")))

    assert outcome.ok and outcome.message == "was off; powered on"
    assert emulator.reset_types() == ["On"]
    assert state(emulator, "bm1") == "On"


def test_power_state_reads_each_node_and_unknown_for_a_missing_system(emulator, make_provider):
    provider = make_provider(emulator.url)

    states = run(provider.power_state(nodes("bm1", "bm2", "bm9")))

    assert states == {"bm1": PowerState.OFF, "bm2": PowerState.ON, "bm9": PowerState.UNKNOWN}
    assert emulator.resets() == []


def test_without_system_path_the_only_system_the_bmc_lists_is_used(start_emulator, make_provider):
    emulator = start_emulator([fake_system("bm1", UUIDS["bm1"], "Off")])
    provider = make_provider(emulator.url, system_path=None)

    [outcome] = run(provider.power_on(nodes("bm1")))

    assert outcome.ok, outcome
    assert emulator.resets() == [(UUIDS["bm1"], "On")]
    assert state(emulator, "bm1") == "On"


def test_without_system_path_a_bmc_with_several_systems_is_a_config_failure(emulator,
                                                                           make_provider):
    provider = make_provider(emulator.url, system_path=None)

    [outcome] = run(provider.power_on(nodes("bm1")))

    assert not outcome.ok and outcome.code == "config"
    assert "set system_path" in outcome.message


def test_per_node_addresses_and_system_paths_from_a_manifest(emulator, make_provider, tmp_path):
    manifest = tmp_path / "bmc.yaml"
    manifest.write_text(f"bm1: {{address: '{emulator.url}', node_address: 10.1.0.1}}\n")
    provider = make_provider(None, system_path=None, manifest=str(manifest),
                             system_paths={"bm1": f"/redfish/v1/Systems/{UUIDS['bm1']}"})

    outcomes = run(provider.power_on(nodes("bm1", "bm2")))

    assert outcomes[0].ok and outcomes[0].address == "10.1.0.1"
    assert not outcomes[1].ok and outcomes[1].code == "config"  # bm2 is in no manifest
    assert emulator.resets() == [(UUIDS["bm1"], "On")]


# -- failures --------------------------------------------------------------------------------

def test_wrong_password_is_an_auth_failure(emulator, make_provider, tmp_path):
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    provider = make_provider(emulator.url, password_file=str(wrong))

    outcomes = run(provider.power_on(nodes("bm1", "bm2")))

    assert [o.code for o in outcomes] == ["auth", "auth"]
    assert "HTTP 401" in outcomes[0].message and "not-the-password" not in outcomes[0].message
    assert emulator.resets() == []


def test_nothing_listening_is_unreachable(make_provider):
    provider = make_provider(f"http://127.0.0.1:{free_port()}")

    outcomes = run(provider.power_on(nodes("bm1", "bm2")))

    assert [o.code for o in outcomes] == ["unreachable", "unreachable"]


class SilentBmc:
    """Accepts connections and never answers; counts the connections it was offered."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


def test_a_bmc_that_never_answers_is_a_timeout_tried_once_per_call_for_all_its_nodes(make_provider):
    silent = SilentBmc()
    try:
        provider = make_provider(silent.url, read_timeout=0.5)

        outcomes = run(provider.power_off(nodes("bm1", "bm2", "bm3")))
        connections = len(silent.connections)
    finally:
        silent.close()

    assert [o.code for o in outcomes] == ["timeout"] * 3
    assert "read_timeout" in outcomes[0].message
    assert connections == 1  # bm2 and bm3 did not each wait out read_timeout again


def test_power_on_the_bmc_never_carries_out_is_a_timeout(start_emulator, make_provider):
    emulator = start_emulator(delays={"On": None, "default": 1})
    provider = make_provider(emulator.url, power_timeout=1)

    [outcome] = run(provider.power_on(nodes("bm1")))

    assert not outcome.ok and outcome.code == "timeout"
    assert "still off 1 s after power on" in outcome.message
    assert emulator.reset_types() == ["On"]


def test_a_reset_the_bmc_refuses_is_a_bmc_error(start_emulator, make_provider):
    # a real emulator setting: every GracefulShutdown / ForceOff is answered 400 Bad Request
    emulator = start_emulator(extra_config={"SUSHY_EMULATOR_DISABLE_POWER_OFF": True})
    provider = make_provider(emulator.url)

    [outcome] = run(provider.power_off(nodes("bm2")))

    assert not outcome.ok and outcome.code == "bmc_error"
    assert "HTTP 400" in outcome.message
    assert state(emulator, "bm2") == "On"


def test_a_node_without_any_bmc_address_is_a_config_failure(make_provider):
    provider = make_provider(None, addresses={"bm1": "http://127.0.0.1:1"})

    [outcome] = run(provider.power_on(nodes("bm7")))

    assert not outcome.ok and outcome.code == "config" and "bm7" in outcome.message


# -- secrets ---------------------------------------------------------------------------------

def test_password_is_never_logged_shown_or_passed_on_a_command_line(
    start_emulator, make_provider, caplog, monkeypatch, tmp_path
):
    emulator = start_emulator()
    caplog.set_level(logging.DEBUG)  # every logger: ours, sushy's, urllib3's
    monkeypatch.setenv("CITC_TEST_BMC_PASSWORD", PASSWORD)
    good = make_provider(emulator.url, password_file=None, password_env="CITC_TEST_BMC_PASSWORD")
    assert "CITC_TEST_BMC_PASSWORD" not in os.environ  # taken out, so children never inherit it
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("wrong-" + PASSWORD)
    wrong.chmod(0o600)
    bad = make_provider(emulator.url, password_file=str(wrong), auth="auto")

    outcomes = run(good.power_on(nodes("bm1", "bm2"))) + run(good.power_off(nodes("bm1")))
    outcomes += run(bad.power_on(nodes("bm3")))

    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert "sushy" in caplog.text and "HTTP request: GET" in caplog.text  # sushy's debug lines
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for text in [caplog.text, *(repr(o) for o in outcomes), repr(good.directory.password)]:
        assert PASSWORD not in text and basic not in text
    cmdline = Path(f"/proc/{emulator.process.pid}/cmdline").read_bytes()
    assert emulator.process.poll() is None and b"sushy_emulator.py" in cmdline
    assert PASSWORD.encode() not in cmdline


# -- TLS -------------------------------------------------------------------------------------

def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    localhost = ipaddress.ip_address("127.0.0.1")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(localhost)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_emulator(start_emulator, tmp_path) -> SushyEmulator:
    return start_emulator(tls=_self_signed(tmp_path / "tls", "bmc"))


def test_ca_file_is_trusted_whatever_requests_ca_bundle_says(tls_emulator, make_provider, tmp_path,
                                                             monkeypatch):
    other_ca, _ = _self_signed(tmp_path / "tls", "other")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other_ca))
    provider = make_provider(tls_emulator.url, ca_file=str(tls_emulator.tls[0]))

    [outcome] = run(provider.power_on(nodes("bm1")))

    assert outcome.ok, outcome
    assert tls_emulator.reset_types() == ["On"]


def test_verify_does_not_take_trust_from_requests_ca_bundle(tls_emulator, make_provider,
                                                            monkeypatch):
    # requests would let this variable replace verify=True; the provider must not
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_emulator.tls[0]))
    provider = make_provider(tls_emulator.url)

    [outcome] = run(provider.power_on(nodes("bm1")))

    assert not outcome.ok and outcome.code == "tls"
    assert "ca_file" in outcome.message
    assert tls_emulator.resets() == []


def test_verify_false_accepts_a_self_signed_bmc(tls_emulator, make_provider):
    provider = make_provider(tls_emulator.url, verify=False)

    [outcome] = run(provider.power_off(nodes("bm2")))

    assert outcome.ok, outcome


def test_proxy_variables_are_not_used_for_bmc_traffic(emulator, make_provider, monkeypatch):
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    provider = make_provider(emulator.url)

    [outcome] = run(provider.power_on(nodes("bm1")))

    assert outcome.ok, outcome


# -- settings checked offline ----------------------------------------------------------------

def _problems(settings: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        RedfishProvider.from_settings("bmc", {"type": "redfish", **settings})
    return str(info.value)


def _good(pw: Path, **changes: Any) -> dict[str, Any]:
    settings = {"address": "https://{node}-bmc", "username": USER, "password_file": str(pw)}
    settings.update(changes)
    return {k: v for k, v in settings.items() if v is not None}


def test_every_settings_problem_is_reported_at_once():
    text = _problems({"auth": "kerberos", "soft_off_timeout": -1, "colour": "blue"})

    for fragment in ("providers.bmc.address: missing", "providers.bmc.username: missing",
                     "providers.bmc.password_file: missing",
                     "providers.bmc.auth: 'kerberos' is not one",
                     "providers.bmc.soft_off_timeout: must be at least 0",
                     "providers.bmc.colour: unknown setting"):
        assert fragment in text


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"address": "ftp://{node}-bmc"}, "address: 'ftp://node1-bmc' is not an http(s) URL"),
        ({"address": "https://{node}-bmc/redfish/v1"}, "has a path"),
        ({"address": "https://{rack}-bmc"}, "address: 'https://{rack}-bmc' is not a valid"),
        ({"system_path": "Systems/1"}, "providers.bmc.system_path: 'Systems/1' must be a path"),
        ({"system_path": "/redfish/v1/Systems/{serial}"}, "only {node} may be used"),
        ({"system_paths": {"bm1": 7}}, "providers.bmc.system_paths.bm1: 7 must be a path"),
        ({"verify": False, "ca_file": "/etc/hostname"}, "ca_file: is set but verify is false"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file: /nonexistent/ca.pem does not exist"),
        ({"verify": "yes"}, "providers.bmc.verify: must be true or false"),
        ({"password_env": "BMC_PW"}, "set either password_file or password_env, not both"),
        ({"http_retries": 0}, "http_retries: must be at least 1"),
        ({"concurrency": 0}, "concurrency: must be at least 1"),
    ],
)
def test_bad_settings_are_refused_with_the_key_and_fix(password_file, changes, fragment):
    assert fragment in _problems(_good(password_file, **changes))


def test_url_with_credentials_is_refused_without_echoing_the_password(password_file):
    text = _problems(_good(password_file, address="https://root:hunter2@{node}-bmc"))

    assert "carries credentials; remove them" in text
    assert "hunter2" not in text


def test_group_readable_password_file_is_refused(password_file):
    password_file.chmod(0o640)

    assert f"run: chmod 600 {password_file}" in _problems(_good(password_file))


def test_unset_password_env_is_refused(password_file, monkeypatch):
    monkeypatch.delenv("CITC_TEST_UNSET_PW", raising=False)

    text = _problems(_good(password_file, password_file=None, password_env="CITC_TEST_UNSET_PW"))

    assert "providers.bmc.password_env: environment variable CITC_TEST_UNSET_PW is not set" in text


def test_good_settings_are_accepted_without_contacting_any_bmc(password_file):
    provider = RedfishProvider.from_settings("bmc", {"type": "redfish", **_good(
        password_file, address="{node}-bmc", port=8443, auth="session", soft_off_timeout=0)})

    assert bmc_url(provider.directory.endpoint("bm5")) == "https://bm5-bmc:8443"
    run(provider.close())
