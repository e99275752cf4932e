"""The HBM-traffic reading of optimized TPU HLO (grm_jax.hlo_traffic) on hand-written programs in
the syntax the TPU compiler prints. (A compiled decode step is checked in test_aot.py.)"""

from grm_jax.hlo_traffic import hbm_bytes, loop_step_bytes

TABLE = 32000 * 4608 * 2   # bf16[32000,4608]
ROWS = 64 * 4608 * 2       # bf16[64,4608]
W = 4608 * 4608 * 2        # bf16[4608,4608]

GATHER = """\
%fused_computation (param_0.2: bf16[32000,4608], param_1.10: s32[64]) -> bf16[64,4608] {
  %param_0.2 = bf16[32000,4608]{1,0:T(8,128)(2,1)} parameter(0)
  %param_1.10 = s32[64]{0:T(128)} parameter(1)
  ROOT %gather.10 = bf16[64,4608]{1,0:T(8,128)(2,1)} gather(%param_0.2, %param_1.10), offset_dims={1}, slice_sizes={1,4608}
}

%fused_computation.1 (param_0.5: bf16[32000,4608], param_1.3: bf16[64,4608]) -> f32[64,32000] {
  %param_0.5 = bf16[32000,4608]{1,0:T(8,128)(2,1)} parameter(0)
  %param_1.3 = bf16[64,4608]{1,0:T(8,128)(2,1)} parameter(1)
  ROOT %dot.1 = f32[64,32000]{1,0:T(8,128)} dot(%param_1.3, %param_0.5), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}

ENTRY %main (param.4: bf16[32000,4608], param.1: s32[64]) -> f32[64,32000] {
  %param.4 = bf16[32000,4608]{1,0:T(8,128)(2,1)} parameter(0)
  %param.1 = s32[64]{0:T(128)} parameter(1)
  %gather_fusion = bf16[64,4608]{1,0:T(8,128)(2,1)} fusion(%param.4, %param.1), kind=kCustom, calls=%fused_computation
  ROOT %fusion.9 = f32[64,32000]{1,0:T(8,128)} fusion(%param.4, %gather_fusion), kind=kOutput, calls=%fused_computation.1
}
"""


def test_an_embedding_lookup_reads_its_rows_and_the_lm_head_the_whole_table():
    lookup = 64 * 4 + ROWS + ROWS            # indices, gathered rows, result written
    head = TABLE + ROWS + 64 * 32000 * 4     # table, hidden states, f32 logits written
    assert hbm_bytes(GATHER) == lookup + head


def _copies(prefetch_copied_again: bool) -> str:
    again = ("  %copy-start.1 = (bf16[4608,4608]{1,0:T(8,128)(2,1)S(1)}, bf16[4608,4608]{1,0:T(8,128)(2,1)}, "
             "u32[]{:S(2)}) copy-start(%param.18)\n"
             "  %copy-done.1 = bf16[4608,4608]{1,0:T(8,128)(2,1)S(1)} copy-done(%copy-start.1)\n"
             if prefetch_copied_again else "")
    return f"""\
ENTRY %main (param.18: bf16[4608,4608], param.2: bf16[64,1,8,128], param.3: bf16[64,5120,8,128]) -> bf16[4608,4608] {{
  %param.18 = bf16[4608,4608]{{1,0:T(8,128)(2,1)}} parameter(0)
  %param.2 = bf16[64,1,8,128]{{3,2,1,0:T(8,128)(2,1)}} parameter(1)
  %param.3 = bf16[64,5120,8,128]{{3,2,1,0:T(8,128)(2,1)}} parameter(2)
  %copy-start = (bf16[4608,4608]{{1,0:T(8,128)(2,1)S(1)}}, bf16[4608,4608]{{1,0:T(8,128)(2,1)}}, u32[]{{:S(2)}}) copy-start(%param.18), cross_program_prefetch_index=0
  %copy-done = bf16[4608,4608]{{1,0:T(8,128)(2,1)S(1)}} copy-done(%copy-start)
{again}  %dynamic-update-slice.1 = bf16[64,5120,8,128]{{3,2,1,0:T(8,128)(2,1)}} dynamic-update-slice(%param.3, %param.2, %c, %c, %c, %c)
  ROOT %copy.2 = bf16[4608,4608]{{1,0:T(8,128)(2,1)}} copy(%copy-done)
}}
"""


def test_copies_on_chip_count_their_hbm_side_and_a_prefetch_once():
    slot = 2 * 64 * 8 * 128 * 2      # in-place cache update: read-modify-write of the new slot only
    written = W                      # the final copy from VMEM back to HBM
    assert hbm_bytes(_copies(False)) == W + slot + written          # a lone prefetch is the read
    assert hbm_bytes(_copies(True)) == W + slot + written           # copied again: counted once


CACHE = 32 * 8 * 2048 * 128 * 2   # bf16[32,8,2048,128]: one layer's keys
SLOT = 32 * 8 * 1 * 128 * 2       # bf16[32,8,1,128]: one new token's

