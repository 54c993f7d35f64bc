"""The pipeline with the real command provider and a Slurm that records its scontrol calls."""
import pytest

from citc_power import config
from citc_power.actions import Runner
from citc_power.errors import ConfigError
from tests.unit.test_slurm import RecordingSlurm

SHOW = "\n".join(f"NodeName=cn{i} AvailableFeatures=shape=s{i} NodeAddr=cn{i} State=IDLE+CLOUD+POWERED_DOWN"
                 for i in range(1, 5))


def make_config(on="echo address=127.0.0.{node_n}", **extra):
    data = {
        "groups": [{"nodes": "cn[1-4]", "provider": "local"}],
        "providers": {"local": {"type": "command", "on": on, "off": "true", **extra}},
    }
    return config.parse(data)


def runner(cfg, **kw):
    slurm = RecordingSlurm(output=SHOW)
    return Runner(cfg, slurm, **kw), slurm


def test_resume_reports_addresses_in_one_update():
    cfg = make_config(on="sh -c 'echo address=127.0.0.$(echo {node} | tr -d cn)'")
    r, slurm = runner(cfg)
    result = r.run("resume", ["cn1", "cn2"])
    assert result.exit_code() == 0 and [o.ok for o in result.outcomes] == [True, True]
    updates = [c for c in slurm.calls if c[1] == "update"]
    assert updates == [("scontrol", "update", "nodename=cn1,cn2", "nodeaddr=127.0.0.1,127.0.0.2",
                        "nodehostname=cn1,cn2")]


def test_resume_marks_failures_down_at_once_grouped_by_reason_and_comments_their_jobs():
    cfg = make_config(on="sh -c 'case {node} in cn1) exit 0;; *) echo code=capacity; echo full >&2; exit 1;; esac'")
    r, slurm = runner(cfg, jobs={"cn2": [7], "cn3": [7, 8]})
    result = r.run("resume", ["cn1", "cn2", "cn3"])
    assert result.exit_code() == 0  # every node done or reported
    down = [c for c in slurm.calls if "state=DOWN" in c]
    assert down == [("scontrol", "update", "nodename=cn[2-3]", "state=DOWN",
                     "reason=citc:capacity on command exited 1: full")]
    comments = [c for c in slurm.calls if c[2].startswith("jobid=")]
    assert [c[2] for c in comments] == ["jobid=7", "jobid=8"]
    assert "could not start node(s) cn[2-3]" in comments[0][3]


def test_unreported_failure_exits_1():
    cfg = make_config(on="false")

    class Broken(RecordingSlurm):
        def run(self, tool, *args):
            if args[0] == "update":
                from citc_power.errors import SlurmError
                raise SlurmError("scontrol update failed: Unable to contact slurm controller")
            return SHOW

    result = Runner(cfg, Broken()).run("resume", ["cn1"])
    assert result.unreported == ["cn1"] and result.exit_code() == 1


def test_node_in_no_group_is_reported_down_at_resume_and_exits_2():
    r, slurm = runner(make_config())
    result = r.run("resume", ["cn1", "gpu1"])
    assert result.exit_code() == 2
    assert any("nodes gpu1 are in no group" in p for p in result.config_problems)
    assert ("scontrol", "update", "nodename=gpu1", "state=DOWN",
            f"reason=citc:config node is in no group of {cfg_path()}") in slurm.calls


def cfg_path():
    return make_config().path


def test_by_hand_a_config_problem_changes_nothing():
    cfg = make_config(timeout="soon")
    r, slurm = runner(cfg, strict_config=True)
    with pytest.raises(ConfigError, match="providers.local.timeout"):
        r.run("start", ["cn1"])
    assert not [c for c in slurm.calls if c[1] == "update"]


def test_provider_crash_still_reports_every_node(monkeypatch):
    from citc_power.providers.command import CommandProvider

    async def boom(self, nodes):
        raise RuntimeError("sdk surprise")

    monkeypatch.setattr(CommandProvider, "power_on", boom)
    r, slurm = runner(make_config())
    result = r.run("resume", ["cn1", "cn2"])
    assert [o.code for o in result.outcomes] == ["error", "error"]
    assert any("state=DOWN" in c for c in slurm.calls)


def test_resume_fail_powers_off_and_returns_nodes_to_service_powered_down():
    r, slurm = runner(make_config())
    result = r.run("resume-fail", ["cn1", "cn2"])
    assert result.exit_code() == 0
    assert ("scontrol", "update", "nodename=cn[1-2]", "state=POWER_DOWN_FORCE") in slurm.calls


def test_dry_run_calls_no_provider_and_changes_nothing():
    r, slurm = runner(make_config(on="false"), dry_run=True)
    result = r.run("start", ["cn1"])
    assert result.outcomes[0].ok and "would use provider local" in result.outcomes[0].message
    assert not [c for c in slurm.calls if c[1] == "update"]


def test_resume_fail_leaves_a_bare_metal_node_down_as_stuck(monkeypatch):
    from citc_power.providers.command import CommandProvider

    monkeypatch.setattr(CommandProvider, "BARE_METAL", True)
    r, slurm = runner(make_config())
    result = r.run("resume-fail", ["cn1"])
    assert [o.code for o in result.outcomes] == ["stuck"]
    down = [c for c in slurm.calls if "state=DOWN" in c]
    assert down and down[0][4].startswith("reason=citc:stuck powered on but never registered")
    assert not any("state=POWER_DOWN_FORCE" in c for c in slurm.calls)


def test_a_nodes_bad_feature_is_reported_down_and_is_a_config_error():
    r, slurm = runner(make_config(on="echo {mac}"))
    result = r.run("resume", ["cn1", "cn2"])
    assert result.exit_code() == 2
    assert result.config_problems == [f"cn{i}: on command uses {{mac}} but node cn{i} has no such feature" for i in (1, 2)]
    downed = sorted(c[2] for c in slurm.calls if "state=DOWN" in c)
    assert downed == ["nodename=cn1", "nodename=cn2"]


def test_power_states_asks_each_provider_and_changes_nothing():
    import asyncio

    from citc_power.providers.base import PowerState

    cfg = make_config(state="sh -c 'case {node} in cn1) echo on;; *) echo off;; esac'")
    r, slurm = runner(cfg)
    states = asyncio.run(r.power_states(["cn1", "cn2"]))
    assert states == {"cn1": PowerState.ON, "cn2": PowerState.OFF}
    assert not [c for c in slurm.calls if c[1] == "update"]
