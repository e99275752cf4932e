"""Preference and response files: reading (JSON, JSONL, Parquet through `datasets`), the layout
detected from the fields, and per-row validation that names the file, row and field.

Layouts (see PAPERS.md, "Evaluation data layouts"):
  rewardbench  prompt, chosen, rejected (strings), subset, id
  rmbench      prompt, chosen, rejected (lists of 3 strings: concise, detailed plain, detailed
               markdown), domain, id
  plain        prompt, response
A prompt is a string or a list of {role, content} messages. Rows are numbered from 1.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

LAYOUTS = ("rewardbench", "rmbench", "plain")
_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """A file that cannot be read as rows; the message names the file (and row when known)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One valid input row: `responses` are the texts to score (chosen..., rejected... for pairs)."""

    index: int                 # 1-based row number in the file
    prompt: str | list
    responses: tuple[str, ...]
    group: str | None          # subset (RewardBench) or domain (RM-Bench)
    id: object = None


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a JSON / JSONL / Parquet file as dicts, in file order.

    JSON and JSONL are parsed by Python's json module, not by `datasets` (Arrow's JSON reader):
    on some hostile files (found by tests/test_fuzz_cli.py) that reader crashes the process with a
    segmentation fault, where a bad row must be an error message."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use .json, .jsonl or .parquet")
    if kind == "json":
        return _read_json_rows(path)
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True)
        return [dict(r) for r in ds]
    except Exception as e:  # noqa: BLE001 - datasets raises many types
        raise DataError(f"{path}: cannot read as Parquet: {e}") from e


def read_row_subset(path: str | Path, keep) -> list[tuple[int, dict]]:
    """[(row number, row)] of the rows for which `keep(row number)` holds (a process's data
    shards): a Parquet file is parsed (Arrow), but only these rows become Python objects."""
    path = Path(path)
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind != "parquet" or not path.is_file():
        return [(i, r) for i, r in enumerate(read_rows(path), 1) if keep(i)]  # read_rows names the error
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True)
    except Exception:  # noqa: BLE001 - read_rows reports it
        return [(i, r) for i, r in enumerate(read_rows(path), 1) if keep(i)]
    numbers = [i for i in range(1, len(ds) + 1) if keep(i)]
    return list(zip(numbers, ds.select([i - 1 for i in numbers]).to_list()))


class BadRow(dict):
    """A line of a JSON/JSONL file that is not a JSON object (invalid JSON, or another value): an
    empty row carrying `error`, reported as that row's error line by every reader while the other
    rows are processed."""

    def __init__(self, error: str):
        super().__init__()
        self.error = error


def _read_json_rows(path: Path) -> list[dict]:
    """A JSON array (a .json file starting with '['), or JSONL (a value per line; blank lines
    skipped), as rows: objects as dicts, anything else as a BadRow saying what it is. A JSON
    array that does not parse is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if path.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        try:
            values = [(None, v) for v in json.loads(text)]
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    else:
        values = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                values.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                values.append((n, BadRow(f"(line {n}) invalid JSON: {e.msg}")))
    rows = []
    for n, v in values:
        if not isinstance(v, dict):
            v = BadRow(("" if n is None else f"(line {n}) ") + f"expected a JSON object, got {type(v).__name__}")
        rows.append(v)
    return rows


def detect_layout(rows: list[dict], path: str | Path = "<rows>") -> str:
    """rewardbench, rmbench or plain, from the fields the rows carry."""
    fields = set().union(*(r.keys() for r in rows)) if rows else set()
    if not rows:
        raise DataError(f"{path}: no rows")
    if {"chosen", "rejected"} <= fields:
        lists = sum(isinstance(r.get("chosen"), (list, tuple)) for r in rows)
        return "rmbench" if lists > len(rows) / 2 else "rewardbench"
    if "response" in fields:
        return "plain"
    raise DataError(f"{path}: cannot tell the layout from fields {sorted(fields)}: expected prompt + "
                    "chosen + rejected (RewardBench, RM-Bench) or prompt + response")


def check_prompt(value) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "is empty"
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in value):
        return None
    return "must be a string or a list of {role, content} messages"


def validate(rows: list[dict], layout: str, path: str | Path = "<rows>") -> tuple[list[Row], dict[int, str]]:
    """(valid rows, {row number: message naming file, row and field} for the bad rows)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    fields = ("chosen", "rejected") if layout != "plain" else ("response",)
    group_field = {"rewardbench": "subset", "rmbench": "domain", "plain": None}[layout]
    good, bad = [], {}
    for i, r in enumerate(rows, 1):
        if isinstance(r, BadRow):
            bad[i] = f"{path}: row {i}: {r.error}"
            continue
        problem = None
        if "prompt" not in r or r["prompt"] is None:
            problem = "field 'prompt' is missing"
        elif (why := check_prompt(r["prompt"])) is not None:
            problem = f"field 'prompt' {why}"
        texts = []
        for f in fields:
            if problem:
                break
            v = r.get(f)
            if v is None:
                problem = f"field {f!r} is missing"
            elif layout == "rmbench":
                if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, str) for x in v)):
                    problem = f"field {f!r} must be a list of 3 strings"
                else:
                    texts.extend(v)
            elif not isinstance(v, str):
                problem = f"field {f!r} must be a string, got {type(v).__name__}"
            else:
                texts.append(v)
        group = r.get(group_field) if group_field else None
        if not problem and layout == "rmbench" and not isinstance(group, str):
            problem = "field 'domain' is missing"
        if problem:
            bad[i] = f"{path}: row {i}: {problem}"
        else:
            good.append(Row(i, r["prompt"], tuple(texts), None if group is None else str(group), r.get("id")))
    return good, bad
