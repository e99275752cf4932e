"""HBM bytes a compiled TPU program moves, read from its optimized HLO.

XLA's `cost_analysis()["bytes accessed"]` sums every instruction's operands and results in any
memory space: on TPU, where the compiler stages buffers into on-chip VMEM (a `S(1)` layout) with
async copies, one HBM read is counted again as the VMEM write, the VMEM read by the consumer and
so on. What bounds a memory-bound step (decode) is HBM traffic, so this counts only the array
bytes whose layout is in HBM (no `S(n)` memory-space annotation), per instruction of every
computation that is not a fusion's or a reducer's body:

- `copy-start` / `slice-start` (and other `-start` ops): what they read out of HBM (the operand,
  or only the slice of it a slice-start moves on chip);
  `-done`: the result, if in HBM (a write);
- `dynamic-update-slice` in place: twice the update (read-modify-write of the slot), not the
  whole buffer;
- a fusion that only slices or gathers from one of its operands (an embedding lookup, a decode
  step reading the first slots of a cache), itself or through a nested fusion that does: only
  the bytes it takes out of that operand;
- a fusion whose root updates one of its operands in place (a dynamic-update-slice of a
  parameter: a KV cache write): twice the update, as for a bare dynamic-update-slice, and
  nothing for the whole buffer;
- a cross-program prefetch (a copy XLA issues at the start of a program for a buffer the program
  reads; in a loop body it is no per-step cost) when another copy in the program reads the same
  operand: counted once, by that other copy;
- parameters, constants, tuples, bitcasts and tuple reads move nothing;
- anything else (fusions, dots, custom calls, collectives): its HBM operands and results.

`hbm_bytes` counts loops and conditionals once, as cost analysis does; `loop_step_bytes` gives
one iteration of each while loop (its body and whatever the body calls; a conditional's
branches all counted). Estimates, stated as such.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id",
         "replica-id", "iota",
         "while", "conditional", "call"}  # control flow: what moves is in the computations it runs


def _arrays(shape: str) -> list[tuple[float, bool]]:
    """(bytes, in HBM) of each array in a (tuple) shape string."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        n = 1
        for d in dims.split(","):
            if d:
                n *= int(d)
        out.append((n * _DTYPE_BYTES[dtype], "S(" not in (layout or "")))
    return out


def _hbm(shape: str) -> float:
    return sum(b for b, hbm in _arrays(shape) if hbm)


def _split_shape_op(rest: str) -> tuple[str, str, str]:
    """(result shape, opcode, operand text) of an instruction's right-hand side."""
    depth, i = 0, 0
    for i, ch in enumerate(rest):  # the shape ends at the first space outside brackets
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == " " and depth == 0:
            break
    shape, tail = rest[:i], rest[i + 1:]
    m = re.match(r"([\w\-]+)\((.*)", tail)
    if not m:
        return shape, "", ""
    op, args = m.group(1), m.group(2)
    depth = 1
    for j, ch in enumerate(args):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return shape, op, args[:j]
    return shape, op, args


_PARTIAL_READS = {"slice", "dynamic-slice", "gather"}


def _array_bytes(shape: str) -> float:
    return sum(b for b, _ in _arrays(shape))


class _Instr(NamedTuple):
    name: str
    shape: str      # the result shape, layouts included
    op: str
    operands: list  # operand instruction names
    line: str
    root: bool


def _computations(hlo_text: str) -> dict[str, list[_Instr]]:
    """{computation name: its instructions in order} (computations start unindented)."""
    out: dict[str, list[_Instr]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if header:
            current = out.setdefault(header.group(1), [])
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, rest = m.groups()
            shape, op, args = _split_shape_op(rest)
            current.append(_Instr(name, shape, op, re.findall(r"%([\w.\-]+)", args), rest,
                                  line.lstrip().startswith("ROOT ")))
    return out


def _fusion_operands(instrs: list[_Instr], comps: dict | None = None,
                     memo: dict | None = None) -> tuple[dict[int, float], dict[int, float]]:
    """For a fusion's body: ({parameter index: bytes read} for each parameter that is only sliced
    or gathered from, directly or inside a nested fusion, {parameter index: bytes of the update}
    for a parameter the body updates in place: its root is a dynamic-update-slice of it).
    `comps` (all computations) lets nested fusions be looked into; `memo` caches per computation."""
    comps, memo = comps or {}, {} if memo is None else memo
    shapes = {i.name: i.shape for i in instrs}
    params = {i.name: int(re.search(r"parameter\((\d+)\)", i.line).group(1)) for i in instrs if i.op == "parameter"}
    uses: dict[str, list[_Instr]] = {}
    for i in instrs:
        for k, a in enumerate(i.operands):
            uses.setdefault(a, []).append((i, k))
    root = next((i for i in instrs if i.root), None)

    def taken(c: _Instr, k: int) -> float | None:
        """Bytes consumer `c` takes out of its operand `k` when it reads only part of it."""
        if c.op in _PARTIAL_READS and k == 0:
            return _array_bytes(c.shape)
        called = re.search(r"calls=%([\w.\-]+)", c.line) if c.op == "fusion" else None
        if called and called.group(1) in comps:
            if called.group(1) not in memo:
                memo[called.group(1)] = _fusion_operands(comps[called.group(1)], comps, memo)
            return memo[called.group(1)][0].get(k)
        return None

    def sliced(consumers):
        return all(taken(c, k) is not None for c, k in consumers)

    partial, inplace = {}, {}
    for pname, index in params.items():
        consumers = uses.get(pname, [])
        if root is not None and root.op == "dynamic-update-slice" and root.operands[:1] == [pname]:
            if sliced([(c, k) for c, k in consumers if c is not root]) and len(root.operands) > 1:
                inplace[index] = _array_bytes(shapes.get(root.operands[1], ""))
        elif consumers and sliced(consumers):
            partial[index] = sum(taken(c, k) for c, k in consumers)
    return partial, inplace


def hbm_bytes(hlo_text: str) -> float:
    """HBM bytes moved by the program whose optimized HLO text this is (see the module doc)."""
    return sum(b for b, *_ in hbm_breakdown(hlo_text))


_CALLED = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)"
                     r"|branch_computations=\{([^}]*)\}")


