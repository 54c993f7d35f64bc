"""The OCI provider against the OCI API emulator, through the real oci SDK over HTTP.

Every request is signed by the SDK with a fresh RSA key and the emulator verifies the
signature with the public half, so nothing of the SDK is mocked.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

pytest.importorskip("oci")

from oci_emulator import OciEmulator, write_oci_config  # noqa: E402

from citc_power.errors import ConfigError, ProviderError  # noqa: E402
from citc_power.providers.base import (  # noqa: E402
    AUTH, CAPACITY, CONFIG, LIMIT, TIMEOUT, Node, Outcome, PowerState,
)
from citc_power.providers.oci import OciProvider, Shape  # noqa: E402

COMPARTMENT = "ocid1.compartment.oc1..emu"
SUBNET = "ocid1.subnet.oc1..emu"
IMAGE = "ocid1.image.oc1..citc"
NEW_IMAGE = "ocid1.image.oc1..citc2"
CLUSTER = "emu"
FLEX = "VM.Standard.E4.Flex.2.16"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """An OCI config file and the public key its API key pairs with."""
    return write_oci_config(tmp_path_factory.mktemp("oci"))


@pytest.fixture
def emu(creds: tuple[Path, Any]) -> Iterator[OciEmulator]:
    emulator = OciEmulator(
        provision_delay=0.3, terminate_delay=0.2, page_size=20, public_key=creds[1],
        images={IMAGE: "citc-compute", NEW_IMAGE: "citc-compute-2"},
        subnets=[{"id": SUBNET, "vcnId": "ocid1.vcn.oc1..emu", "compartmentId": COMPARTMENT,
                  "freeformTags": {"cluster": CLUSTER}, "cidrBlock": "127.0.0.0/8"}],
    )
    emulator.start()
    yield emulator
    emulator.stop()


def settings(emu: OciEmulator, creds: tuple[Path, Any], **overrides: Any) -> dict[str, Any]:
    values = {
        "type": "oci", "config_file": str(creds[0]), "compartment": COMPARTMENT, "subnet": SUBNET,
        "image": IMAGE, "cluster": CLUSTER, "endpoint": emu.url, "poll_interval": 0.1,
        "max_requests_per_second": 200, "concurrency": 16, "launch_timeout": 30,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


@pytest.fixture
def make(emu: OciEmulator, creds: tuple[Path, Any]) -> Iterator[Callable[..., OciProvider]]:
    """Factory of providers pointed at the emulator; closed after the test."""
    made: list[OciProvider] = []

    def factory(**overrides: Any) -> OciProvider:
        provider = OciProvider.from_settings("oci", settings(emu, creds, **overrides))
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        asyncio.run(provider.close())


def nodes(count: int, prefix: str = "cn", **features: str) -> list[Node]:
    feats = {"shape": FLEX, "ad": "1", **features}
    return [Node(f"{prefix}{i:03d}", feats) for i in range(1, count + 1)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_up_once(emu: OciEmulator, outcomes: list[Outcome]) -> None:
    """Every outcome succeeded with the emulator's address and each node has one instance."""
    per_name = emu.instances_per_name()
    for outcome in outcomes:
        assert outcome.ok, outcome
        assert per_name[outcome.node] == 1, f"{outcome.node} has {per_name[outcome.node]} instances"
        assert outcome.instance_id is not None
        assert outcome.address == emu.private_ip(outcome.instance_id)


# ------------------------------------------------------------------------- power on
def test_fifty_nodes_come_up_exactly_once_despite_30_percent_throttling(emu, make):
    emu.faults.throttle_fraction = 0.3
    batch = nodes(50)
    outcomes = run(make().power_on(batch))
    assert [o.node for o in outcomes] == [n.name for n in batch]
    assert_up_once(emu, outcomes)
    assert emu.injected["throttle"] >= 10  # the throttling really happened
    assert emu.received["GetInstance"] == 0  # waiting is batched, never per node


def test_resume_run_twice_launches_no_new_instance(emu, make):
    batch = nodes(12)
    first = run(make().power_on(batch))
    launches = emu.received["LaunchInstance"]
    second = run(make().power_on(batch))
    assert emu.received["LaunchInstance"] == launches == 12
    assert [(o.instance_id, o.address) for o in second] == [(o.instance_id, o.address) for o in first]
    assert_up_once(emu, second)


