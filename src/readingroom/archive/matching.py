"""DICOM attribute matching (PS3.4 C.2.2.2), shared by C-FIND and QIDO-RS.

One function turns a matching string into a SQL condition on a column, and
one evaluates it against a DICOM JSON element for attributes that have no
column. Supported: universal (empty), single value, wildcard (``*`` ``?``),
UID list (backslash, and comma as QIDO-RS allows), value lists for code
strings (``CT\\MR``), and ranges for DA / TM / DT (``a-b``, ``a-``, ``-b``).
Person names match case-insensitively (and anywhere with fuzzy matching),
as most archives do, because capitalisation of names varies between sites.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, and_, false, literal, or_, true
from sqlalchemy.sql.elements import ColumnElement as _CE

_TM_UPPER_PAD = {2: "5959", 4: "59", 6: ""}


class MatchError(ValueError):
    """A matching string that cannot be understood; the message says why."""


def is_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    """DICOM wildcard to SQL LIKE (escape character ``!``)."""
    out = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return out.replace("*", "%").replace("?", "_")


def _norm_time(value: str) -> str:
    return value.replace(":", "")


def _range_bounds(value: str, vr: str) -> tuple[str | None, str | None]:
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if vr == "TM":
        low, high = _norm_time(low), _norm_time(high)
        if high and "." not in high:
            high = high + _TM_UPPER_PAD.get(len(high), "") + ".999999"
    elif vr == "DA":
        low, high = low.replace(".", ""), high.replace(".", "")
        for part in (low, high):
            if part and not re.fullmatch(r"\d{8}", part):
                raise MatchError(f"invalid date {part!r} (expected YYYYMMDD)")
    elif vr == "DT" and high:
        high = high + "\uffff"
    return (low or None), (high or None)


def split_values(value: str, vr: str) -> list[str]:
    """A list-of-values matching string split into its values."""
    if vr == "UI":
        parts = re.split(r"[\\,]", value)
    else:
        parts = value.split("\\")
    return [p.strip() for p in parts if p.strip()]


def sql_condition(column: Any, value: str, vr: str, *, fuzzy: bool = False) -> ColumnElement[bool]:
    """SQL condition for one matching key on one column."""
    value = value.strip()
    if value in ("", "*"):
        return true()
    if vr in ("DA", "TM", "DT") and "-" in value and not is_wildcard(value):
        low, high = _range_bounds(value, vr)
        conds: list[_CE[bool]] = [column != ""]
        if low:
            conds.append(column >= low)
        if high:
            conds.append(column <= high)
        return and_(*conds)
    values = split_values(value, vr) if ("\\" in value or (vr == "UI" and "," in value)) else [value]
    if len(values) > 1:
        return or_(*(sql_condition(column, v, vr, fuzzy=fuzzy) for v in values))
    value = values[0] if values else ""
    if vr == "PN":
        if fuzzy:
            core = value.strip("*")
            return column.ilike(f"%{like_pattern(core)}%", escape="!")
        if is_wildcard(value):
            return column.ilike(like_pattern(value), escape="!")
        return column.ilike(like_pattern(value), escape="!")
    if is_wildcard(value):
        return column.like(like_pattern(value), escape="!")
    if vr == "TM":
        # A time matches at the precision given: 1030 matches 103000.5
        return or_(column == value, column.like(f"{like_pattern(_norm_time(value))}%", escape="!"))
    return column == value


def list_contains_condition(column: Any, value: str) -> ColumnElement[bool]:
    """Match a backslash-joined multi-value column (e.g. ModalitiesInStudy) against any of the values."""
    values = split_values(value, "CS")
    if not values:
        return true()
    # One LIKE on the list wrapped in delimiters ('\CT\MR\' LIKE '%\MR\%') says "is an element",
    # where four comparisons (whole, first, last, middle) built four times the expression objects.
    wrapped = literal("\\") + column + literal("\\")
    conds = [wrapped.like(f"%\\{like_pattern(v)}\\%", escape="!") for v in values]
    return or_(*conds) if conds else false()


def _wildcard_regex(value: str, ignore_case: bool) -> re.Pattern[str]:
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return re.compile(pattern, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _element_strings(elem: dict[str, Any] | None) -> list[str]:
    if not elem:
        return []
    out = []
    for v in elem.get("Value", []) or []:
        if isinstance(v, dict):
            out.append(str(v.get("Alphabetic", "")))
        else:
            out.append(str(v))
    return out


def json_matches(elem: dict[str, Any] | None, value: str, vr: str, *, fuzzy: bool = False) -> bool:
    """Evaluate a matching string against a DICOM JSON element (no SQL column)."""
    value = value.strip()
    if value in ("", "*"):
        return True
    values = _element_strings(elem)
    if not values:
        return False
    if vr in ("DA", "TM", "DT") and "-" in value and not is_wildcard(value):
        low, high = _range_bounds(value, vr)
        return any((low is None or v >= low) and (high is None or v <= high) for v in values)
    wanted = split_values(value, vr) if "\\" in value else [value]
    ignore_case = vr == "PN"
    for w in wanted:
        if fuzzy and vr == "PN":
            core = w.strip("*").lower()
            if any(core in v.lower() for v in values):
                return True
            continue
        rx = _wildcard_regex(w, ignore_case)
        if any(rx.fullmatch(v) for v in values):
            return True
    return False