DECODE = """\
%fused_write (param_0.1: bf16[32,8,2048,128], param_1.1: s32[], param_2.1: bf16[32,8,1,128]) -> bf16[32,8,2048,128] {
  %param_0.1 = bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} parameter(0)
  %param_2.1 = bf16[32,8,1,128]{3,0,1,2:T(8,128)(2,1)S(1)} parameter(2)
  %param_1.1 = s32[]{:T(128)} parameter(1)
  %c0 = s32[]{:T(128)} constant(0)
  ROOT %dynamic-update-slice.1 = bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} dynamic-update-slice(%param_0.1, %param_2.1, %c0, %c0, %param_1.1, %c0)
}

%fused_read (param_0.2: bf16[32,8,2048,128], param_1.2: bf16[32,8,128]) -> f32[32,8,1280] {
  %param_0.2 = bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} parameter(0)
  %param_1.2 = bf16[32,8,128]{2,1,0:T(8,128)(2,1)S(1)} parameter(1)
  %slice.1 = bf16[32,8,1280,128]{3,0,1,2:T(8,128)(2,1)} slice(%param_0.2), slice={[0:32], [0:8], [0:1280], [0:128]}
  ROOT %dot.2 = f32[32,8,1280]{2,1,0:T(8,128)S(1)} dot(%param_1.2, %slice.1), lhs_batch_dims={0,1}, rhs_batch_dims={0,1}
}

%body (p: (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128])) -> (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128]) {
  %p = (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128]) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %cache = bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} get-tuple-element(%p), index=1
  %new = bf16[32,8,1,128]{3,0,1,2:T(8,128)(2,1)S(1)} get-tuple-element(%p), index=2
  %q = bf16[32,8,128]{2,1,0:T(8,128)(2,1)S(1)} get-tuple-element(%p), index=3
  %written = bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} fusion(%cache, %i, %new), kind=kLoop, calls=%fused_write
  %scores = f32[32,8,1280]{2,1,0:T(8,128)S(1)} fusion(%written, %q), kind=kOutput, calls=%fused_read
  ROOT %t = (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128]) tuple(%i, %written, %new, %q)
}

%cond (p.1: (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128])) -> pred[] {
  %p.1 = (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128]) parameter(0)
  ROOT %f = pred[]{:T(512)} constant(false)
}

ENTRY %main (a: (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128])) -> (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128]) {
  %a = (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128]) parameter(0)
  ROOT %w = (s32[], bf16[32,8,2048,128], bf16[32,8,1,128], bf16[32,8,128]) while(%a), condition=%cond, body=%body
}
"""


def test_a_decode_step_writes_its_slot_and_reads_the_slots_it_attends_over():
    """A cache write fused in place moves its slot, not the buffer; a fused read of the first
    1,280 slots moves those; the while loop itself moves nothing beyond its body."""
    step = 2 * SLOT + CACHE * 1280 // 2048 + 4  # and the write's 4-byte slot index
    assert loop_step_bytes(DECODE) == {"body": step}
    assert hbm_bytes(DECODE) == step


# As the TPU compiler prints it for a 28-layer decode: the window is sliced by a fusion nested in
# the attention fusion, not by a slice of its own.
NESTED_READ = """\
%fused_slice (param_0.3: bf16[32,8,2048,128]) -> bf16[32,8,1280,128] {
  %param_0.3 = bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} parameter(0)
  ROOT %slice.2 = bf16[32,8,1280,128]{3,0,1,2:T(8,128)(2,1)} slice(%param_0.3), slice={[0:32], [0:8], [0:1280], [0:128]}
}

%fused_read (param_0.2: bf16[32,8,2048,128], param_1.2: bf16[32,8,128]) -> f32[32,8,1280] {
  %param_0.2 = bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} parameter(0)
  %param_1.2 = bf16[32,8,128]{2,1,0:T(8,128)(2,1)S(1)} parameter(1)
  %slice_bitcast_fusion.1 = bf16[32,8,1280,128]{3,0,1,2:T(8,128)(2,1)} fusion(%param_0.2), kind=kLoop, calls=%fused_slice
  ROOT %dot.2 = f32[32,8,1280]{2,1,0:T(8,128)S(1)} dot(%param_1.2, %slice_bitcast_fusion.1), lhs_batch_dims={0,1}, rhs_batch_dims={0,1}
}
"""


def test_a_window_sliced_by_a_nested_fusion_reads_only_the_window():
    start, end = DECODE.index("%fused_read "), DECODE.index("%body ")
    nested = DECODE[:start] + NESTED_READ + "\n" + DECODE[end:]
    assert loop_step_bytes(nested) == loop_step_bytes(DECODE) == {"body": 2 * SLOT + CACHE * 1280 // 2048 + 4}
    # The nested fusion reading its whole operand is the whole read again.
    whole = nested.replace("slice(%param_0.3), slice={[0:32], [0:8], [0:1280], [0:128]}", "copy(%param_0.3)")
    whole = whole.replace("bf16[32,8,1280,128]{3,0,1,2:T(8,128)(2,1)} copy", "bf16[32,8,2048,128]{3,0,1,2:T(8,128)(2,1)} copy")
    assert loop_step_bytes(whole)["body"] == 2 * SLOT + CACHE + 4