def test_one_list_finds_existing_instances_for_the_whole_batch(emu, make):
    batch = nodes(30)
    run(make().power_on(batch))
    before = emu.received["ListInstances"]
    run(make(poll_interval=5).power_on(batch))
    # 30 nodes on pages of 20: one paginated listing (2 pages); all are RUNNING already, so
    # their addresses are read at once, without a poll round
    assert emu.received["ListInstances"] - before == 2
    assert emu.received["LaunchInstance"] == 30


def test_launch_whose_answer_was_lost_is_retried_without_a_second_instance(emu, make):
    emu.faults.operations = {"LaunchInstance"}
    emu.faults.reset_after_fraction = 0.5  # instance made, answer lost: the client sees a reset
    outcomes = run(make().power_on(nodes(20)))
    assert_up_once(emu, outcomes)
    assert emu.injected["reset_after"] >= 3
    assert emu.replays == emu.injected["reset_after"]  # every retry was answered from its token


def test_connection_resets_and_server_errors_are_retried(emu, make):
    emu.faults.reset_fraction = 0.15
    emu.faults.error_fraction = 0.15
    outcomes = run(make().power_on(nodes(20)))
    assert_up_once(emu, outcomes)
    assert emu.injected["reset"] and emu.injected["error"]


CHILD = """
import asyncio, json, sys
from citc_power.providers.base import Node
from citc_power.providers.oci import OciProvider
settings = json.loads(open(sys.argv[1]).read())
names = [f"cn{i:03d}" for i in range(1, int(sys.argv[2]) + 1)]
provider = OciProvider.from_settings("oci", settings)
outcomes = asyncio.run(provider.power_on([Node(n, {"shape": "%s", "ad": "1"}) for n in names]))
print(json.dumps([o.__dict__ for o in outcomes]))
""" % FLEX


@pytest.fixture
def run_child(emu: OciEmulator, creds: Any, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``citc-power``'s provider in a child process: power_on of cn001..cnNNN."""
    children: list[subprocess.Popen] = []

    def start(count: int, **overrides: Any) -> subprocess.Popen:
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(settings(emu, creds, **overrides)))
        env = dict(os.environ, NO_PROXY="127.0.0.1,localhost")
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(count)],
                                 stdout=subprocess.PIPE, text=True, env=env)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate()


def outcomes_of(child: subprocess.Popen) -> list[Outcome]:
    out, _ = child.communicate(timeout=60)
    return [Outcome(**o) for o in json.loads(out)]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill_part_way(child: subprocess.Popen, condition: Callable[[], bool]) -> None:
    try:
        wait_for(condition, 30, "the first resume to launch some instances")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)


def test_resume_killed_part_way_and_run_again_makes_no_duplicate(emu, run_child):
    emu.faults.latency = 0.02
    child = run_child(40, max_requests_per_second=20)
    kill_part_way(child, lambda: len(emu.instances) >= 10)
    launched = len(emu.instances)
    assert 10 <= launched < 40, "the kill came too late to prove anything"
    emu.faults.latency = 0
    outcomes = outcomes_of(run_child(40))
    assert len(outcomes) == 40
    assert_up_once(emu, outcomes)


def test_rerun_after_kill_reuses_launch_tokens_while_listing_lags(emu, run_child):
    # The first run's launches reach OCI but their answers are lost; the re-run cannot see
    # those instances yet (ListInstances lags), so only the retry token prevents duplicates.
    started = time.monotonic()
    emu.faults.operations = {"LaunchInstance"}
    emu.faults.reset_after_fraction = 1.0
    kill_part_way(run_child(10), lambda: len(emu.instances) >= 10)
    emu.faults.reset_after_fraction = 0
    emu.faults.list_lag = time.monotonic() - started + 10  # hides them for the next 10 s
    replays = emu.replays
    outcomes = outcomes_of(run_child(10))
    assert_up_once(emu, outcomes)
    assert emu.replays - replays == 10  # every launch of the re-run found its instance by token


