"""Behaviour of citc_power.hostlist (the same cases are checked against scontrol in
tests/integration/test_hostlist_scontrol.py)."""
from __future__ import annotations

import random
import re

import pytest

from citc_power.errors import HostlistError, UsageError
from citc_power.hostlist import MAX_NAMES, collapse, expand


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("cn1", ["cn1"]),
        ("cn[1-3]", ["cn1", "cn2", "cn3"]),
        ("cn[01-03]", ["cn01", "cn02", "cn03"]),
        ("login,cn[1-2]", ["login", "cn1", "cn2"]),
        ("[1,3,5-7]", ["1", "3", "5", "6", "7"]),
        ("cn[5]", ["cn5"]),
        ("a-[1-2]", ["a-1", "a-2"]),
        ("a.b[1-2]", ["a.b1", "a.b2"]),
        ("vm-e4-flex-ad1-[0001-0003]", ["vm-e4-flex-ad1-0001", "vm-e4-flex-ad1-0002",
                                        "vm-e4-flex-ad1-0003"]),
    ],
)
def test_expand_simple_expressions(expr: str, names: list[str]) -> None:
    assert expand(expr) == names


def test_expand_keeps_order_and_duplicates() -> None:
    assert expand("cn[3,1,2]") == ["cn3", "cn1", "cn2"]
    assert expand("cn[1-3,2]") == ["cn1", "cn2", "cn3", "cn2"]
    assert expand("cn[1-2],cn1,a,a") == ["cn1", "cn2", "cn1", "a", "a"]


def test_expand_pads_to_the_width_of_the_low_end_only() -> None:
    assert expand("cn[08-11]") == ["cn08", "cn09", "cn10", "cn11"]
    assert expand("cn[098-100]") == ["cn098", "cn099", "cn100"]
    assert expand("cn[01-100]")[-2:] == ["cn99", "cn100"]
    assert expand("cn[1-0010]") == [f"cn{i}" for i in range(1, 11)]
    assert expand("cn[007,8,09]") == ["cn007", "cn8", "cn09"]
    assert expand("cn[1,01,001]") == ["cn1", "cn01", "cn001"]
    assert expand("cn[00]") == ["cn00"]


@pytest.mark.parametrize(
    ("low", "high"),
    [("1", "100000"), ("0995", "12345"), ("995", "12345"), ("99999", "101000"), ("0", "2999"),
     ("000001", "100000"), ("1000", "1000"), ("998", "2001"), ("00999", "03001")],
)
def test_expand_long_ranges_print_each_number_padded_to_the_low_width(low: str, high: str) -> None:
    width, lo, hi = len(low), int(low), int(high)
    assert expand(f"n[{low}-{high}]") == [f"n{i:0{width}d}" for i in range(lo, hi + 1)]
    assert expand(f"r[1-2]n[{low}-{high}]")[hi - lo + 1] == f"r2n{low}"


def test_expand_two_groups_vary_the_first_slowest() -> None:
    assert expand("rack[1-2]-n[01-02]") == ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]
    assert expand("cn[1-2][3-4]") == ["cn13", "cn14", "cn23", "cn24"]


def test_expand_three_groups_follow_slurms_nesting() -> None:
    # the last group varies fastest, then the first, the group before the last slowest
    assert expand("a[1-2]b[1-2]c[1-2]") == [
        "a1b1c1", "a1b1c2", "a2b1c1", "a2b1c2", "a1b2c1", "a1b2c2", "a2b2c1", "a2b2c2",
    ]
    four = expand("a[1-2]b[3-4]c[5-6]d[7-8]")
    assert four[:5] == ["a1b3c5d7", "a1b3c5d8", "a2b3c5d7", "a2b3c5d8", "a1b4c5d7"]
    assert four[8] == "a1b3c6d7"
    assert len(four) == 16 == len(set(four))


def test_expand_text_between_groups_but_not_after_the_last() -> None:
    assert expand("x[1-2]y[1]") == ["x1y1", "x2y1"]
    with pytest.raises(HostlistError, match=r"'y' after the last '\]'"):
        expand("x[1-2]y")


def test_expand_commas_inside_brackets_are_not_separators() -> None:
    assert expand("a[1,2],b[3,4]") == ["a1", "a2", "b3", "b4"]


