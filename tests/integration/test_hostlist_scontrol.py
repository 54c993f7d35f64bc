"""citc_power.hostlist against the real ``scontrol show hostnames`` / ``show hostlist``.

Thousands of seeded random expressions and name lists go through one interactive scontrol
process (commands on stdin), so the whole file runs in about a second. Set HOSTLIST_SEED to try
other random cases; a failure prints the seed and the first differences.
"""
from __future__ import annotations

import concurrent.futures
import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Callable, TypeVar

import pytest

from citc_power.errors import HostlistError
from citc_power import hostlist
from citc_power.hostlist import collapse, expand

SEED = int(os.environ.get("HOSTLIST_SEED", "2205"))
CASES = 1200  # scontrol reads its input a byte at a time: keep the volume modest
ECHO = "scontrol: "  # scontrol echoes each command read from a pipe behind this prompt
SENTINEL = "zz-end-of-output"  # "show hostnames" of it ends each command's output

T = TypeVar("T")
Batch = Callable[[str, Sequence[str]], list[list[str]]]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for scontrol with a minimal slurm.conf (it reads one even for hostlists)."""
    if shutil.which("scontrol") is None:
        reason = "scontrol is not installed (apt-get install slurm-wlm, or run `make test`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text(
        "ClusterName=x\nSlurmctldHost=localhost\nNodeName=a State=UNKNOWN\nPartitionName=p Nodes=a\n"
    )
    return {**os.environ, "SLURM_CONF": str(conf)}


@pytest.fixture(scope="module")
def scontrol_batch(slurm_env: dict[str, str]) -> Batch:
    """Run ``show <what> ARG`` for every ARG in one scontrol process; one output list per ARG."""

    def one_process(what: str, args: Sequence[str]) -> list[list[str]]:
        commands = "".join(f"show {what} {arg}\nshow hostnames {SENTINEL}\n" for arg in args)
        # bytes, not text=True: universal newlines would turn the "\r" in echoes into lines
        proc = subprocess.run(
            ["scontrol"], input=commands.encode(), env={**slurm_env, "TERM": "dumb"},
            capture_output=True, timeout=60, check=True,
        )
        assert proc.stderr == b"", proc.stderr[:2000]
        return _split_outputs(proc.stdout.decode(), len(args))

    def run(what: str, args: Sequence[str]) -> list[list[str]]:
        # two processes at once: scontrol reads stdin a byte at a time, which is the slow part
        half = (len(args) + 1) // 2
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(one_process, what, args[:half])
            second = pool.submit(one_process, what, args[half:])
            return first.result() + second.result()

    return run


def _split_outputs(stdout: str, count: int) -> list[list[str]]:
    outputs: list[list[str]] = [[]]
    for line in stdout.split("\n")[:-1]:
        if line.startswith(ECHO):  # readline's echo of a command read from the pipe
            continue
        if line == SENTINEL:
            outputs.append([])
        else:
            outputs[-1].append(line)
    assert len(outputs) == count + 1 and not outputs[-1], "could not pair the outputs"
    assert not any("\x1b" in line or "\r" in line for out in outputs for line in out)
    return outputs[:-1]


def scontrol_argv(env: dict[str, str], what: str, arg: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scontrol", "show", what, arg], env=env, capture_output=True, text=True, timeout=30,
        check=False,  # scontrol exits 0 even for an invalid hostlist; callers read stderr
    )


# ---- random cases -------------------------------------------------------------------------

PREFIXES = ["cn", "node", "gpu-", "r1n", "rack-2-", "n0", "x.y", "c_", "", "A", "vm-e4-ad1-"]
JOINERS = ["", "-", "n", "-n", "s", "_c", "0"]
PLAIN = ["login", "a1b", "head-node", "mgmt", "x"]


def _number_text(rng: random.Random, value: int) -> str:
    """A number, sometimes zero padded (Slurm takes the width from the text)."""
    if rng.random() < 0.45:
        return str(value).zfill(rng.randint(2, 5))
    return str(value)


def _start(rng: random.Random) -> int:
    return rng.choice([rng.randint(0, 12), rng.randint(95, 101), rng.randint(995, 1001),
                       rng.randint(0, 5000), rng.randint(8, 10)])


def _group(rng: random.Random, max_names: int) -> tuple[str, int]:
    """A bracket group's contents and how many names it holds."""
    parts: list[str] = []
    count = 0
    for _ in range(rng.choice([1, 1, 2, 3, 4])):
        if parts and rng.random() < 0.1:  # Slurm keeps duplicates
            parts.append(rng.choice(parts))
            continue
        lo = _start(rng)
        size = rng.choice([1, 1, 2, 3, 5, 12, 30])
        size = max(1, min(size, max_names - count))
        hi = lo + size - 1
        if size == 1 and rng.random() < 0.6:
            parts.append(_number_text(rng, lo))
        else:
            parts.append(f"{_number_text(rng, lo)}-{_number_text(rng, hi)}")
        count += size
        if count >= max_names:
            break
    # duplicates were not counted; an upper bound is enough here
    return ",".join(parts), count * 2