def test_capacity_errors_fail_those_nodes_at_once_and_the_rest_come_up(emu, make):
    batch = nodes(10)
    emu.faults.capacity_nodes = {"cn003", "cn007"}
    outcomes = {o.node: o for o in run(make().power_on(batch))}
    for name in ("cn003", "cn007"):
        assert not outcomes[name].ok
        assert outcomes[name].code == CAPACITY
        assert "Out of host capacity" in outcomes[name].message
    assert_up_once(emu, [o for n, o in outcomes.items() if n not in ("cn003", "cn007")])
    assert emu.received["LaunchInstance"] == 10  # capacity errors were not retried


@pytest.mark.parametrize("code", ["LimitExceeded", "QuotaExceeded"])
def test_service_limit_and_quota_errors_give_limit_outcomes(emu, make, code):
    emu.faults.limit_nodes = {"cn002"}
    emu.faults.limit_code = code
    outcomes = run(make().power_on(nodes(3)))
    assert [(o.node, o.ok, o.code) for o in outcomes] == [
        ("cn001", True, ""), ("cn002", False, LIMIT), ("cn003", True, "")]
    assert emu.received["LaunchInstance"] == 3


def test_slurm_node_address_is_reused_as_private_ip(emu, make):
    batch = [Node("cn001", {"shape": FLEX, "ad": "1"}, address="127.0.9.9"),
             Node("cn002", {"shape": FLEX, "ad": "1"}, address="cn002"),
             Node("cn003", {"shape": FLEX, "ad": "1"})]
    outcomes = run(make().power_on(batch))
    assert_up_once(emu, outcomes)
    assert outcomes[0].address == "127.0.9.9"
    requested = {b["displayName"]: b["createVnicDetails"].get("privateIp") for b in emu.launch_bodies.values()}
    assert requested == {"cn001": "127.0.9.9", "cn002": None, "cn003": None}


def test_launch_request_carries_flex_shape_config_tags_metadata_and_ad_name(emu, creds, make, tmp_path):
    user_data = tmp_path / "cloud-init.yaml"
    user_data.write_text("#cloud-config\nruncmd: [echo hi]\n")
    keys = tmp_path / "keys.pub"
    keys.write_text("ssh-ed25519 AAAAC3Nza test@example\n")
    provider = make(user_data_file=str(user_data), ssh_authorized_keys_file=str(keys))
    batch = [Node("cn001", {"shape": "VM.Standard.E4.Flex.16.128", "ad": "2"}),
             Node("cn002", {"shape": "VM.Standard2.1", "ad": "Uocm:EMU-AD-3"})]
    outcomes = run(provider.power_on(batch))
    assert_up_once(emu, outcomes)
    bodies = {b["displayName"]: b for b in emu.launch_bodies.values()}
    flex, fixed = bodies["cn001"], bodies["cn002"]
    assert flex["shape"] == "VM.Standard.E4.Flex"
    assert flex["shapeConfig"] == {"ocpus": 16.0, "memoryInGBs": 128.0}
    assert fixed["shape"] == "VM.Standard2.1" and not fixed.get("shapeConfig")
    assert flex["availabilityDomain"] == "Uocm:EMU-AD-2"
    assert fixed["availabilityDomain"] == "Uocm:EMU-AD-3"
    assert flex["freeformTags"] == {"cluster": CLUSTER, "node": "cn001"}
    assert flex["createVnicDetails"]["hostnameLabel"] == "cn001"
    assert flex["createVnicDetails"]["subnetId"] == SUBNET
    assert base64.b64decode(flex["metadata"]["user_data"]) == user_data.read_bytes()
    assert flex["metadata"]["ssh_authorized_keys"] == "ssh-ed25519 AAAAC3Nza test@example"
    assert outcomes[0].instance_type == "VM.Standard.E4.Flex"
    assert outcomes[0].hostname == "cn001"
    assert emu.received["ListAvailabilityDomains"] == 1


def test_image_and_subnet_are_looked_up_by_name_and_cluster_tag(emu, make):
    provider = make(image="citc-compute-2", subnet=None, vcn="ocid1.vcn.oc1..emu")
    outcomes = run(provider.power_on(nodes(5)))
    assert_up_once(emu, outcomes)
    assert {b["sourceDetails"]["imageId"] for b in emu.launch_bodies.values()} == {NEW_IMAGE}
    assert {b["createVnicDetails"]["subnetId"] for b in emu.launch_bodies.values()} == {SUBNET}
    assert emu.received["ListImages"] == 1 and emu.received["ListSubnets"] == 1