def test_expand_blanks_and_tabs_separate_like_commas() -> None:
    assert expand("a b") == ["a", "b"]
    assert expand(" a ,\tb\n") == ["a", "b"]
    assert expand("cn[1-2] gpu[1-2]") == ["cn1", "cn2", "gpu1", "gpu2"]
    assert expand("a,\nb") == ["a", "b"]


def test_expand_keeps_percent_signs_in_names_verbatim() -> None:
    assert expand("a%d[1-2],b%%s[08-09]x[1]") == ["a%d1", "a%d2", "b%%s08x1", "b%%s09x1"]


def test_expand_of_nothing_is_empty() -> None:
    assert expand("") == []
    assert expand("  \n") == []


def test_expand_takes_only_a_string() -> None:
    with pytest.raises(TypeError):
        expand(["cn1"])  # type: ignore[arg-type]


def test_expand_long_plain_list_is_unchanged() -> None:
    names = [f"node{i}" for i in range(5000)]
    assert expand(",".join(names)) == names


MALFORMED = [
    ("cn[1-3", r"'\[' \(character 3\) is never closed"),
    ("a,cn[1-3", r"'\[' \(character 5\) is never closed"),
    ("cn1-3]", r"'\]' \(character 6\) has no matching '\['"),
    ("cn[1-2]]", r"'\]' \(character 8\) has no matching '\['"),
    ("cn[[1-2]", r"not closed before the next '\['; brackets do not nest"),
    ("cn[3-1]", r"range '3-1' is reversed"),
    ("cn[]", r"empty brackets '\[\]' in 'cn\[\]'"),
    ("cn[a-b]", r"bad range 'a-b' in '\[a-b\]'"),
    ("cn[1-]", r"bad range '1-'"),
    ("cn[-1]", r"bad range '-1'"),
    ("cn[1-2-3]", r"bad range '1-2-3'"),
    ("cn[ 1]", r"bad range ' 1'"),
    ("cn[+1]", r"bad range '\+1'"),
    ("cn[1,]", r"empty range in '\[1,\]'"),
    ("cn[,1]", r"empty range in '\[,1\]'"),
    ("cn[1-2]x", r"'x' after the last '\]'"),
    ("a,,b", r"empty element between two commas"),
    ("a, ,b", r"empty element between two commas"),
    (",a", r"empty element before the first comma"),
    ("a,", r"empty element after the last comma"),
    ("cn[1],,b", r"empty element between two commas"),
    (",cn[1]", r"empty element before the first comma"),
    ("cn[1],", r"empty element after the last comma"),
    ("a\x07b", r"control character '\\x07'"),
    ("cn[1]\x07", r"'\\x07' \(character 6\) is not allowed in a name"),
    ("cn[99999999999999999999]", r"larger than 18446744073709551614"),
    ("cn99999999999999999999", r"number at the end of 'cn99999999999999999999' is larger"),
]


@pytest.mark.parametrize(("expr", "message"), MALFORMED)
def test_expand_refuses_malformed_expressions_naming_them(expr: str, message: str) -> None:
    with pytest.raises(HostlistError) as caught:
        expand(expr)
    text = str(caught.value)
    assert text.startswith(f"hostlist {expr!r}: ")
    assert "\n" not in text
    assert re.search(message, text), text


def test_hostlist_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        expand("cn[3-1]")


def test_expand_refuses_absurd_sizes_before_making_names() -> None:
    with pytest.raises(HostlistError, match=f"expands to more than {MAX_NAMES} names"):
        expand("n[1-1000000000]")
    with pytest.raises(HostlistError, match="more than"):
        expand("a[1-1000]b[1-1001]")  # 1 001 000 names
    with pytest.raises(HostlistError, match="more than"):
        expand("n[1-600000],m[1-600000]")


def test_expand_accepts_exactly_the_cap_and_ranges_longer_than_slurms() -> None:
    assert len(expand(f"n[1-{MAX_NAMES}]")) == MAX_NAMES
    # Slurm 22.05 refuses one range of more than 65536 names; we do not
    assert expand("n[000001-100000]")[-1] == "n100000"


def test_error_message_quotes_a_long_expression_shortened() -> None:
    expr = ",".join(f"node{i}" for i in range(1000)) + ",cn[3-1]"
    with pytest.raises(HostlistError) as caught:
        expand(expr)
    assert len(str(caught.value)) < 250
    assert "..." in str(caught.value) and "reversed" in str(caught.value)


