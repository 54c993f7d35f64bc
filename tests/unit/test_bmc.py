"""BMC address and credential lookup shared by the bare-metal providers (no BMC needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from citc_power.errors import ConfigError, ProviderError
from citc_power.providers.bmc import BMC_SETTINGS, BmcDirectory
from citc_power.settings import SettingsReader


def directory(settings: dict[str, Any], **kwargs: Any) -> BmcDirectory:
    s = SettingsReader("bmc", settings, BMC_SETTINGS)
    found = BmcDirectory.read(s, default_port=623, **kwargs)
    s.done()
    return found


def secret(path: Path, text: str = "s3cret-pw") -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_manifest_wins_over_addresses_which_win_over_template(tmp_path: Path) -> None:
    own = secret(tmp_path / "bm1.pw", "own-password")
    manifest = tmp_path / "bmc.yaml"
    manifest.write_text(
        "bm1: {address: 10.0.0.1, port: 6230, username: root, password_file: bm1.pw}\n"
    )
    d = directory(
        {
            "address": "{node}-ipmi",
            "addresses": {"bm1": "ignored", "bm2": {"address": "10.0.0.2", "port": 7}},
            "manifest": str(manifest),
            "username": "admin",
            "password_file": str(secret(tmp_path / "all.pw")),
        }
    )

    bm1, bm2, bm3 = (d.endpoint(n) for n in ("bm1", "bm2", "bm3"))

    assert (bm1.address, bm1.port, bm1.username, bm1.password.reveal()) == (
        "10.0.0.1",
        6230,
        "root",
        "own-password",
    )
    assert (bm2.address, bm2.port, bm2.username, bm2.password.reveal()) == (
        "10.0.0.2",
        7,
        "admin",
        "s3cret-pw",
    )
    assert (bm3.address, bm3.port) == ("bm3-ipmi", 623)
    assert own == bm1.password.path  # relative to the manifest's folder


def test_node_outside_map_without_template_is_a_config_failure(tmp_path: Path) -> None:
    d = directory(
        {
            "addresses": {"bm1": "10.0.0.1"},
            "username": "u",
            "password_file": str(secret(tmp_path / "pw")),
        }
    )
    with pytest.raises(ProviderError) as err:
        d.endpoint("bm9")
    assert err.value.code == "config" and "bm9" in str(err.value)


def test_node_address_fixed_template_map_or_unset(tmp_path: Path) -> None:
    common = {
        "address": "{node}-ipmi",
        "username": "u",
        "password_file": str(secret(tmp_path / "pw")),
    }
    assert directory(common).node_address("bm1") is None
    assert directory({**common, "node_address": "127.0.0.1"}).node_address("bm1") == "127.0.0.1"
    assert directory({**common, "node_address": "{node}-ib"}).node_address("bm1") == "bm1-ib"
    assert directory({**common, "node_address": {"bm1": "10.1.0.1"}}).node_address("bm2") is None


def test_password_env_is_removed_from_environment_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CITC_TEST_BMC_PW", "env-password-1")
    d = directory({"address": "{node}.oob", "username": "u", "password_env": "CITC_TEST_BMC_PW"})
    endpoint = d.endpoint("bm1")

    assert "CITC_TEST_BMC_PW" not in os.environ
    assert endpoint.password.reveal() == "env-password-1"
    assert "env-password-1" not in repr(endpoint) and "env-password-1" not in str(endpoint.password)


def test_credentials_missing_for_manifest_node_are_reported(tmp_path: Path) -> None:
    manifest = tmp_path / "bmc.yaml"
    manifest.write_text("bm1: {address: 10.0.0.1}\n")
    with pytest.raises(ConfigError) as err:
        directory({"manifest": str(manifest)})
    assert err.value.problems == [
        (
            "providers.bmc.username: missing, and node bm1 has no username of its own; "
            "set the BMC user name"
        ),
        (
            "providers.bmc.password_file: missing, and node bm1 has no password_file of its own; "
            "set password_file (mode 0600) or password_env"
        ),
    ]


def test_template_without_node_is_allowed_when_the_provider_says_so(tmp_path: Path) -> None:
    pw = str(secret(tmp_path / "pw"))
    shared = directory(
        {"address": "https://bmc.example", "username": "u", "password_file": pw},
        template_needs_node=False,
    )
    assert shared.endpoint("bm1").address == "https://bmc.example"
    with pytest.raises(ConfigError):
        directory({"address": "{nodes}-ipmi", "username": "u", "password_file": pw})


def test_invalid_manifest_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    manifest = tmp_path / "bmc.yaml"
    manifest.write_text("bm1: {address: 10.0.0.1\nbm2: [\n")
    with pytest.raises(ConfigError) as err:
        directory(
            {
                "manifest": str(manifest),
                "username": "u",
                "password_file": str(secret(tmp_path / "pw")),
            }
        )
    assert err.value.problems[0].startswith(f"providers.bmc.manifest: {manifest}: line ")
    assert "is not valid YAML" in err.value.problems[0]