@pytest.mark.parametrize("features", [
    {"shape": "VM.Standard.E4.Flex.16", "ad": "1"},
    {"shape": "VM.Standard.E4.Flex", "ad": "1"},
    {"shape": "t2.micro", "ad": "1"},
    {"shape": FLEX},
    {"shape": FLEX, "ad": "7"},
])
def test_bad_node_features_give_config_outcome_without_launching(emu, make, features):
    outcomes = run(make().power_on([Node("cn001", features), *nodes(1, prefix="ok")]))
    assert (outcomes[0].ok, outcomes[0].code) == (False, CONFIG)
    assert outcomes[1].ok
    assert emu.received["LaunchInstance"] == 1


def test_stopped_instance_is_started_not_replaced(emu, make):
    old = emu.add_instance("cn001", state="STOPPED", compartmentId=COMPARTMENT)
    outcomes = run(make().power_on(nodes(1)))
    assert outcomes[0].ok and outcomes[0].instance_id == old["id"]
    assert emu.handled["InstanceAction"] == 1
    assert emu.received["LaunchInstance"] == 0


def test_terminating_instance_is_waited_out_then_replaced(emu, make):
    old = emu.add_instance("cn001", state="RUNNING", compartmentId=COMPARTMENT)
    with emu._lock:
        emu.terminate(old["id"])
    outcomes = run(make().power_on(nodes(1)))
    assert outcomes[0].ok and outcomes[0].instance_id != old["id"]
    assert [i["id"] for i in emu.live_instances("cn001")] == [outcomes[0].instance_id]


def test_instances_of_other_clusters_are_left_alone(emu, make):
    other = emu.add_instance("cn001", state="RUNNING", compartmentId=COMPARTMENT,
                             freeformTags={"cluster": "another", "node": "cn001"})
    outcomes = run(make().power_on(nodes(1)))
    assert outcomes[0].ok and outcomes[0].instance_id != other["id"]
    run(make().power_off(nodes(1)))
    states = {i["id"]: i["lifecycleState"] for i in emu.live_instances("cn001")}
    assert states == {other["id"]: "RUNNING", outcomes[0].instance_id: "TERMINATING"}


def test_retry_after_is_honoured(emu, make):
    emu.faults.operations = {"LaunchInstance"}
    emu.faults.throttle_first = 1
    emu.faults.retry_after = 1
    outcomes = run(make().power_on(nodes(1)))
    assert outcomes[0].ok
    launches = [(t, status) for t, op, status in emu.log if op == "LaunchInstance"]
    assert [s for _, s in launches] == [429, 200]
    assert launches[1][0] - launches[0][0] >= 1.0


def test_node_that_never_runs_times_out_with_its_instance_id(emu, make):
    emu.provision_delay = 3600
    outcomes = run(make(launch_timeout=1.5).power_on(nodes(2)))
    assert [(o.ok, o.code) for o in outcomes] == [(False, TIMEOUT)] * 2
    assert {o.instance_id for o in outcomes} == {i["id"] for i in emu.live_instances()}


def test_requests_still_queued_at_the_deadline_are_not_sent(emu, make):
    emu.provision_delay = 3600
    outcomes = run(make(max_requests_per_second=4, launch_timeout=1.5).power_on(nodes(20)))
    assert all(o.code == TIMEOUT for o in outcomes)
    launched = [o for o in outcomes if o.instance_id]
    unsent = [o for o in outcomes if not o.instance_id]
    assert len(unsent) >= 10 and all("LaunchInstance not sent" in o.message for o in unsent)
    assert all("did not come up" in o.message for o in launched)
    assert emu.received["LaunchInstance"] == len(emu.instances) == len(launched)


def test_refused_signature_gives_auth_outcomes(emu, make, tmp_path):
    _, other_public_key = write_oci_config(tmp_path)  # the emulator now expects another key
    emu.public_key = other_public_key
    outcomes = run(make().power_on(nodes(3)))
    assert [(o.ok, o.code) for o in outcomes] == [(False, AUTH)] * 3