@pytest.mark.parametrize(
    ("names", "expr"),
    [
        (["cn1", "cn2", "cn3"], "cn[1-3]"),
        (["cn5"], "cn5"),
        (["cn05", "cn07"], "cn[05,07]"),
        (["login"], "login"),
        (["cn3", "cn1", "cn2"], "cn[3,1-2]"),
        (["cn1", "cn1", "cn2"], "cn[1,1-2]"),
        (["a", "b", "a"], "a,b,a"),
        (["1", "2", "3"], "[1-3]"),
        (["cn1", "x", "cn2"], "cn1,x,cn2"),
        (["cn1", "cn2", "x", "cn3", "cn4"], "cn[1-2],x,cn[3-4]"),
        (["a1", "a2", "b"], "a[1-2],b"),
        (["a1b", "a2b"], "a1b,a2b"),
        (["a1-b1", "a1-b2"], "a1-b[1-2]"),
        ([], ""),
    ],
)
def test_collapse_keeps_order_and_joins_following_numbers(names: list[str], expr: str) -> None:
    assert collapse(names) == expr


def test_collapse_groups_by_the_trailing_number_only() -> None:
    assert collapse(["r1n1", "r1n2", "r2n1"]) == "r1n[1-2],r2n1"
    assert collapse(["r1n1", "r2n1", "r1n2"]) == "r1n1,r2n1,r1n2"


def test_collapse_joins_widths_only_when_no_padding_changes() -> None:
    assert collapse(["cn9", "cn10", "cn11"]) == "cn[9-11]"
    assert collapse(["cn99", "cn100"]) == "cn[99-100]"
    assert collapse(["cn099", "cn100"]) == "cn[099-100]"
    assert collapse(["cn9", "cn010"]) == "cn[9,010]"
    assert collapse(["a1", "a01"]) == "a[1,01]"
    assert collapse(["n0", "n00", "n000"]) == "n[0,00,000]"
    assert collapse(["cn008", "cn009", "cn10"]) == "cn[008-009,10]"


def test_collapse_accepts_any_iterable() -> None:
    assert collapse(f"cn{i}" for i in range(1, 4)) == "cn[1-3]"
    assert collapse(("a", "b")) == "a,b"


def test_collapse_refuses_a_string_instead_of_names() -> None:
    with pytest.raises(TypeError, match="expand"):
        collapse("cn1,cn2")


@pytest.mark.parametrize("bad", ["", "cn[1]", "a,b", "a b", "x]", "a\tb", "a\x00"])
def test_collapse_refuses_what_is_not_a_node_name(bad: str) -> None:
    with pytest.raises(HostlistError, match=r"^collapse: .* is not a node name"):
        collapse(["cn1", bad])


def test_collapse_refuses_numbers_slurm_cannot_hold() -> None:
    with pytest.raises(HostlistError, match="larger than"):
        collapse(["cn99999999999999999999"])


def _random_names(rng: random.Random) -> list[str]:
    names = []
    for _ in range(rng.randint(0, 5)):
        prefix = rng.choice(["cn", "r1n", "", "gpu-", "login", "a1b"])
        value, width = rng.randint(0, 120), rng.choice([0, 2, 3])
        for _ in range(rng.randint(1, 15)):
            names.append(prefix + str(value).zfill(width))
            value = max(0, value + rng.choice([1, 1, 1, 2, 0, -1]))
            if rng.random() < 0.1:
                width = rng.choice([0, 2, 3])
    if rng.random() < 0.3:
        rng.shuffle(names)
    return names


def test_expand_of_collapse_gives_back_the_names() -> None:
    rng = random.Random(7)
    for _ in range(500):
        names = _random_names(rng)
        assert expand(collapse(names)) == names


def test_collapse_of_expand_is_stable() -> None:
    for expr in ["cn[1-3,2]", "rack[1-2]-n[01-04]", "a[1-2]b[1-2]c[1-2]", "cn[098-102]", "x,y"]:
        once = collapse(expand(expr))
        assert expand(once) == expand(expr)
        assert collapse(expand(once)) == once


def test_collapse_round_trips_a_run_longer_than_slurms_range_limit() -> None:
    names = [f"n{i}" for i in range(1, 70001)]
    assert collapse(names) == "n[1-70000]"
    assert expand("n[1-70000]") == names
