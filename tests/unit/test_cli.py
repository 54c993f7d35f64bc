"""Bad input at the command line: one line on stderr naming what and where, exit 2, no traceback.

These run the installed console scripts as real processes, as slurmctld and admins do.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
GOOD = """
log: {{file: {log}}}
slurm: {{bin_dir: {tmp}/no-slurm}}
groups:
  - {{nodes: "cn[1-4]", provider: local}}
providers:
  local: {{type: command, on: "true", off: "true"}}
"""


def run(*argv, env=None):
    full = dict(os.environ, **(env or {}))
    full.pop("CITC_POWER_CONFIG", None) if env is None or "CITC_POWER_CONFIG" not in env else None
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, env=full,
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "power.yaml"
    path.write_text(GOOD.format(log=tmp_path / "p.log", tmp=tmp_path))
    return path


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("expr", ["cn[1-3", "cn[3-1]", "cn[]", "cn[a-b]"])
def test_malformed_hostlist(conf, expr):
    assert_one_line_error(run("citc-power", "resume", "--config", str(conf), expr), "citc-power: ", expr)


def test_missing_config_names_the_lookup(tmp_path):
    proc = run("startnode", "--config", str(tmp_path / "none.yaml"), "cn1")
    assert_one_line_error(proc, "startnode: ", "none.yaml: config file not found", "--config")


def test_config_from_the_environment_variable(tmp_path):
    proc = run("citc-power", "check", env={"CITC_POWER_CONFIG": str(tmp_path / "env.yaml")})
    assert_one_line_error(proc, "env.yaml: config file not found")


def test_unreadable_config(conf, tmp_path):
    conf.chmod(0o000)
    try:
        if os.geteuid() == 0:  # root reads anything: use a directory instead
            proc = run("citc-power", "check", "--config", str(tmp_path))
            assert_one_line_error(proc, f"{tmp_path}: cannot read config")
        else:
            assert_one_line_error(run("citc-power", "check", "--config", str(conf)), "cannot read config")
    finally:
        conf.chmod(0o600)


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - {nodes: cn1\n")
    assert_one_line_error(run("citc-power", "check", "--config", str(bad)), f"{bad}:", "invalid YAML")


def test_unknown_provider_type(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("groups: [{nodes: cn1, provider: x}]\nproviders: {x: {type: vmware}}\n")
    assert_one_line_error(run("citc-power", "check", "--config", str(bad)),
                          "providers.x.type: unknown provider type 'vmware'; use one of command, ipmi, oci")


def test_missing_required_setting(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("groups: [{nodes: cn1, provider: x}]\nproviders: {x: {type: command, on: 'true'}}\n")
    assert_one_line_error(run("startnode", "--config", str(bad), "cn1"), "providers.x.off: missing")


def test_node_in_no_group_by_hand(conf):
    assert_one_line_error(run("startnode", "--config", str(conf), "gpu7"), "nodes gpu7 are in no group")


def test_secret_file_readable_by_others_is_refused(tmp_path):
    secret = tmp_path / "bmc.pw"
    secret.write_text("hunter2-very-secret\n")
    secret.chmod(0o644)
    bad = tmp_path / "p.yaml"
    bad.write_text(f"groups: [{{nodes: 'bm[1-2]', provider: bmc}}]\n"
                   f"providers: {{bmc: {{type: ipmi, address: '{{node}}-ipmi', username: admin, password_file: {secret}}}}}\n")
    proc = run("citc-power", "check", "--config", str(bad))
    assert_one_line_error(proc, "providers.bmc.password_file", "chmod 600")
    assert "hunter2" not in proc.stderr


def test_every_problem_is_listed_one_per_line(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("groups: [{nodes: 'cn[1-', provider: x}]\nproviders: {x: {type: command}}\nlog: {level: loud}\n")
    proc = run("citc-power", "check", "--config", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    assert all(line.startswith(f"citc-power: {bad}: ") for line in lines)


def test_check_shows_which_provider_powers_each_node(conf):
    proc = run("citc-power", "check", "--config", str(conf), "cn[1-2]")
    assert proc.returncode == 0, proc.stderr
    assert "cn[1-2]: provider local (type command)" in proc.stdout


def test_unknown_option_is_a_usage_error(conf):
    proc = run("citc-power", "resume", "--frobnicate", "cn1")
    assert_one_line_error(proc, "No such option")


def test_the_command_line_imports_no_cloud_or_bmc_sdk(conf):
    code = ("import sys, citc_power.cli, citc_power.actions, citc_power.config; "
            "from citc_power.actions import build_provider; from citc_power import config; "
            f"build_provider(config.load(config.find_path({str(conf)!r})), 'local'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('oci', 'openstack', 'keystoneauth1', 'pyipmi', 'sushy')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_resume_failure_that_cannot_be_reported_exits_1_and_logs_why(conf, tmp_path):
    conf.write_text(conf.read_text().replace('on: "true"', 'on: "false"'))
    proc = run("citc-power", "resume", "--config", str(conf), "cn1")
    assert proc.returncode == 1
    log = (tmp_path / "p.log").read_text()
    assert "could not tell Slurm about cn1" in log


def test_resume_with_a_provider_setting_missing_exits_2_naming_it(tmp_path):
    oci_config = tmp_path / "oci-config"
    oci_config.write_text("[DEFAULT]\nregion=uk-london-1\n")
    oci_config.chmod(0o600)
    bad = tmp_path / "p.yaml"
    bad.write_text(f"log: {{file: {tmp_path}/p.log}}\nslurm: {{bin_dir: {tmp_path}}}\n"
                   "groups: [{nodes: 'vm[1-2]', provider: oci}]\n"
                   "providers: {oci: {type: oci, subnet: ocid1.subnet.x, image: ocid1.image.x, cluster: c1,"
                   f" config_file: {oci_config}}}}}\n")
    scontrol = tmp_path / "scontrol"  # records what would have been told to Slurm
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n")
    scontrol.chmod(0o755)
    proc = run("citc-power", "resume", "--config", str(bad), "vm[1-2]")
    assert_one_line_error(proc, "providers.oci.compartment: missing")
    calls = (tmp_path / "calls").read_text()
    assert "update nodename=vm[1-2] state=DOWN reason=citc:config" in calls
    assert "providers.oci.compartment: missing" in calls