def random_item(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return rng.choice(PLAIN + [p + _number_text(rng, _start(rng)) for p in PREFIXES if p])
    ngroups = 1 if kind < 0.6 else rng.choice([2, 2, 3, 4])
    budget = 400
    pieces = [rng.choice(PREFIXES)]
    for index in range(ngroups):
        contents, count = _group(rng, max(1, int(budget ** (1 / (ngroups - index)))))
        budget = max(1, budget // max(count, 1))
        pieces.append(f"[{contents}]")
        if index < ngroups - 1:
            pieces.append(rng.choice(JOINERS))
    return "".join(pieces)


def random_expression(rng: random.Random) -> str:
    return ",".join(random_item(rng) for _ in range(rng.choice([1, 1, 2, 3, 5])))


def random_names(rng: random.Random) -> list[str]:
    """Names in runs, with gaps, repeats, width changes, nameless numbers and some shuffling."""
    names: list[str] = []
    for _ in range(rng.randint(1, 6)):
        prefix = rng.choice(PREFIXES)
        if rng.random() < 0.1:
            names.append(rng.choice(PLAIN))
            continue
        value, width = _start(rng), rng.choice([0, 0, 2, 3, 4])
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.08:
                width = rng.choice([0, 2, 3])
            names.append(prefix + (str(value).zfill(width) if width else str(value)))
            value += rng.choice([1, 1, 1, 1, 1, 2, 0, -1, 5])
            value = max(value, 0)
    if rng.random() < 0.2:
        rng.shuffle(names)
    return names


def random_cases(
    kind: Callable[[random.Random], T], salt: int, count: int = CASES
) -> Iterator[T]:
    rng = random.Random(SEED * 1000 + salt)
    for _ in range(count):
        yield kind(rng)


def _first_differences(pairs: Sequence[tuple[object, object, object]]) -> str:
    return "\n".join(f"  {case!r}:\n    ours    {ours!r}\n    scontrol {theirs!r}"
                     for case, ours, theirs in pairs[:5])


# ---- tests --------------------------------------------------------------------------------


def test_expand_matches_scontrol_on_random_expressions(scontrol_batch: Batch) -> None:
    expressions = list(random_cases(random_expression, 1))
    assert len(set(expressions)) > 1000
    theirs = scontrol_batch("hostnames", expressions)
    wrong = [(e, expand(e), t) for e, t in zip(expressions, theirs) if expand(e) != t]
    assert not wrong, f"seed {SEED}: {len(wrong)} differ\n{_first_differences(wrong)}"
    assert sum(len(t) for t in theirs) > 20 * CASES  # the cases were not trivially small


def mutated_expression(rng: random.Random) -> str:
    """A random expression with one to three characters inserted, deleted or replaced."""
    chars = list(random_expression(rng))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(chars))
        action = rng.random()
        if action < 0.4:
            chars.insert(at, rng.choice("[]-,0123ab"))
        elif action < 0.7 and len(chars) > 1:
            del chars[at]
        else:
            chars[at] = rng.choice("[]-,0123ab")
    return "".join(chars)


def _expand_or_none(expr: str) -> list[str] | None:
    try:
        return expand(expr)
    except HostlistError:
        return None


def test_whatever_expand_accepts_scontrol_expands_the_same(
    scontrol_batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a mutant like n[7-300036] goes past Slurm's 65536 names per range, where we are lenient
    # on purpose (tested below); a low cap makes expand refuse those here
    monkeypatch.setattr(hostlist, "MAX_NAMES", 5000)
    accepted = [(e, names) for e in random_cases(mutated_expression, 5, count=3 * CASES)
                if (names := _expand_or_none(e)) is not None]
    assert len(accepted) > CASES // 4  # many mutants stay valid; the rest were refused
    theirs = scontrol_batch("hostnames", [e for e, _ in accepted])  # also: no Slurm error
    wrong = [(e, ours, t) for (e, ours), t in zip(accepted, theirs) if ours != t]
    assert not wrong, f"seed {SEED}: {len(wrong)} differ\n{_first_differences(wrong)}"


def test_collapse_matches_scontrol_on_random_name_lists(scontrol_batch: Batch) -> None:
    name_lists = list(random_cases(random_names, 2))
    # lists made by expanding random expressions: long runs and several bracket groups
    name_lists += [expand(e) for e in random_cases(random_expression, 3, count=100)]
    theirs = scontrol_batch("hostlist", [",".join(names) for names in name_lists])
    wrong = [(n, collapse(n), t) for n, t in zip(name_lists, theirs) if [collapse(n)] != t]
    assert not wrong, f"seed {SEED}: {len(wrong)} differ\n{_first_differences(wrong)}"
    assert any("," in t[0] and "[" in t[0] for t in theirs)


def test_collapse_output_expands_back_in_scontrol(scontrol_batch: Batch) -> None:
    name_lists = list(random_cases(random_names, 4, count=500))
    theirs = scontrol_batch("hostnames", [collapse(names) for names in name_lists])
    assert theirs == name_lists


QUIRKS = [
    "cn[1-3],cn2", "cn[3,1,2]", "cn[1-3,2]", "cn[01-100]", "cn[1-0010]", "cn[0-10]", "cn[00-3]",
    "cn[099-101]", "cn[007,8,09]", "cn[1,01,001]", "rack[1-2]-n[01-04]", "[1,3,5-7]", "[1-2]",
    "cn[1-2][3-4]", "a[1-2]b[1-2]c[1-2]", "a[1-2]b[3-4]c[5-6]d[7-8]", "a[1,3]b[01-02]c[1-2]",
    "x[1-2]y[1]", "a-[1-2]", "a.b[1-2],a_b[1-2]", "cn18446744073709551614",
    # long ranges, made a thousand at a time: across thousands, decades and widths
    "n[1-60000]", "n[0995-12345]", "n[995-12345,7]", "x[1-3]y[00999-03001]", "n[99999-101000]",
    "n[1-65536]", "a[1-3]b[1-2]c[0998-2001]", "p%d[0001-1500]",
]


def test_expand_matches_scontrol_on_documented_quirks(scontrol_batch: Batch) -> None:
    theirs = scontrol_batch("hostnames", QUIRKS)
    assert [expand(e) for e in QUIRKS] == theirs


COLLAPSE_QUIRKS = [
    "cn3,cn1,cn2", "cn1,cn1,cn2", "a1,a01", "a01,a1", "r1n1,r1n2,r2n1", "r1n1,r2n1,r1n2",
    "cn9,cn10,cn11", "cn99,cn100", "cn9,cn010", "cn010,cn9", "n0,n00,n000", "1,2,3", "a,b,a",
    "a,a1", "cn1,x,cn2", "cn1,cn2,x,cn3,cn4", "cn008,cn009,cn10", "cn08,cn09,cn10", "a1b,a2b",
    # Slurm compares prefixes "naturally"; different digits in them must still not join
    "r01n1,r1n2", "r1n1,r01n2", "a0b1,a00b2", "r10n1,r010n2,r010n3",
]


def test_collapse_matches_scontrol_on_documented_quirks(scontrol_batch: Batch) -> None:
    theirs = scontrol_batch("hostlist", COLLAPSE_QUIRKS)
    assert [[collapse(n.split(","))] for n in COLLAPSE_QUIRKS] == theirs


def test_blank_separators_match_scontrol(slurm_env: dict[str, str]) -> None:
    for expr in ["a b", "a\tb", "a, b", "cn[1-2] x[3-4]", " a ,\tb "]:
        theirs = scontrol_argv(slurm_env, "hostnames", expr).stdout.split()
        assert expand(expr) == theirs, expr


REFUSED_BY_BOTH = [
    "cn[3-1]", "cn[]", "cn[a-b]", "cn[-1]", "cn[1--2]", "cn[1-2-3]", "cn[,1]", "cn[1,]",
    "x[1-2]y", "cn[1-2]x", "cn[1-2]]", "n[[1]]", "[]", "cn[1-3]x,y[1-2]",
]


@pytest.mark.parametrize("expr", REFUSED_BY_BOTH)
def test_expand_refuses_what_scontrol_refuses(slurm_env: dict[str, str], expr: str) -> None:
    proc = scontrol_argv(slurm_env, "hostnames", expr)
    assert "Invalid hostlist" in proc.stderr and proc.stdout == ""
    with pytest.raises(HostlistError, match="^hostlist "):
        expand(expr)


# Slurm guesses here (e.g. "cn[1-3" gives "cn]", "a,,b" gives a b); we refuse instead.
REFUSED_WHERE_SLURM_GUESSES = ["cn[1-3", "a[b", "cn1-3]", "a,,b", ",a", "cn[1-]", "cn[ 1-2]"]


@pytest.mark.parametrize("expr", REFUSED_WHERE_SLURM_GUESSES)
def test_expand_refuses_what_scontrol_guesses_at(slurm_env: dict[str, str], expr: str) -> None:
    proc = scontrol_argv(slurm_env, "hostnames", expr)
    assert proc.stderr == "" and proc.stdout.strip()  # Slurm accepted it
    with pytest.raises(HostlistError, match="^hostlist "):
        expand(expr)


def test_slurm_refuses_long_ranges_that_we_accept(slurm_env: dict[str, str]) -> None:
    proc = scontrol_argv(slurm_env, "hostnames", "n[1-65537]")
    assert "Too many hosts" in proc.stderr
    assert len(expand("n[1-65537]")) == 65537


def test_slurm_refuses_or_truncates_big_leading_groups_that_we_expand(
    slurm_env: dict[str, str],
) -> None:
    assert "Invalid hostlist" in scontrol_argv(slurm_env, "hostnames", "a[1-65536,1]b[1]").stderr
    assert len(expand("a[1-65536,1]b[1]")) == 65537
    truncated = scontrol_argv(slurm_env, "hostnames", "a[1-40000,1-40000]b[1]c[1]")
    assert truncated.stdout.split() == expand("a[1-40000]b[1]c[1]")
    assert len(expand("a[1-40000,1-40000]b[1]c[1]")) == 80000


def test_a_run_longer_than_slurms_range_limit_round_trips(slurm_env: dict[str, str]) -> None:
    # scontrol show hostlist writes n[1-70000] for these names too (seen by hand; too slow to
    # feed it 480 kB here), then refuses to expand what it wrote
    names = [f"n{i}" for i in range(1, 70001)]
    assert collapse(names) == "n[1-70000]"
    assert "Too many hosts" in scontrol_argv(slurm_env, "hostnames", "n[1-70000]").stderr
    assert expand(collapse(names)) == names
