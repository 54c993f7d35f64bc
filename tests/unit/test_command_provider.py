"""The command provider runs real processes: these tests use small shell scripts."""
import asyncio
import time
from pathlib import Path

import pytest

from citc_power.errors import ConfigError
from citc_power.providers.base import Node, PowerState
from citc_power.providers.command import CommandProvider


def provider(**settings):
    base = {"on": "true", "off": "true"}
    base.update(settings)
    return CommandProvider.from_settings("site", base)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "cmd.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_arguments_are_substituted_without_a_shell(tmp_path):
    log = tmp_path / "args"
    cmd = script(tmp_path, f'printf "%s|" "$@" > {log}.$1\n')
    p = provider(on=f"{cmd} {{node}} '{{shape}} with space' {{address}}")
    nodes = [Node("cn1", features={"shape": "VM.Standard2.1"}, address="10.0.0.5"), Node("cn2", features={"shape": "x;rm -rf /"})]
    outcomes = asyncio.run(p.power_on(nodes))
    assert [o.ok for o in outcomes] == [True, True]
    assert (tmp_path / "args.cn1").read_text() == "cn1|VM.Standard2.1 with space|10.0.0.5|"
    assert (tmp_path / "args.cn2").read_text() == "cn2|x;rm -rf / with space|cn2|"


def test_facts_printed_by_the_command_are_reported(tmp_path):
    cmd = script(tmp_path, 'echo "starting"; echo "address=127.0.3.$2"; echo "instance_id=i-$1"\n')
    outcomes = asyncio.run(provider(on=f"{cmd} {{node}} 7").power_on([Node("cn1")]))
    assert outcomes[0].address == "127.0.3.7"
    assert outcomes[0].instance_id == "i-cn1"


def test_address_template_is_used_when_the_command_prints_none():
    outcomes = asyncio.run(provider(address="{node}.ib", hostname="{node}-h").power_on([Node("cn9")]))
    assert (outcomes[0].address, outcomes[0].hostname) == ("cn9.ib", "cn9-h")


def test_failure_carries_exit_status_last_stderr_line_and_printed_code(tmp_path):
    cmd = script(tmp_path, 'echo "code=capacity"; echo noise >&2; echo "no power budget" >&2; exit 3\n')
    o = asyncio.run(provider(on=cmd).power_on([Node("cn1")]))[0]
    assert not o.ok and o.code == "capacity"
    assert o.message == "on command exited 3: no power budget"


def test_a_hung_command_is_killed_at_the_timeout(tmp_path):
    cmd = script(tmp_path, "sleep 30\n")
    start = time.monotonic()
    o = asyncio.run(provider(on=cmd, timeout=0.5).power_on([Node("cn1")]))[0]
    assert time.monotonic() - start < 5
    assert (o.ok, o.code) == (False, "timeout")


def test_a_daemon_keeping_stdout_open_does_not_block(tmp_path):
    cmd = script(tmp_path, "(sleep 20 &) ; echo address=1.2.3.4\n")
    start = time.monotonic()
    o = asyncio.run(provider(on=cmd, timeout=10).power_on([Node("cn1")]))[0]
    assert o.ok and o.address == "1.2.3.4"
    assert time.monotonic() - start < 5


def test_missing_feature_is_a_config_outcome_for_that_node_only():
    outcomes = asyncio.run(provider(on="echo {mac}").power_on([Node("a", features={"mac": "aa:bb"}), Node("b")]))
    assert outcomes[0].ok
    assert (outcomes[1].code, outcomes[1].message) == ("config", "on command uses {mac} but node b has no such feature")


def test_concurrency_limit_is_honoured(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    cmd = script(tmp_path, f'touch {marks}/$1; n=$(ls {marks} | wc -l); echo $n >> {tmp_path}/peak; sleep 0.3; rm {marks}/$1\n')
    nodes = [Node(f"n{i}") for i in range(8)]
    outcomes = asyncio.run(provider(on=f"{cmd} {{node}}", concurrency=2).power_on(nodes))
    assert all(o.ok for o in outcomes)
    assert max(int(x) for x in (tmp_path / "peak").read_text().split()) == 2


def test_reboot_without_a_reboot_command_runs_off_then_on(tmp_path):
    log = tmp_path / "log"
    p = provider(on=f"sh -c 'echo on {{node}} >> {log}'", off=f"sh -c 'echo off {{node}} >> {log}'")
    outcomes = asyncio.run(p.reboot([Node("cn1")]))
    assert outcomes[0].ok
    assert log.read_text() == "off cn1\non cn1\n"


def test_power_state_reads_the_first_word(tmp_path):
    cmd = script(tmp_path, 'case $1 in a) echo on;; b) echo "off since noon";; *) exit 1;; esac\n')
    states = asyncio.run(provider(state=f"{cmd} {{node}}").power_state([Node("a"), Node("b"), Node("c")]))
    assert states == {"a": PowerState.ON, "b": PowerState.OFF, "c": PowerState.UNKNOWN}


def test_settings_problems_are_collected():
    with pytest.raises(ConfigError) as err:
        CommandProvider.from_settings("site", {"type": "command", "on": "echo 'unclosed", "timeout": "soon", "colour": 1})
    text = "\n".join(err.value.problems)
    assert "providers.site.off: missing" in text
    assert "providers.site.on: cannot parse" in text
    assert "providers.site.timeout: must be a number" in text
    assert "providers.site.colour: unknown setting" in text
