from pathlib import Path

import pytest

from citc_power import config
from citc_power.errors import ConfigError

GOOD = """
log: {file: /tmp/x.log, level: debug}
groups:
  - {nodes: "cn[1-4]", provider: local}
  - {nodes: "cn[3-8]", provider: other}
providers:
  local: {type: command, on: "true", off: "true"}
  other: {type: command, on: "true", off: "true"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "power.yaml"
    path.write_text(text)
    return path


def test_first_matching_group_wins(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.provider_of("cn3") == "local"
    assert cfg.provider_of("cn5") == "other"
    assert cfg.provider_of("gpu1") is None
    grouped, unknown = cfg.by_provider(["cn1", "cn6", "gpu1"])
    assert grouped == {"local": ["cn1"], "other": ["cn6"]}
    assert unknown == ["gpu1"]
    assert cfg.log.level == "debug" and cfg.log.file == Path("/tmp/x.log")


def test_every_problem_is_reported_with_file_and_key(tmp_path):
    path = write(tmp_path, """
log: {level: loud}
groups:
  - {nodes: "cn[1-3", provider: local}
  - {nodes: "cn[4-5]", provider: nowhere}
providers:
  local: {on: "true"}
extra: 1
""")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    problems = err.value.problems
    text = "\n".join(problems)
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert "log.level: 'loud' is not one of" in text
    assert "groups[0].nodes:" in text
    assert "groups[1].provider: 'nowhere' is not defined under providers" in text
    assert "providers.local.type: missing" in text
    assert "extra: unknown section" in text
    assert len(problems) == 5


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "groups:\n  - {nodes: cn1\nproviders: {}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: invalid YAML .*fix the syntax$"):
        config.load(path)


def test_missing_file_says_how_to_point_elsewhere(tmp_path):
    with pytest.raises(ConfigError, match="config file not found; create it, or pass --config or set CITC_POWER_CONFIG"):
        config.load(tmp_path / "nope.yaml")


def test_lookup_order_is_option_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("CITC_POWER_CONFIG", "/env/power.yaml")
    assert config.find_path("/opt/p.yaml") == Path("/opt/p.yaml")
    assert config.find_path(None) == Path("/env/power.yaml")
    monkeypatch.delenv("CITC_POWER_CONFIG")
    assert config.find_path(None) == Path("/etc/citc/power.yaml")


def test_slurm_section_bounds_batch_size(tmp_path):
    path = write(tmp_path, GOOD + "slurm: {batch_size: 500, timeout: 0}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert any("slurm.batch_size: must be a whole number from 1 to 100" in p for p in err.value.problems)
    assert any("slurm.timeout: must be a positive number" in p for p in err.value.problems)


def test_on_and_off_keys_stay_strings_as_in_yaml_1_2(tmp_path):
    cfg = config.load(write(tmp_path, "groups: [{nodes: 'no,yes', provider: p}]\n"
                                      "providers: {p: {type: command, on: 'a', off: b, flag: true, other: off}}\n"))
    settings = cfg.providers["p"].settings
    assert settings["on"] == "a" and settings["off"] == "b"
    assert settings["flag"] is True and settings["other"] == "off"
    assert cfg.provider_of("no") == "p"