def test_every_log_line_names_its_nodes_and_never_the_key(emu, creds, make, caplog):
    emu.faults.throttle_fraction = 0.3
    emu.faults.reset_fraction = 0.1
    emu.faults.capacity_nodes = {"cn002"}
    caplog.set_level(logging.DEBUG, logger="citc_power")
    run(make().power_on(nodes(8)))
    records = [r for r in caplog.records if r.name.startswith("citc_power.providers.oci")]
    assert any("retry" in r.getMessage() for r in records)  # the faults were logged
    for record in records:
        assert re.search(r"\bcn(\d{3}|\[[\d,-]+\])", record.getMessage()), record.getMessage()
    key = Path(creds[0].read_text().split("key_file=")[1].strip()).read_text()
    assert not any(key.splitlines()[1] in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------- power off, state, reboot
def test_power_off_terminates_every_instance_and_absent_is_success(emu, make):
    run(make().power_on(nodes(3)))
    outcomes = run(make().power_off(nodes(4)))
    assert all(o.ok for o in outcomes), outcomes
    assert outcomes[3].instance_id is None and "no instance" in outcomes[3].message
    assert emu.handled["TerminateInstance"] == 3
    assert all(i["lifecycleState"] == "TERMINATING" for i in emu.live_instances())
    again = run(make().power_off(nodes(4)))
    assert all(o.ok for o in again) and emu.received["TerminateInstance"] == 3


def test_power_off_failure_names_the_instance(emu, make):
    run(make().power_on(nodes(1)))
    emu.faults.operations = {"TerminateInstance"}
    emu.faults.throttle_fraction = 1.0
    outcomes = run(make(launch_timeout=1).power_off(nodes(1)))
    instance_id = emu.live_instances("cn001")[0]["id"]
    assert not outcomes[0].ok and instance_id in outcomes[0].message
    assert outcomes[0].instance_id == instance_id


def test_power_state_maps_lifecycle_states(emu, make):
    emu.add_instance("cn001", state="RUNNING", compartmentId=COMPARTMENT)
    emu.add_instance("cn002", state="STOPPED", compartmentId=COMPARTMENT)
    emu.add_instance("cn003", state="PROVISIONING", compartmentId=COMPARTMENT)
    states = run(make().power_state(nodes(4)))
    assert states == {"cn001": PowerState.ON, "cn002": PowerState.OFF,
                      "cn003": PowerState.TRANSITION, "cn004": PowerState.ABSENT}


def test_reboot_soft_resets_same_image_rebuilds_new_image_and_starts_absent(emu, make):
    kept = emu.add_instance("cn001", state="RUNNING", compartmentId=COMPARTMENT, imageId=IMAGE)
    old = emu.add_instance("cn002", state="RUNNING", compartmentId=COMPARTMENT, imageId=IMAGE)
    batch = [Node("cn001", {"shape": FLEX, "ad": "1"}),
             Node("cn002", {"shape": FLEX, "ad": "1", "image": NEW_IMAGE}),
             Node("cn003", {"shape": FLEX, "ad": "1"})]
    outcomes = run(make().reboot(batch))
    assert all(o.ok for o in outcomes), outcomes
    assert outcomes[0].instance_id == kept["id"] and emu.handled["InstanceAction"] == 1
    assert outcomes[1].instance_id != old["id"]
    assert emu.live_instances("cn002")[0]["imageId"] == NEW_IMAGE
    assert len(emu.live_instances("cn002")) == 1
    assert outcomes[2].address and len(emu.live_instances("cn003")) == 1


def test_power_cycle_launches_a_new_instance_each_time(emu, make):
    first = run(make().power_on(nodes(1)))[0]
    run(make().power_off(nodes(1)))
    second = run(make().power_on(nodes(1)))[0]  # waits out TERMINATING, then launches
    run(make().power_off(nodes(1)))
    wait_for(lambda: not emu.live_instances(), 5, "termination")
    third = run(make().power_on(nodes(1)))[0]
    assert len({first.instance_id, second.instance_id, third.instance_id}) == 3
    assert len(emu.live_instances("cn001")) == 1


# ------------------------------------------------------------------------- settings
def test_missing_settings_are_all_reported_at_once(emu, creds):
    values = settings(emu, creds, compartment=None, subnet=None, image=None, cluster=None)
    with pytest.raises(ConfigError) as err:
        OciProvider.from_settings("oci", values)
    text = str(err.value)
    for key in ("compartment", "subnet", "image", "cluster"):
        assert f"providers.oci.{key}: missing" in text


@pytest.mark.parametrize("key,value,words", [
    ("compartment", "my-compartment", "is not an OCID"),
    ("subnet", "ocid1.vcn.oc1..x", "is not an OCID"),
    ("endpoint", "localhost:8080", "is not a URL"),
    ("max_requests_per_second", 0, "at least"),
    ("auth", "password", "is not one of"),
    ("colour", "blue", "unknown setting"),
])
def test_bad_setting_is_named(emu, creds, key, value, words):
    with pytest.raises(ConfigError) as err:
        OciProvider.from_settings("oci", settings(emu, creds, **{key: value}))
    assert f"providers.oci.{key}:" in str(err.value) and words in str(err.value)


def test_key_files_readable_by_others_are_refused(emu, creds, tmp_path):
    config = tmp_path / "config"
    config.write_text(creds[0].read_text())
    config.chmod(0o644)
    key = tmp_path / "key.pem"
    key.write_text("not shown")
    key.chmod(0o640)
    with pytest.raises(ConfigError) as err:
        OciProvider.from_settings("oci", settings(emu, creds, config_file=str(config), key_file=str(key)))
    text = str(err.value)
    assert f"providers.oci.config_file: {config} is readable by group or others" in text
    assert f"providers.oci.key_file: {key} is readable by group or others" in text
    assert "not shown" not in text


def test_unreadable_or_missing_key_file_is_refused(emu, creds, tmp_path):
    directory = tmp_path / "key.pem"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError) as err:
        OciProvider.from_settings("oci", settings(emu, creds, key_file=str(directory)))
    assert f"providers.oci.key_file: {directory} cannot be read" in str(err.value)
    with pytest.raises(ConfigError) as err:
        OciProvider.from_settings("oci", settings(emu, creds, config_file=str(tmp_path / "nope")))
    assert "providers.oci.config_file:" in str(err.value) and "does not exist" in str(err.value)


