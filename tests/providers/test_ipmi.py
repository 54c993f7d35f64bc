"""The IPMI provider against real OpenIPMI ipmi_sim BMCs on 127.0.0.1 (python-ipmi, RMCP+)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from ipmisim import IpmiSimFarm, free_udp_ports  # tests/providers is on sys.path under pytest

from citc_power.errors import ConfigError
from citc_power.providers.base import AUTH, BMC_ERROR, STUCK, TIMEOUT, UNREACHABLE, Node, PowerState
from citc_power.providers.ipmi import IpmiProvider

if not any((Path(d) / "ipmi_sim").exists() for d in os.get_exec_path()):
    pytest.skip("ipmi_sim is not installed (apt-get install openipmi)", allow_module_level=True)


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[IpmiSimFarm]:
    sims = IpmiSimFarm(tmp_path / "bmcs")
    try:
        yield sims
    finally:
        sims.stop()


@pytest.fixture
def password_file(tmp_path: Path, farm: IpmiSimFarm) -> Path:
    path = tmp_path / "ipmi.pw"
    path.write_text(farm.password + "\n")
    path.chmod(0o600)
    return path


def provider(farm: IpmiSimFarm, password_file: Path, **settings: Any) -> IpmiProvider:
    base = {
        "type": "ipmi",
        "manifest": str(farm.manifest(password_file.parent / "bmc.yaml", password_file)),
        "timeout": 2,
        "verify_timeout": 3,
        "soft_off_timeout": 3,
    }
    base.update(settings)
    return IpmiProvider.from_settings("bmc", base)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def using(p: IpmiProvider, method: str, nodes: list[Node]) -> Any:
    try:
        return await getattr(p, method)(nodes)
    finally:
        await p.close()


def test_sixteen_bmcs_power_on_off_and_cycle_concurrently(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    bmcs = farm.start([f"bm{i:02d}" for i in range(16)])
    nodes = [Node(b.node) for b in bmcs]
    p = provider(farm, password_file, concurrency=16)

    async def scenario() -> tuple[Any, ...]:
        on = await p.power_on(nodes)
        state_on = await p.power_state(nodes)
        off = await p.power_off(nodes)
        for b in bmcs[::2]:
            b.set_power(True)
        cycled = await p.reboot(nodes)
        await p.close()
        return on, state_on, off, cycled

    on, state_on, off, cycled = run(scenario())
    assert [o.node for o in on] == [n.name for n in nodes]
    assert all(o.ok and o.message == "powered on" for o in on), on
    assert state_on == {n.name: PowerState.ON for n in nodes}
    assert all(o.ok and o.message == "shut down" for o in off), off
    assert all(o.ok for o in cycled), cycled
    assert [o.message for o in cycled[:2]] == ["power cycled", "was off, powered on"]
    assert all(b.power == 1 for b in bmcs)
    # since the power off: a cycled node went off and on again; a node that was off only went on
    cycled_calls = since_last(bmcs[0].calls(), "set shutdown 1")
    assert cycled_calls.index("set power 0") < cycled_calls.index("set power 1")
    assert since_last(bmcs[1].calls(), "set shutdown 1").count("set power 0") == 0


def since_last(calls: list[str], marker: str) -> list[str]:
    return calls[len(calls) - calls[::-1].index(marker) :]


def test_power_off_waits_for_soft_shutdown_before_powering_off_hard(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    ignores, slow = farm.start(["deaf", "slow"], on=True)
    ignores.inject("ignore_soft")
    slow.soft_delay(0.5)
    p = provider(farm, password_file, soft_off_timeout=1.5)

    started = time.monotonic()
    outcomes = run(using(p, "power_off", [Node("deaf"), Node("slow")]))

    assert [(o.ok, o.message) for o in outcomes] == [
        (True, "powered off (hard)"),
        (True, "shut down"),
    ]
    assert time.monotonic() - started >= 1.5  # the deaf node was given its soft_off_timeout
    deaf_calls = ignores.calls()
    assert deaf_calls.index("set shutdown 1") < deaf_calls.index("set power 0")
    assert "set power 0" not in slow.calls()  # the slow OS shut itself down in time
    assert ignores.power == 0 and slow.power == 0


def test_many_nodes_ignoring_soft_shutdown_are_powered_off_in_parallel(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    bmcs = farm.start([f"deaf{i:02d}" for i in range(16)], on=True)
    for b in bmcs:
        b.inject("ignore_soft")
    p = provider(farm, password_file, soft_off_timeout=1, concurrency=16)

    started = time.monotonic()
    outcomes = run(using(p, "power_off", [Node(b.node) for b in bmcs]))
    elapsed = time.monotonic() - started

    assert all(o.ok and o.message == "powered off (hard)" for o in outcomes), outcomes
    assert all(b.power == 0 for b in bmcs)
    assert elapsed < 8, f"16 x 1 s soft-off waits took {elapsed:.1f}s: not concurrent"


def test_node_still_on_after_hard_power_off_is_stuck(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    (bmc,) = farm.start(["wedged"], on=True)
    bmc.inject("ignore_soft")
    bmc.inject("stuck")
    p = provider(farm, password_file, soft_off_timeout=0.3, verify_timeout=0.5)

    (outcome,) = run(using(p, "power_off", [Node("wedged")]))

    assert not outcome.ok and outcome.code == STUCK
    assert "after a hard power off" in outcome.message
    assert bmc.calls().count("set power 0") == 1


def test_soft_off_timeout_zero_powers_off_hard_at_once(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    (bmc,) = farm.start(["quick"], on=True)
    p = provider(farm, password_file, soft_off_timeout=0)

    (outcome,) = run(using(p, "power_off", [Node("quick")]))

    assert outcome.ok and outcome.message == "powered off (hard)"
    assert "set shutdown 1" not in bmc.calls() and bmc.power == 0


def test_power_on_of_node_already_on_succeeds_without_switching(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    (bmc,) = farm.start(["up"], on=True)
    p = provider(farm, password_file)

    (outcome,) = run(using(p, "power_on", [Node("up")]))

    assert outcome.ok and outcome.message == "already on"
    assert not [c for c in bmc.calls() if c.startswith("set")]


def test_power_off_of_node_already_off_succeeds(farm: IpmiSimFarm, password_file: Path) -> None:
    (bmc,) = farm.start(["down"], on=False)
    (outcome,) = run(using(provider(farm, password_file), "power_off", [Node("down")]))
    assert outcome.ok and outcome.message == "already off"
    assert not [c for c in bmc.calls() if c.startswith("set")]


def test_reported_address_is_node_address_setting_else_none(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    farm.start(["a1", "a2"])
    fixed = provider(farm, password_file, node_address="127.0.0.1")
    mapped = provider(farm, password_file, node_address={"a1": "10.9.0.1"})

    with_fixed = run(using(fixed, "power_on", [Node("a1"), Node("a2")]))
    with_map = run(using(mapped, "power_on", [Node("a1"), Node("a2")]))

    assert [o.address for o in with_fixed] == ["127.0.0.1", "127.0.0.1"]
    assert [o.address for o in with_map] == ["10.9.0.1", None]


def test_addresses_map_with_ports_and_shared_credentials(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    (bmc,) = farm.start(["m1"])
    p = IpmiProvider.from_settings(
        "bmc",
        {
            "type": "ipmi",
            "addresses": farm.addresses(),
            "username": farm.username,
            "password_file": str(password_file),
            "timeout": 2,
        },
    )
    (outcome,) = run(using(p, "power_on", [Node("m1")]))
    assert outcome.ok and bmc.power == 1


@pytest.mark.parametrize("who", ["wrong password", "unknown user"])
def test_refused_credentials_are_auth_failures(
    farm: IpmiSimFarm, tmp_path: Path, password_file: Path, who: str
) -> None:
    (bmc,) = farm.start(["locked"])
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password" if who == "wrong password" else farm.password)
    wrong.chmod(0o600)
    p = IpmiProvider.from_settings(
        "bmc",
        {
            "type": "ipmi",
            "addresses": farm.addresses(),
            "password_file": str(wrong),
            "timeout": 2,
            "username": farm.username if who == "wrong password" else "nobody",
        },
    )

    (outcome,) = run(using(p, "power_on", [Node("locked")]))

    assert not outcome.ok and outcome.code == AUTH, outcome
    assert "not-the-password" not in outcome.message and farm.password not in outcome.message
    assert bmc.power == 0


def test_nothing_listening_is_unreachable_within_timeout(tmp_path: Path) -> None:
    closed_port, silent_port = free_udp_ports(2)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes packets, never answers
    silent.bind(("127.0.0.1", silent_port))
    pw = tmp_path / "pw"
    pw.write_text("whatever")
    pw.chmod(0o600)
    p = IpmiProvider.from_settings(
        "bmc",
        {
            "type": "ipmi",
            "username": "u",
            "password_file": str(pw),
            "timeout": 0.5,
            "retries": 1,
            "addresses": {
                "closed": {"address": "127.0.0.1", "port": closed_port},
                "silent": {"address": "127.0.0.1", "port": silent_port},
            },
        },
    )
    try:
        started = time.monotonic()
        outcomes = run(using(p, "power_on", [Node("closed"), Node("silent")]))
        elapsed = time.monotonic() - started
    finally:
        silent.close()

    assert [o.code for o in outcomes] == [UNREACHABLE, UNREACHABLE], outcomes
    assert f"127.0.0.1:{silent_port}" in outcomes[1].message
    assert elapsed < 0.5 * 2 + 0.5  # timeout x (retries + 1), plus slack


def test_hung_bmc_times_out_within_configured_time_and_others_finish(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    hung, fine = farm.start(["hung", "fine"])
    hung.inject("hang")  # the chassis script blocks, and with it the whole ipmi_sim
    p = provider(farm, password_file, timeout=0.5, retries=1)

    started = time.monotonic()
    outcomes = run(using(p, "power_on", [Node("hung"), Node("fine")]))
    elapsed = time.monotonic() - started

    # the session opened (ipmi_sim answers that itself), then the chassis request got no answer
    assert not outcomes[0].ok and outcomes[0].code == TIMEOUT, outcomes[0]
    assert outcomes[1].ok and fine.power == 1
    assert elapsed < 0.5 * 2 + 1.0


def test_bmc_failing_the_command_is_bmc_error(farm: IpmiSimFarm, password_file: Path) -> None:
    (bmc,) = farm.start(["broken"])
    bmc.inject("fail")
    (outcome,) = run(using(provider(farm, password_file), "power_on", [Node("broken")]))
    assert not outcome.ok and outcome.code == BMC_ERROR
    assert "0xff" in outcome.message


def test_unreadable_state_is_unknown(farm: IpmiSimFarm, password_file: Path) -> None:
    bad, _ = farm.start(["bad", "good"], on=True)
    bad.inject("fail")
    states = run(using(provider(farm, password_file), "power_state", [Node("bad"), Node("good")]))
    assert states == {"bad": PowerState.UNKNOWN, "good": PowerState.ON}


def test_cipher_suite_falls_back_when_the_bmc_refuses_the_first(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    farm.start(["c1"])
    # ipmi_sim has no SHA-256 suites, so 17 is refused and 3 is used
    fallback = provider(farm, password_file, cipher_suite=17, fallback_cipher_suites=[3])
    only17 = provider(farm, password_file, cipher_suite=17, fallback_cipher_suites=[])

    (ok,) = run(using(fallback, "power_on", [Node("c1")]))
    (refused,) = run(using(only17, "power_on", [Node("c1")]))

    assert ok.ok
    assert not refused.ok and refused.code == BMC_ERROR and "cipher suites 17" in refused.message


def test_node_without_address_fails_alone_with_config(
    farm: IpmiSimFarm, password_file: Path
) -> None:
    farm.start(["known"])
    p = provider(farm, password_file)
    outcomes = run(using(p, "power_on", [Node("unknown"), Node("known")]))
    assert (outcomes[0].ok, outcomes[0].code) == (False, "config")
    assert "unknown" in outcomes[0].message and outcomes[1].ok


def test_password_is_never_in_argv_logs_or_messages(
    farm: IpmiSimFarm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bmcs = farm.start(["s1", "s2", "s3", "s4"], on=True)
    bmcs[0].inject("ignore_soft")
    bmcs[1].inject("fail")
    password = farm.password
    monkeypatch.setenv("CITC_TEST_IPMI_PASSWORD", password)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pyipmi")
    p = IpmiProvider.from_settings(
        "bmc",
        {
            "type": "ipmi",
            "addresses": farm.addresses(),
            "username": farm.username,
            "password_env": "CITC_TEST_IPMI_PASSWORD",
            "timeout": 1,
            "soft_off_timeout": 1,
        },
    )
    assert "CITC_TEST_IPMI_PASSWORD" not in os.environ  # taken out once read

    seen: list[str] = []
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                seen.append(text)
            time.sleep(0.05)

    scanner = threading.Thread(target=scan)
    scanner.start()
    try:
        nodes = [Node(b.node) for b in bmcs]

        async def scenario() -> list[Any]:
            results = [await p.power_off(nodes), await p.power_on(nodes), await p.reboot(nodes)]
            await p.close()
            return results

        results = run(scenario())
    finally:
        done.set()
        scanner.join()

    assert any("ipmi_sim" in s for s in seen), "the scan saw no BMC processes"
    assert not [s for s in seen if password in s]
    assert "ipmi.py" in caplog.text and "pyipmi" in " ".join(r.name for r in caplog.records)
    assert password not in caplog.text
    messages = [o.message for outcomes in results for o in outcomes]
    assert any(m for m in messages) and not [m for m in messages if password in m]
    assert password not in repr(p.__dict__) and password not in repr(p.directory.__dict__)


# -- configuration errors, no BMC needed ---------------------------------------------------


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        IpmiProvider.from_settings(
            "bmc",
            {"type": "ipmi", "address": "{node}-ipmi", "username": "u", "password_file": str(pw)},
        )
    assert err.value.problems == [
        f"providers.bmc.password_file: {pw} is readable by group or others; run: chmod 600 {pw}"
    ]


def test_missing_address_and_unknown_key_are_all_reported(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        IpmiProvider.from_settings(
            "bmc",
            {
                "type": "ipmi",
                "username": "u",
                "password_file": str(pw),
                "adress": "{node}-ipmi",
                "cipher_suite": 4,
            },
        )
    problems = "\n".join(err.value.problems)
    assert "providers.bmc.address: missing; set a template such as '{node}-ipmi'" in problems
    assert "providers.bmc.adress: unknown setting; known ones are" in problems
    assert "providers.bmc.cipher_suite: 4 is not supported" in problems
    assert len(err.value.problems) == 3


def test_address_template_without_node_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        IpmiProvider.from_settings(
            "bmc",
            {
                "type": "ipmi",
                "address": "bmc.example",
                "username": "u",
                "password_env": "CITC_TEST_NOT_SET_ANYWHERE",
            },
        )
    problems = "\n".join(err.value.problems)
    assert "providers.bmc.address: 'bmc.example' has no {node}" in problems
    assert (
        "providers.bmc.password_env: environment variable CITC_TEST_NOT_SET_ANYWHERE is not set"
        in problems
    )


def test_bad_manifest_entries_are_named(tmp_path: Path) -> None:
    pw = tmp_path / "open.pw"
    pw.write_text("x")
    pw.chmod(0o640)
    manifest = tmp_path / "bmc.yaml"
    manifest.write_text(
        "bm1: {address: 10.0.0.1, port: 70000}\n"
        "bm2: {port: 623, colour: blue}\n"
        f"bm3: {{address: 10.0.0.3, password_file: {pw.name}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        IpmiProvider.from_settings(
            "bmc",
            {
                "type": "ipmi",
                "manifest": str(manifest),
                "username": "u",
                "password_env": "CITC_TEST_NOT_SET_ANYWHERE",
            },
        )
    problems = "\n".join(err.value.problems)
    assert f"{manifest}: bm1.port: must be a port number, not 70000" in problems
    assert f"{manifest}: bm2.address: missing" in problems
    assert f"{manifest}: bm2.colour: unknown" in problems
    assert f"{manifest}: bm3.password_file: {pw} is readable by group or others" in problems


def test_timeouts_are_validated_and_kept(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    settings = {"type": "ipmi", "address": "{node}.oob", "username": "u", "password_file": str(pw)}
    p = IpmiProvider.from_settings("bmc", {**settings, "boot_timeout": 900, "soft_off_timeout": 45})
    assert (p.boot_timeout, p.soft_off_timeout, p.cipher_suites) == (900, 45, (3, 17))
    with pytest.raises(ConfigError) as err:
        IpmiProvider.from_settings("bmc", {**settings, "boot_timeout": 0, "timeout": "soon"})
    assert sorted(err.value.problems) == [
        "providers.bmc.boot_timeout: must be at least 1, not 0",
        "providers.bmc.timeout: must be a number, not 'soon'",
    ]
