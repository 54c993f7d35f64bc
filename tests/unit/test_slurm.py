import json

from citc_power import slurm
from citc_power.providers.base import Outcome

LINE = ("NodeName=cn1 Arch=x86_64 CoresPerSocket=1 AvailableFeatures=shape=VM.Standard2.1,ad=1,gpu "
        "ActiveFeatures=shape=VM.Standard2.1,ad=1,gpu NodeAddr=10.1.0.5 NodeHostName=cn1 Port=0 "
        "State=DOWN+CLOUD+POWERED_DOWN ThreadsPerCore=1 Partitions=p "
        "Reason=citc:capacity Out of host capacity [root@2026-11-21T14:00:00] Comment=(null)")


class RecordingSlurm(slurm.Slurm):
    """Records the scontrol argument lists instead of running them."""

    def __init__(self, output: str = "", **kw):
        super().__init__(**kw)
        self.calls: list[tuple[str, ...]] = []
        self.output = output

    def run(self, tool, *args):
        self.calls.append((tool, *args))
        return self.output


def test_record_with_spaces_in_the_reason_is_parsed():
    node = slurm.node_from_record(slurm.parse_record(LINE))
    assert node.name == "cn1"
    assert node.features == {"shape": "VM.Standard2.1", "ad": "1", "gpu": ""}
    assert node.address == "10.1.0.5" and node.hostname is None
    assert node.state == "DOWN+CLOUD+POWERED_DOWN"
    assert node.reason == "citc:capacity Out of host capacity"


def test_read_nodes_uses_one_call_and_keeps_only_the_wanted_nodes():
    other = LINE.replace("cn1", "cn2")
    s = RecordingSlurm(output=LINE + "\n" + other + "\n")
    nodes = s.read_nodes(["cn2", "cn7"])
    assert list(nodes) == ["cn2"]
    assert len(s.calls) == 1


def test_addresses_are_reported_in_batches_of_at_most_batch_size():
    s = RecordingSlurm(batch_size=100)
    outcomes = [Outcome.success(f"n{i:03d}", address=f"10.0.{i // 250}.{i % 250}") for i in range(250)]
    outcomes.append(Outcome.success("noaddr"))  # keeps the address Slurm has
    s.report_addresses(outcomes)
    assert len(s.calls) == 3
    first = dict(a.split("=", 1) for a in s.calls[0][2:])
    assert first["nodename"].split(",")[:2] == ["n000", "n001"]
    assert first["nodeaddr"].split(",")[:2] == ["10.0.0.0", "10.0.0.1"]
    assert len(first["nodename"].split(",")) == 100
    assert all("noaddr" not in " ".join(c) for c in s.calls)


def test_instance_ids_are_sent_only_where_slurm_has_the_field():
    s = RecordingSlurm()
    o = [Outcome.success("a", address="1.1.1.1", instance_id="ocid1.x", instance_type="VM.Standard2.1")]
    s.report_addresses(o)
    assert not any(a.startswith("instanceid=") for a in s.calls[-1])
    s.has_instance_fields = True
    s.report_addresses(o)
    assert "instanceid=ocid1.x" in s.calls[-1] and "instancetype=VM.Standard2.1" in s.calls[-1]


def test_reasons_are_coded_grouped_and_bounded():
    outcomes = [Outcome.failure("a", "capacity", "Out of host capacity"),
                Outcome.failure("b", "capacity", "Out of host capacity"),
                Outcome.failure("c", "auth", "password refused\nby BMC"),
                Outcome.success("d")]
    groups = slurm.outcomes_by_reason(outcomes)
    assert groups == {"citc:capacity Out of host capacity": ["a", "b"], "citc:auth password refused by BMC": ["c"]}
    assert len(slurm.reason_text("error", "x" * 1000)) == slurm.REASON_MAX


def test_resume_file_maps_nodes_to_jobs(tmp_path):
    path = tmp_path / "resume.json"
    path.write_text(json.dumps({"jobs": [{"job_id": 1, "nodes": "cn[1-2]"}, {"job_id": 2, "nodes": "cn2"}],
                                "all_nodes": "cn[1-2]"}))
    assert slurm.read_resume_file(str(path)) == {"cn1": [1], "cn2": [1, 2]}
    path.write_text("{not json")
    assert slurm.read_resume_file(str(path)) == {}
    assert slurm.read_resume_file("") == {}


def test_version_comes_from_slurmctld_or_else_scontrol():
    class Versions(RecordingSlurm):
        def run(self, tool, *args):
            self.calls.append((tool, *args))
            if tool == "slurmctld":
                raise slurm.SlurmError("cannot run /usr/sbin/slurmctld: No such file or directory")
            return "slurm 23.11.4\n"

    s = Versions()
    assert s.version() == (23, 11)
    assert [c[0] for c in s.calls] == ["slurmctld", "scontrol"]
    assert slurm.parse_version("slurm-wlm 22.05.8") == (22, 5)
    assert slurm.parse_version("no version here") is None
