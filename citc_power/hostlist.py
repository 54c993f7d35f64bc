"""Slurm hostlist expressions: ``expand("cn[01-03]")`` and ``collapse(["cn01", "cn02"])``.

Results are those of ``scontrol show hostnames`` and ``scontrol show hostlist`` of Slurm 22.05
for every expression Slurm accepts and this module does not refuse (see "Refused" below).

Syntax
    An expression is a list of items separated by a comma, blanks, tabs or line ends (or a
    comma with blanks around it). An item is a plain
    name (``login1``) or a name with bracket groups (``cn[01-04,07]``, ``rack[1-2]-n[01-04]``).
    A group holds comma-separated numbers and ``LOW-HIGH`` ranges.

How Slurm 22.05 behaves, and so does this module
    - Order is kept and nothing is deduplicated: ``cn[1-3],cn2`` gives cn1 cn2 cn3 cn2.
    - Zero padding comes from the low end of a range only: ``cn[01-100]`` gives cn01 .. cn99,
      cn100; ``cn[1-0010]`` gives cn1 .. cn10 (no padding); ``cn[007,8]`` gives cn007 cn8.
    - With two groups the first varies slowest (``a[1-2]b[1-2]``: a1b1 a1b2 a2b1 a2b2). With
      three or more, Slurm nests them oddly and we follow: the last group varies fastest, then
      the first, the second, ... and the one before the last slowest (``a[1-2]b[1-2]c[1-2]``
      gives a1b1c1 a1b1c2 a2b1c1 a2b1c2 a1b2c1 ...).
    - A name may not go on after its last group: ``cn[1-2]x`` is refused, ``x[1-2]y[1]`` is not.
    - ``collapse`` neither sorts nor deduplicates: it joins a name onto the range before it when
      the prefix is the same and the number is the next one (``cn3,cn1,cn2`` gives
      ``cn[3,1-2]``; ``cn1,cn1,cn2`` gives ``cn[1,1-2]``); ranges of one prefix that follow each
      other share brackets; a different prefix starts a new item (``r1n1,r1n2,r2n1`` gives
      ``r1n[1-2],r2n1``). Only the trailing digits of a name count as its number.
    - Padding in ``collapse``: widths join when no name's padding changes, so ``cn9,cn10`` gives
      ``cn[9-10]`` and ``cn99,cn100`` gives ``cn[99-100]``, but ``a1,a01`` gives ``a[1,01]`` and
      ``cn9,cn010`` gives ``cn[9,010]``.

Refused (HostlistError, one line naming the expression and the fault)
    What Slurm 22.05 refuses: empty or malformed groups (``cn[]``, ``cn[1,]``, ``cn[a-b]``),
    reversed ranges (``cn[3-1]``), text after the last group, a ']' after a group. And what it
    guesses at or drops silently: empty elements (``a,,b``, a leading or trailing comma; Slurm
    skips them), an unclosed or stray bracket (``cn[1-3`` gives "cn]" in Slurm, ``cn1-3]`` a
    name with a bracket in it), nested brackets, ``cn[1-]`` (Slurm: cn1), blanks or signs in a
    group (``cn[ 1-2]``: Slurm pads to cn01 cn02), numbers above 2**64 - 2 (Slurm clamps them),
    control characters, and expressions of more than :data:`MAX_NAMES` names.

Deliberately more lenient than Slurm 22.05
    Slurm refuses one range of more than 65536 names (``n[1-100000]``) although its own
    ``show hostlist`` writes such ranges for long runs of names; it refuses a leading group of
    more than 65536 names (``a[1-65536,1]b[1]``), and with three or more groups silently
    truncates one (``a[1-40000,1-40000]b[1]c[1]`` gives 40000 names). Here the only bound is
    :data:`MAX_NAMES` for the whole expression, so ``expand(collapse(names)) == names`` holds
    for any list of up to :data:`MAX_NAMES` valid names.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from citc_power.errors import HostlistError

__all__ = ["MAX_NAMES", "collapse", "expand"]

#: Most names one expression may expand to. Far more nodes than any Slurm cluster has (the
#: largest machines have a few hundred thousand), yet small enough that the list fits in memory
#: (about 80 MB); something like ``n[1-1000000000]`` is refused before any name is made.
MAX_NAMES = 1_000_000

# Slurm parses numbers with strtoul into an unsigned long; bigger ones come out clamped or
# wrapped, so refuse them rather than guess.
_MAX_NUMBER = 2**64 - 2

# Longest expression quoted in full in an error message.
_QUOTE_MAX = 120

# Slurm separates names with commas, blanks and tabs; line ends are accepted here too, so that a
# list read from a file works. Other control characters are never part of a name.
_BLANK = " \t\r\n"
_SEP = r"[ \t\r\n]*,[ \t\r\n]*|[ \t\r\n]+"
_NAME_CHAR = r"[^\[\], \t\r\n\x00-\x1f\x7f]"

# One token of an expression: an item (text and bracket groups), a separator (blanks and at
# most one comma), or any other single character, which is always an error.
_TOKEN = re.compile(
    rf"(?P<item>(?:{_NAME_CHAR}+|\[[^\[\]]*\])+)|(?P<sep>{_SEP})|(?P<bad>.)", re.DOTALL
)
_SPLIT_PLAIN = re.compile(_SEP)
_PLAIN_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_GROUP = re.compile(r"\[([^\[\]]*)\]")
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_LONG_NUMBER = re.compile(r"[0-9]{20,}")
_TRAILING_NUMBER = re.compile(r"[0-9]+\Z")
_NAME_BAD = re.compile(r"[\[\],\x00-\x20\x7f]")
_DIGITS = "0123456789"

# "000" to "999": long ranges are made a thousand names at a time from these.
_THREE_DIGITS = [f"{i:03d}" for i in range(1000)]


class _Range(NamedTuple):
    """``lo``-``hi`` from a bracket group, printed zero-padded to ``width`` (Slurm's rule)."""

    lo: int
    hi: int
    width: int


def _quote(expr: str) -> str:
    """The expression for an error message: repr-quoted, shortened if long."""
    if len(expr) > _QUOTE_MAX:
        expr = expr[: _QUOTE_MAX - 3] + "..."
    return repr(expr)


def _fail(expr: str, what: str) -> HostlistError:
    return HostlistError(f"hostlist {_quote(expr)}: {what}")


def expand(expr: str) -> list[str]:
    """Return the names of a hostlist expression, in Slurm's order, duplicates kept.

    An empty or all-blank expression gives an empty list.

    :raises HostlistError: if the expression is malformed or has more than MAX_NAMES names.
    """
    if not isinstance(expr, str):
        raise TypeError(f"expand() takes a str, not {type(expr).__name__}")
    text = expr.strip(_BLANK)
    if not text:
        return []
    if "[" not in text and "]" not in text:
        return _expand_plain(expr, text)
    items = [_parse_item(expr, item) for item in _items(expr, text)]
    _check_total(expr, sum(item.size for item in items))
    # The names are made as one text and split once: much faster than list appends.
    return "\n".join([_names_text(item) for item in items]).split("\n")


def _expand_plain(expr: str, text: str) -> list[str]:
    """expand() for an expression without brackets: a fast split."""
    names = _SPLIT_PLAIN.split(text)
    if "" in names:
        raise _fail(expr, _empty_element_message(names.index(""), len(names)))
    bad = _PLAIN_BAD.search(text)
    if bad:
        raise _fail(expr, f"control character {bad.group()!r} is not allowed in a name")
    _check_total(expr, len(names))
    if _LONG_NUMBER.search(text):
        for name in names:
            _check_name_number(expr, name)
    return names


def _empty_element_message(index: int, count: int) -> str:
    if index == 0:
        return "empty element before the first comma"
    if index == count - 1:
        return "empty element after the last comma"
    return "empty element between two commas"


def _items(expr: str, text: str) -> Iterator[str]:
    """Split an expression into its items, checking the separators and brackets between them."""
    expect_item = True
    lead = len(expr) - len(expr.lstrip(_BLANK))  # to count positions in what the user wrote
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "bad":
            raise _fail(expr, _bad_character_message(text, match.start(), lead))
        if kind == "item":
            expect_item = False
            yield match.group()
        elif expect_item:  # a separator where an item should be
            where = "before the first comma" if match.start() == 0 else "between two commas"
            raise _fail(expr, f"empty element {where}")
        else:
            expect_item = True
    if expect_item:  # text ended with a comma (blanks were stripped)
        raise _fail(expr, "empty element after the last comma")


def _bad_character_message(text: str, pos: int, lead: int) -> str:
    """Say what is wrong with the character at ``text[pos]`` that starts no item or separator."""
    char, where = text[pos], f"character {lead + pos + 1}"
    if char == "]":
        return f"']' ({where}) has no matching '['"
    if char == "[":
        close = text.find("]", pos + 1)
        reopen = text.find("[", pos + 1)
        if close < 0:
            return f"'[' ({where}) is never closed"
        if 0 <= reopen < close:
            return f"'[' ({where}) is not closed before the next '['; brackets do not nest"
    return f"{char!r} ({where}) is not allowed in a name"


class _Item(NamedTuple):
    """One parsed item: the text pieces around its groups, the groups' ranges, its size."""

    texts: list[str]  # text before each group, then the (empty) rest; a plain name alone
    groups: list[list[_Range]]
    size: int


def _parse_item(expr: str, item: str) -> _Item:
    """Parse one item (``pre[1-2]mid[3,5]`` or a plain name) without making its names."""
    parts = _GROUP.split(item)  # [text, group, text, group, ..., text]
    if len(parts) == 1:
        _check_name_number(expr, item)
        return _Item(parts, [], 1)
    texts, groups = parts[0::2], parts[1::2]
    if texts[-1]:
        raise _fail(
            expr,
            f"{texts[-1]!r} after the last ']' of {item!r}: Slurm wants a name to end with its "
            "last bracket group",
        )
    ranges = [_parse_group(expr, item, group) for group in groups]
    count = 1
    for group_ranges in ranges:
        count *= sum(r.hi - r.lo + 1 for r in group_ranges)
    _check_total(expr, count)  # before multiplying further items in
    return _Item(texts, ranges, count)


def _names_text(item: _Item) -> str:
    """The names of a parsed item, one per line."""
    if not item.groups:
        return item.texts[0]
    leading = [_numbers(group_ranges) for group_ranges in item.groups[:-1]]
    prefixes = _prefixes(item.texts, leading)
    if len(prefixes) == 1:
        return _numbers_text(item.groups[-1], prefixes[0])
    suffixes = _numbers(item.groups[-1])
    return "\n".join([prefix + ("\n" + prefix).join(suffixes) for prefix in prefixes])


def _check_total(expr: str, total: int) -> None:
    if total > MAX_NAMES:
        raise _fail(
            expr,
            f"expands to more than {MAX_NAMES} names (the limit, to catch mistyped ranges)",
        )


def _check_name_number(expr: str, name: str) -> None:
    """Refuse a name whose trailing number Slurm would clamp (it reads it as an unsigned long)."""
    match = _TRAILING_NUMBER.search(name)
    if match and int(match.group()) > _MAX_NUMBER:
        raise _fail(expr, f"number at the end of {name!r} is larger than {_MAX_NUMBER}")


def _parse_group(expr: str, item: str, group: str) -> list[_Range]:
    """The ranges of one bracket group's contents (``1,3,05-07``)."""
    if not group:
        raise _fail(expr, f"empty brackets '[]' in {item!r}")
    ranges = []
    for part in group.split(","):
        if not part:
            raise _fail(expr, f"empty range in '[{group}]' (a comma too many?)")
        match = _RANGE.fullmatch(part)
        if not match:
            raise _fail(
                expr,
                f"bad range {part!r} in '[{group}]': use NUMBER or LOW-HIGH with digits 0-9",
            )
        low_text, high_text = match.group(1), match.group(2)
        lo = int(low_text)
        hi = lo if high_text is None else int(high_text)
        if hi > _MAX_NUMBER:
            raise _fail(expr, f"number in range {part!r} is larger than {_MAX_NUMBER}")
        if lo > hi:
            raise _fail(expr, f"range {part!r} is reversed: its low end is above its high end")
        ranges.append(_Range(lo, hi, len(low_text)))
    return ranges


def _numbers(ranges: Sequence[_Range]) -> list[str]:
    """The numbers of a group, each padded to the width of its range's low end."""
    return _numbers_text(ranges, "").split("\n")


def _numbers_text(ranges: Sequence[_Range], prefix: str) -> str:
    """``prefix`` + each number of a group, one per line, padded as Slurm pads them."""
    pieces = []
    for lo, hi, width in ranges:
        number = lo
        while number <= hi:
            # numbers printed with the same length: the padded ones, then each longer decade
            length = max(width, len(str(number)))
            end = min(hi, 10**length - 1)
            pieces.append(_same_length(prefix, number, end, length))
            number = end + 1
    return "\n".join(pieces)


def _same_length(prefix: str, first: int, last: int, length: int) -> str:
    """``prefix`` + first..last, one per line, each printed with ``length`` digits."""
    if length <= 3 or last - first < 1000:
        name = f"{prefix.replace('%', '%%')}%0{length}d"
        return "\n".join(map(name.__mod__, range(first, last + 1)))
    # Blocks of a thousand: the leading digits once per block joined to the three last digits
    # from a ready list, all in C: three times faster than formatting each number.
    blocks = []
    for block in range(first // 1000, last // 1000 + 1):
        head = f"{prefix}{block:0{length - 3}d}"
        start = first - block * 1000 if block == first // 1000 else 0
        stop = last - block * 1000 + 1 if block == last // 1000 else 1000
        blocks.append(head + ("\n" + head).join(_THREE_DIGITS[start:stop]))
    return "\n".join(blocks)


def _prefixes(texts: Sequence[str], numbers: Sequence[list[str]]) -> list[str]:
    """Every prefix an item's leading groups make, in Slurm's order.

    ``texts`` are the text pieces before each group (the last one is the empty rest),
    ``numbers`` the number strings of every group but the last. Slurm walks the group just
    before the last outermost, then the one before it, ..., the first innermost.
    """
    combos: list[tuple[str, ...]] = [()]
    for group_numbers in reversed(numbers):
        combos = [combo + (number,) for combo in combos for number in group_numbers]
    prefixes = []
    for combo in combos:
        pieces = [texts[0]]
        for index, number in enumerate(reversed(combo)):
            pieces.append(number)
            pieces.append(texts[index + 1])
        prefixes.append("".join(pieces))
    return prefixes


def collapse(names: Iterable[str]) -> str:
    """Return the hostlist expression ``scontrol show hostlist`` gives for these names.

    The order is kept and duplicates stay (see the module docstring). No names give "".

    :raises HostlistError: if a name is empty or holds a separator, a bracket, a control
        character or a number above 2**64 - 2.
    """
    if isinstance(names, str):
        raise TypeError("collapse() takes an iterable of names, not a str: expand() it first")
    names = list(names)
    _check_names(names)
    # Runs as parallel lists (faster than objects for 10^5 names): prefix, first and last
    # number, width; a name without a number is a run of width 0.
    prefixes: list[str] = []
    los: list[int] = []
    his: list[int] = []
    widths: list[int] = []
    for name in names:
        prefix = name.rstrip(_DIGITS)
        if len(prefix) == len(name):
            prefixes.append(name)
            los.append(0)
            his.append(0)
            widths.append(0)
            continue
        digits = name[len(prefix):]
        number = int(digits)
        if widths and widths[-1] and his[-1] + 1 == number and prefixes[-1] == prefix:
            width = _joint_width(los[-1], widths[-1], number, len(digits))
            if width is not None:
                his[-1] = number
                widths[-1] = width
                continue
        prefixes.append(prefix)
        los.append(number)
        his.append(number)
        widths.append(len(digits))
    return ",".join(_format_runs(prefixes, los, his, widths))


def _check_names(names: list[str]) -> None:
    """Refuse anything in a list of names that is not a node name Slurm can hold."""
    if all(isinstance(name, str) for name in names):
        joined = "/".join(names)  # one search for the common case, where all is well
        if "" not in names and not _NAME_BAD.search(joined) and not _LONG_NUMBER.search(joined):
            return
    for name in names:
        if not isinstance(name, str) or not name or _NAME_BAD.search(name):
            raise HostlistError(
                f"collapse: {name!r} is not a node name (empty, or holds a comma, a bracket, "
                "a blank or a control character)"
            )
        number = name[len(name.rstrip(_DIGITS)):]
        if number and int(number) > _MAX_NUMBER:
            raise HostlistError(
                f"collapse: number at the end of {name!r} is larger than {_MAX_NUMBER}"
            )


def _padding(number: int, width: int) -> int:
    return max(width - len(str(number)), 0)


def _joint_width(first: int, first_width: int, second: int, second_width: int) -> int | None:
    """The width two runs can share without changing the padding of either first number.

    This is Slurm's rule: it compares the runs' first numbers only; None if no width fits.
    """
    if first_width == second_width:
        return first_width
    if _padding(first, first_width) == _padding(first, second_width):
        return second_width
    if _padding(second, second_width) == _padding(second, first_width):
        return first_width
    return None


def _format_runs(
    prefixes: list[str], los: list[int], his: list[int], widths: list[int]
) -> Iterator[str]:
    """Write runs as Slurm does: consecutive numbered runs of one prefix share brackets."""
    index, count = 0, len(prefixes)
    while index < count:
        prefix, width = prefixes[index], widths[index]
        if not width:  # a name without a number
            yield prefix
            index += 1
            continue
        end = index + 1
        while end < count and widths[end] and prefixes[end] == prefix:
            end += 1
        body = ",".join(
            f"{los[i]:0{widths[i]}d}-{his[i]:0{widths[i]}d}" if his[i] > los[i]
            else f"{los[i]:0{widths[i]}d}"
            for i in range(index, end)
        )
        if end - index > 1 or his[index] > los[index]:
            yield f"{prefix}[{body}]"
        else:
            yield prefix + body
        index = end
