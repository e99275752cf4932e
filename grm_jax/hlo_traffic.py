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
- parameters, constants, tuples, bitcasts and tuple reads move nothing;
- anything else (fusions, dots, custom calls, collectives): its HBM operands and results.

Loops and conditionals are counted once, as cost analysis does. An estimate, stated as such.
"""

from __future__ import annotations

import re

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id",
         "replica-id", "iota"}


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


def hbm_bytes(hlo_text: str) -> float:
    """HBM bytes moved by the program whose optimized HLO text this is (see the module doc)."""
    bodies = set(re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", hlo_text))
    async_calls = set(re.findall(r"async-start\([^\n]*calls=%([\w.\-]+)", hlo_text))
    bodies -= async_calls
    total, current, shapes = 0.0, None, {}
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)  # computations start unindented
        if header:
            current, shapes = header.group(1), {}
            continue
        m = _INSTR.match(line)
        if not m or current is None:
            continue
        name, rest = m.groups()
        shape, op, args = _split_shape_op(rest)
        shapes[name] = shape
        if current in bodies or op in _FREE or not op:
            continue
        operands = [shapes.get(a, "") for a in re.findall(r"%([\w.\-]+)", args)]
        if op.endswith("-start"):
            # Reads what it moves out of HBM: a slice-start only its slice (the on-chip array of
            # its result), a copy-start the whole operand.
            read = sum(_hbm(s) for s in operands)
            onchip = [b for b, hbm in _arrays(shape) if not hbm and b > 8]
            total += min(read, max(onchip)) if onchip else read
        elif op.endswith("-done"):
            total += _hbm(shape)
        elif op == "dynamic-update-slice":
            total += 2 * (_hbm(operands[1]) if len(operands) > 1 else 0.0)
        else:
            total += sum(_hbm(s) for s in operands) + _hbm(shape)
    return total
