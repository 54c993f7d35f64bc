"""The OpenStack provider with the real openstacksdk over HTTP against the emulated cloud."""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from citc_power.errors import ConfigError
from citc_power.providers import provider_class
from citc_power.providers.base import CAPACITY, CONFIG, ERROR, Node, PowerState
from citc_power.providers.openstack import OpenStackProvider, _retry_delay

sys.path.insert(0, str(Path(__file__).parent))
from openstack_emulator import NO_VALID_HOST, OpenStackEmulator

CLUSTER = "c1"
# openstacksdk warns about its own future changes on every call; nothing here to act on
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenStackEmulator]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    emu = OpenStackEmulator(build_seconds=0.2, rebuild_seconds=0.2, reboot_seconds=0.1).start()
    yield emu
    emu.stop()


@pytest.fixture
def clouds_yaml(emulator: OpenStackEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = emulator.write_clouds_yaml(tmp_path / "clouds.yaml")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    return path


@pytest.fixture
def user_data(tmp_path: Path) -> Path:
    path = tmp_path / "user-data.yaml"
    path.write_text("#cloud-config\nruncmd: [echo hello]\n")
    return path


@pytest.fixture
def make_provider(clouds_yaml: Path, user_data: Path) -> Iterator[Callable[..., OpenStackProvider]]:
    made: list[OpenStackProvider] = []

    def make(**overrides: Any) -> OpenStackProvider:
        settings: dict[str, Any] = {
            "type": "openstack",
            "cloud": "testcloud",
            "cluster": CLUSTER,
            "image": "rocky-9",
            "flavor": "m1.small",
            "network": "cluster-net",
            "keypair": "cluster-key",
            "security_groups": ["slurm"],
            "user_data": str(user_data),
            "poll_interval": 0.05,
            "active_timeout": 10,
            "concurrency": 8,
            "max_requests_per_second": 200,
        }
        settings.update(overrides)
        provider = OpenStackProvider.from_settings("os", {k: v for k, v in settings.items() if v is not None})
        made.append(provider)
        return provider

    yield make
    for provider in made:
        asyncio.run(provider.close())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def by_node(outcomes: list[Any]) -> dict[str, Any]:
    return {o.node: o for o in outcomes}


# ---------------------------------------------------------------------------- power on
@pytest.mark.parametrize("auth", ["application_credential", "password"])
def test_power_on_creates_servers_with_settings_and_feature_overrides(
    emulator: OpenStackEmulator,
    make_provider: Callable[..., OpenStackProvider],
    clouds_yaml: Path,
    user_data: Path,
    auth: str,
) -> None:
    emulator.write_clouds_yaml(clouds_yaml, auth=auth)
    provider = make_provider()
    nodes = [
        Node("cn-1"),
        Node(
            "cn-2",
            features={
                "flavor": "m1.large",
                "image": "ubuntu-22.04",
                "network": "other-net",
                "keypair": "other-key",
            },
        ),
    ]
    outcomes = run(provider.power_on(nodes))

    assert [o.node for o in outcomes] == ["cn-1", "cn-2"]
    assert all(o.ok for o in outcomes), outcomes
    bodies = {c["name"]: c for c in emulator.creates}
    assert bodies["cn-1"]["flavorRef"] == emulator.flavors["m1.small"]["id"]
    assert bodies["cn-1"]["imageRef"] == emulator.image_id("rocky-9")
    assert bodies["cn-1"]["networks"] == [{"uuid": emulator.network_id("cluster-net")}]
    assert bodies["cn-1"]["key_name"] == "cluster-key"
    assert bodies["cn-1"]["metadata"] == {"cluster": CLUSTER}
    assert bodies["cn-1"]["security_groups"] == [{"name": "slurm"}]
    assert base64.b64decode(bodies["cn-1"]["user_data"]).decode() == user_data.read_text()
    assert bodies["cn-2"]["flavorRef"] == emulator.flavors["m1.large"]["id"]
    assert bodies["cn-2"]["imageRef"] == emulator.image_id("ubuntu-22.04")
    assert bodies["cn-2"]["networks"] == [{"uuid": emulator.network_id("other-net")}]
    assert bodies["cn-2"]["key_name"] == "other-key"
    for outcome in outcomes:
        (server,) = emulator.live(outcome.node)
        assert outcome.instance_id == server.id
        assert outcome.address == server.address and outcome.address.startswith("127.0.")
        assert outcome.hostname == outcome.node
    assert by_node(outcomes)["cn-1"].instance_type == "m1.small"
    assert by_node(outcomes)["cn-2"].instance_type == "m1.large"


def test_power_on_boot_from_volume_sends_a_block_device_mapping(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    outcomes = run(make_provider(boot_volume_size=40).power_on([Node("cn-1")]))

    assert outcomes[0].ok, outcomes
    (body,) = emulator.creates
    assert "imageRef" not in body
    assert body["block_device_mapping_v2"] == [
        {
            "boot_index": 0,
            "uuid": emulator.image_id("rocky-9"),
            "source_type": "image",
            "destination_type": "volume",
            "volume_size": 40,
            "delete_on_termination": True,
        }
    ]


def test_power_on_twice_creates_nothing_and_lists_once(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.page_size = 2  # the one list spans several pages
    nodes = [Node(f"cn-{i}") for i in range(1, 6)]
    first = run(make_provider().power_on(nodes))
    lists_before = emulator.count("GET", r"/servers/detail")
    second = run(make_provider().power_on(nodes))

    assert all(o.ok for o in first + second), first + second
    assert len(emulator.creates) == 5
    assert [o.instance_id for o in first] == [o.instance_id for o in second]
    assert [o.address for o in first] == [o.address for o in second]
    # one list of three pages, and nothing else about servers
    assert emulator.count("GET", r"/servers/detail") - lists_before == 3
    assert emulator.count("GET", r"/servers/[0-9a-f-]{36}$") == 0


def test_power_on_ignores_servers_of_another_cluster_with_the_same_name(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    other = emulator.add_server("cn-1", metadata={"cluster": "someone-else"})
    outcomes = run(make_provider().power_on([Node("cn-1")]))

    assert outcomes[0].ok and outcomes[0].instance_id != other.id
    assert len(emulator.creates) == 1
    assert other.id in {s.id for s in emulator.live("cn-1")}


def test_power_on_waits_with_one_list_per_round_not_one_get_per_node(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.build_seconds = 0.5
    nodes = [Node(f"cn-{i:02d}") for i in range(12)]
    outcomes = run(make_provider(poll_interval=0.1).power_on(nodes))

    assert all(o.ok for o in outcomes), outcomes
    lists = emulator.count("GET", r"/servers/detail")
    # 1 list before creating, then one per 0.1 s round until the 0.5 s build is over: a few,
    # where one GET per node per round would be 12 times as many
    assert 2 <= lists <= 12, lists
    assert emulator.count("GET", r"/servers/[0-9a-f-]{36}$") == 0


def test_power_on_starts_a_shutoff_server_instead_of_creating_one(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    server = emulator.add_server("cn-1", status="SHUTOFF", metadata={"cluster": CLUSTER})
    outcomes = run(make_provider().power_on([Node("cn-1")]))

    assert outcomes[0].ok and outcomes[0].instance_id == server.id
    assert emulator.starts == ["cn-1"] and emulator.creates == []


@pytest.mark.parametrize(
    "fault, code",
    [(NO_VALID_HOST, CAPACITY), ("Build of instance aborted: Volume quota exceeded", ERROR)],
)
def test_power_on_reports_the_fault_of_a_server_in_error_and_deletes_it(
    emulator: OpenStackEmulator,
    make_provider: Callable[..., OpenStackProvider],
    fault: str,
    code: str,
) -> None:
    emulator.faults["cn-2"] = fault
    outcomes = by_node(run(make_provider().power_on([Node("cn-1"), Node("cn-2")])))

    assert outcomes["cn-1"].ok
    assert not outcomes["cn-2"].ok
    assert outcomes["cn-2"].code == code
    assert outcomes["cn-2"].message == fault
    assert [name for name, _ in emulator.deletes] == ["cn-2"]
    assert emulator.live("cn-2") == []


def test_power_on_replaces_a_server_left_in_error(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    broken = emulator.add_server("cn-1", status="ERROR", metadata={"cluster": CLUSTER})
    outcomes = run(make_provider().power_on([Node("cn-1")]))

    assert outcomes[0].ok and outcomes[0].instance_id != broken.id
    assert emulator.deletes == [("cn-1", broken.id)]
    assert [s.id for s in emulator.live("cn-1")] == [outcomes[0].instance_id]


@pytest.mark.parametrize("retry_after", [None, 1])
def test_power_on_recovers_from_429_and_makes_each_server_once(
    emulator: OpenStackEmulator,
    make_provider: Callable[..., OpenStackProvider],
    retry_after: int | None,
) -> None:
    emulator.throttle_fraction = 0.3
    emulator.throttle_retry_after = retry_after
    nodes = [Node(f"cn-{i}") for i in range(6)]
    outcomes = run(make_provider(status_code_retries=10).power_on(nodes))

    assert all(o.ok for o in outcomes), outcomes
    assert emulator.throttled > 0
    assert sorted(c["name"] for c in emulator.creates) == [n.name for n in nodes]
    assert all(len(emulator.live(n.name)) == 1 for n in nodes)


def test_429_is_retried_by_the_provider_only_even_if_clouds_yaml_asks_the_sdk(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider], clouds_yaml: Path
) -> None:
    config = yaml.safe_load(clouds_yaml.read_text())
    config["clouds"]["testcloud"]["compute_status_code_retries"] = 5
    clouds_yaml.write_text(yaml.safe_dump(config))
    emulator.throttle_fraction = 1.0
    emulator.throttle_retry_after = 0
    outcomes = run(make_provider(status_code_retries=2).power_on([Node("cn-1"), Node("cn-2")]))

    assert [o.code for o in outcomes] == ["limit", "limit"]
    assert "HTTP 429" in outcomes[0].message
    assert emulator.count("GET", r"/compute/v2\.1/servers/detail") == 3  # 1 + 2 retries


def test_retry_delay_honours_retry_after_with_a_cap_and_backs_off_without() -> None:
    import openstack.exceptions as os_exc
    import requests

    def throttled(headers: dict[str, str]) -> os_exc.HttpException:
        response = requests.Response()
        response.status_code, response.headers = (
            429,
            requests.structures.CaseInsensitiveDict(headers),
        )
        return os_exc.HttpException(response=response)

    assert _retry_delay(throttled({"Retry-After": "3"}), 0) == 3
    assert _retry_delay(throttled({"Retry-After": "3600"}), 0) == 60
    assert [_retry_delay(throttled({}), n) for n in range(3)] == [0.5, 1.0, 2.0]


def test_unknown_image_in_a_feature_fails_only_that_node_naming_the_feature(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    nodes = [Node("cn-1"), Node("cn-2", features={"image": "no-such-image"})]
    outcomes = by_node(run(make_provider().power_on(nodes)))

    assert outcomes["cn-1"].ok
    assert outcomes["cn-2"].code == CONFIG
    assert "feature image=no-such-image of node cn-2" in outcomes["cn-2"].message
    assert [c["name"] for c in emulator.creates] == ["cn-1"]


def test_unknown_flavor_setting_fails_every_node_naming_the_setting(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    outcomes = run(make_provider(flavor="m9.huge").power_on([Node("cn-1"), Node("cn-2")]))

    assert [o.code for o in outcomes] == [CONFIG, CONFIG]
    assert outcomes[0].message.startswith("providers.os.flavor: no flavor 'm9.huge'")
    assert emulator.creates == []


def test_refused_credentials_fail_every_node_with_code_auth(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.credentials["app"] = ("appcred-id-1", "rotated")
    outcomes = run(make_provider().power_on([Node("cn-1"), Node("cn-2")]))

    assert [o.code for o in outcomes] == ["auth", "auth"]
    assert "rotated" not in outcomes[0].message and "appcred-secret-1" not in outcomes[0].message


@pytest.mark.parametrize("auth", ["application_credential", "password"])
def test_no_secret_reaches_the_log_even_at_debug(
    emulator: OpenStackEmulator,
    make_provider: Callable[..., OpenStackProvider],
    clouds_yaml: Path,
    caplog: pytest.LogCaptureFixture,
    auth: str,
) -> None:
    emulator.write_clouds_yaml(clouds_yaml, auth=auth)
    emulator.throttle_fraction = 0.2
    emulator.throttle_retry_after = 0
    caplog.set_level(logging.DEBUG)  # the SDK and keystoneauth log requests at debug
    outcomes = run(make_provider().power_on([Node("cn-1")]))

    assert outcomes[0].ok, outcomes
    assert "keystoneauth" in caplog.text  # the SDK's own debug lines were captured
    for secret in ("secret-password", "appcred-secret-1"):
        assert secret not in caplog.text


# ---------------------------------------------------------------------------- power off
def test_power_off_deletes_servers_in_error_too_and_absent_is_success(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    running = emulator.add_server("cn-1", metadata={"cluster": CLUSTER})
    broken = emulator.add_server("cn-2", status="ERROR", metadata={"cluster": CLUSTER})
    foreign = emulator.add_server("cn-3", metadata={"cluster": "someone-else"})
    outcomes = by_node(run(make_provider().power_off([Node("cn-1"), Node("cn-2"), Node("cn-3")])))

    assert all(o.ok for o in outcomes.values()), outcomes
    assert sorted(emulator.deletes) == sorted([("cn-1", running.id), ("cn-2", broken.id)])
    assert outcomes["cn-3"].message == "no server"
    assert [s.id for s in emulator.live()] == [foreign.id]


def test_power_off_waits_until_the_servers_are_gone_when_asked(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.delete_seconds = 0.4
    for name in ("cn-1", "cn-2"):
        emulator.add_server(name, metadata={"cluster": CLUSTER})
    outcomes = run(make_provider(wait_for_delete=True).power_off([Node("cn-1"), Node("cn-2")]))

    assert all(o.ok for o in outcomes), outcomes
    assert emulator.live() == [] and emulator.servers == {}


def test_power_off_reports_a_timeout_when_deletion_takes_too_long(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.delete_seconds = 30
    emulator.add_server("cn-1", metadata={"cluster": CLUSTER})
    outcomes = run(make_provider(wait_for_delete=True, delete_timeout=1).power_off([Node("cn-1")]))

    assert outcomes[0].code == "timeout"


# ---------------------------------------------------------------------------- reboot
def test_reboot_with_the_same_image_is_a_soft_reboot(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    server = emulator.add_server("cn-1", metadata={"cluster": CLUSTER})
    outcomes = run(make_provider().reboot([Node("cn-1")]))

    assert outcomes[0].ok and outcomes[0].instance_id == server.id
    assert outcomes[0].address == server.address
    assert emulator.reboots == [("cn-1", "SOFT")] and emulator.rebuilds == []


def test_reboot_falls_back_to_hard_when_soft_is_refused(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.refuse_soft_reboot = True
    emulator.add_server("cn-1", metadata={"cluster": CLUSTER})
    outcomes = run(make_provider().reboot([Node("cn-1")]))

    assert outcomes[0].ok
    assert emulator.reboots == [("cn-1", "HARD")]


@pytest.mark.parametrize("source", ["setting", "feature", "reason"])
def test_reboot_rebuilds_only_the_server_whose_target_image_differs(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider], source: str
) -> None:
    old, new = emulator.image_id("rocky-9"), emulator.image_id("rocky-9-new")
    servers = {n: emulator.add_server(n, image_id=old, metadata={"cluster": CLUSTER}) for n in ("cn-1", "cn-2")}
    settings: dict[str, Any] = {}
    if source == "setting":
        settings["image"] = "rocky-9-new"
        nodes = [Node("cn-1"), Node("cn-2", features={"image": "rocky-9"})]
    elif source == "feature":
        nodes = [Node("cn-1", features={"image": "rocky-9-new"}), Node("cn-2")]
    else:
        nodes = [
            Node("cn-1", reason="rebuild image:rocky-9-new"),
            Node("cn-2", reason="Reboot ASAP"),
        ]
    outcomes = by_node(run(make_provider(**settings).reboot(nodes)))

    assert all(o.ok for o in outcomes.values()), outcomes
    assert emulator.rebuilds == [("cn-1", servers["cn-1"].id, new)]
    assert emulator.reboots == [("cn-2", "SOFT")]
    assert emulator.live("cn-1")[0].image_id == new and emulator.live("cn-2")[0].image_id == old
    assert outcomes["cn-1"].instance_id == servers["cn-1"].id
    assert outcomes["cn-1"].address == servers["cn-1"].address


def test_reboot_of_a_node_without_a_server_creates_it(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    outcomes = run(make_provider().reboot([Node("cn-1", reason="rebuild image:ubuntu-22.04")]))

    assert outcomes[0].ok
    assert [c["name"] for c in emulator.creates] == ["cn-1"]
    assert emulator.reboots == [] and emulator.rebuilds == []


def test_reboot_with_an_unknown_image_in_the_reason_fails_with_code_config(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.add_server("cn-1", metadata={"cluster": CLUSTER})
    outcomes = run(make_provider().reboot([Node("cn-1", reason="rebuild image:nope")]))

    assert outcomes[0].code == CONFIG
    assert "reason 'rebuild image:' of node cn-1" in outcomes[0].message
    assert emulator.reboots == [] and emulator.rebuilds == []


# ---------------------------------------------------------------------------- power state
def test_power_state_maps_server_status_with_one_list(
    emulator: OpenStackEmulator, make_provider: Callable[..., OpenStackProvider]
) -> None:
    emulator.add_server("cn-1", metadata={"cluster": CLUSTER})
    emulator.add_server("cn-2", status="SHUTOFF", metadata={"cluster": CLUSTER})
    emulator.add_server("cn-3", status="BUILD", metadata={"cluster": CLUSTER})
    states = run(make_provider().power_state([Node(f"cn-{i}") for i in range(1, 5)]))

    assert states == {
        "cn-1": PowerState.ON,
        "cn-2": PowerState.OFF,
        "cn-3": PowerState.TRANSITION,
        "cn-4": PowerState.ABSENT,
    }
    assert emulator.count("GET", r"/servers") == 1


# ---------------------------------------------------------------------------- settings
def test_bad_settings_raise_one_config_error_naming_every_key(clouds_yaml: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        OpenStackProvider.from_settings(
            "os",
            {
                "type": "openstack",
                "concurrency": "many",
                "wait_for_delete": "yes",
                "user_data": "/nonexistent/user-data",
                "colour": "blue",
            },
        )
    text = str(caught.value)
    for key in ("cloud", "cluster", "concurrency", "wait_for_delete", "user_data", "colour"):
        assert f"providers.os.{key}:" in text, text


@pytest.mark.parametrize("clouds_yaml_exists", [True, False])
def test_unknown_cloud_name_or_no_clouds_yaml_is_a_one_line_config_error(
    clouds_yaml: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clouds_yaml_exists: bool
) -> None:
    if not clouds_yaml_exists:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "nowhere" / "clouds.yaml"))
    with pytest.raises(ConfigError) as caught:
        OpenStackProvider.from_settings("os", {"type": "openstack", "cloud": "prod", "cluster": CLUSTER})
    assert len(caught.value.problems) == 1
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("providers.os.cloud: no cloud 'prod' in clouds.yaml")


def test_clouds_yaml_entry_without_auth_url_is_a_config_error_naming_the_cloud(tmp_path: Path) -> None:
    path = tmp_path / "clouds.yaml"
    entry = {
        "auth_type": "v3applicationcredential",
        "auth": {"application_credential_id": "a", "application_credential_secret": "b"},
    }
    path.write_text(yaml.safe_dump({"clouds": {"site": entry}}))
    with pytest.raises(ConfigError) as caught:
        OpenStackProvider.from_settings("os", {"cloud": "site", "cluster": CLUSTER, "clouds_file": str(path)})
    assert str(caught.value).startswith(f"providers.os.cloud: cloud 'site' in {path} cannot be used:")
    assert "auth_url" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_clouds_file_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        OpenStackProvider.from_settings(
            "os",
            {
                "type": "openstack",
                "cloud": "testcloud",
                "cluster": CLUSTER,
                "clouds_file": str(tmp_path / "clouds.yaml"),
            },
        )
    assert str(caught.value).startswith("providers.os.clouds_file:")


def test_clouds_file_setting_finds_the_cloud_without_environment(
    emulator: OpenStackEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    path = emulator.write_clouds_yaml(tmp_path / "site-clouds.yaml", cloud="site")
    provider = OpenStackProvider.from_settings(
        "os",
        {
            "type": "openstack",
            "cloud": "site",
            "cluster": CLUSTER,
            "clouds_file": str(path),
            "image": "rocky-9",
            "flavor": "m1.small",
            "poll_interval": 0.05,
        },
    )
    try:
        outcomes = run(provider.power_on([Node("cn-1")]))
    finally:
        run(provider.close())
    assert outcomes[0].ok and outcomes[0].address == emulator.live("cn-1")[0].address


def test_registry_resolves_the_openstack_type() -> None:
    assert provider_class("openstack") is OpenStackProvider