def loop_step_bytes(hlo_text: str) -> dict[str, float | None]:
    """{while body: HBM bytes of one iteration} for each while loop of the program: the body's
    instructions and those of every computation it calls; None for a loop whose body runs a loop
    of its own (its trip count is not in the HLO, so one iteration cannot be counted)."""
    comps = _computations(hlo_text)
    calls = {c: {called for i in instrs for one, many in _CALLED.findall(i.line)
                 for called in ([one] if one else re.findall(r"%([\w.\-]+)", many))}
             for c, instrs in comps.items()}
    per_comp: dict[str, float] = {}
    for moved, _, _, comp in hbm_breakdown(hlo_text):
        per_comp[comp] = per_comp.get(comp, 0.0) + moved
    out = {}
    bodies = re.findall(r"\bwhile\([^\n]*\bbody=%([\w.\-]+)", hlo_text)
    for body in bodies:
        seen, todo = set(), [body]
        while todo:
            c = todo.pop()
            if c not in seen:
                seen.add(c)
                todo.extend(calls.get(c, ()))
        nested = (seen - {body}) & set(bodies)
        out[body] = None if nested else sum(per_comp.get(c, 0.0) for c in seen)
    return out


def hbm_breakdown(hlo_text: str) -> list[tuple[float, str, str, str]]:
    """(HBM bytes, opcode, instruction name, computation) of each instruction that moves any,
    largest first."""
    bodies = set(re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", hlo_text))
    async_calls = set(re.findall(r"async-start\([^\n]*calls=%([\w.\-]+)", hlo_text))
    bodies -= async_calls
    comps = _computations(hlo_text)
    copied = re.findall(r"copy-start\(%([\w.\-]+)\)(.*)", hlo_text)
    prefetch_only = {a for a, tail in copied if "cross_program_prefetch" in tail}
    prefetch_only -= {a for a, tail in copied if "cross_program_prefetch" not in tail}
    out, fusions = [], {}
    for current, instrs in comps.items():
        if current in bodies:
            continue
        shapes = {i.name: i.shape for i in instrs}
        for name, shape, op, names, rest, _ in instrs:
            if op in _FREE or not op:
                continue
            moved = _moved(shape, op, names, rest, shapes, comps, prefetch_only, fusions)
            if moved:
                out.append((moved, op, name, current))
    return sorted(out, reverse=True)


def _moved(shape, op, names, rest, shapes, comps, prefetch_only, fusions) -> float:
    """HBM bytes one instruction moves (the rules of the module doc); `fusions` memoizes
    `_fusion_operands` per fused computation."""
    operands = [shapes.get(a, "") for a in names]
    if op == "copy-start" and "cross_program_prefetch" in rest and names and names[0] not in prefetch_only:
        return 0.0  # the same operand is copied again where it is used
    if op == "fusion":
        called = re.search(r"calls=%([\w.\-]+)", rest)
        if called and called.group(1) not in fusions:
            fusions[called.group(1)] = _fusion_operands(comps.get(called.group(1), []), comps, fusions)
        partial, inplace = fusions[called.group(1)] if called else ({}, {})
        read = sum(0.0 if i in inplace else min(_hbm(s), partial.get(i, float("inf"))) for i, s in enumerate(operands))
        # An in-place update writes (and reads around) its slot, not the whole buffer.
        return read + (2 * sum(inplace.values()) if inplace else _hbm(shape))
    if op.endswith("-start"):
        # Reads what it moves out of HBM: a slice-start only its slice (the on-chip array of its
        # result), a copy-start the whole operand.
        read = sum(_hbm(s) for s in operands)
        onchip = [b for b, hbm in _arrays(shape) if not hbm and b > 8]
        return min(read, max(onchip)) if onchip else read
    if op.endswith("-done"):
        return _hbm(shape)
    if op == "dynamic-update-slice":
        return 2 * (_hbm(operands[1]) if len(operands) > 1 else 0.0)
    return sum(_hbm(s) for s in operands) + _hbm(shape)