def test_profile_key_readable_by_others_stops_the_call(emu, creds, tmp_path):
    key = tmp_path / "open.pem"
    key.write_bytes(Path(creds[0].read_text().split("key_file=")[1].strip()).read_bytes())
    key.chmod(0o644)
    config = tmp_path / "config"
    config.write_text(creds[0].read_text().replace(creds[0].read_text().split("key_file=")[1].strip(), str(key)))
    config.chmod(0o600)
    provider = OciProvider.from_settings("oci", settings(emu, creds, config_file=str(config)))
    with pytest.raises(ProviderError) as err:
        run(provider.power_on(nodes(1)))
    assert err.value.code == CONFIG and str(key) in str(err.value) and "chmod 600" in str(err.value)
    assert "PRIVATE KEY" not in str(err.value)
    assert emu.received["LaunchInstance"] == 0


def test_unknown_profile_stops_the_call_with_a_config_error(emu, make):
    with pytest.raises(ProviderError) as err:
        run(make(profile="NOPE").power_on(nodes(1)))
    assert err.value.code == CONFIG and "NOPE" in str(err.value)


def test_from_settings_reads_nothing_but_local_files(emu, creds):
    before = sum(emu.received.values())
    OciProvider.from_settings("oci", settings(emu, creds))
    assert sum(emu.received.values()) == before


@pytest.mark.parametrize("text,shape", [
    ("VM.Standard.E4.Flex.16.128", Shape("VM.Standard.E4.Flex", 16, 128)),
    ("VM.Standard.A1.Flex.4.24", Shape("VM.Standard.A1.Flex", 4, 24)),
    ("BM.Standard.E3.128", Shape("BM.Standard.E3.128")),
    ("VM.GPU3.1", Shape("VM.GPU3.1")),
])
def test_shape_names_parse(text, shape):
    assert Shape.parse(text) == shape
