"""The 2:4 proximal operator as one fused Triton kernel, for CUDA tensors.

The same exact operator, and the same choices, as `_prox24.c` (whose header has the math) and
`prox._prox_groups_torch`: the 2-sparse candidate (a0, a1, 0, 0); on the sorted supports
{0,1,2,3} and {0,1,2}, two rounds of the stationarity map bound every local minimum in
[lo, hi], and a support is searched only where those bounds leave room for a minimum that can
beat the best candidate so far (Euler's closed-form objective at hi; on {0,1,2} also the
"gain" bound and the condition that raising w3 must not pay); a bound must win by a slack
relative to the group's scale (1e-12 in fp64, 1e-5 in fp32) so rounding never skips a search
that would win. Each search is coordinate minimisation started at the middle of the bounds,
(hi + lo) / 2, and where the 3-support search ends on the boundary the plus-branch bisection
gives the interior stationary point. Unlike the C kernel, slow searches get no Newton
polishing: they sweep until they converge or reach the cap of 1000 sweeps.

One group per lane, BLOCK groups per program: each group is read once, solved in registers
and written back in the input's dtype, so half-precision weights need no fp32 copy of the
whole tensor and the torch solver's many launches per sweep are avoided. fp16/bf16/fp32 are
solved in fp32, fp64 in fp64. Each group stops its coordinate minimisation when it has
converged; a program's loop ends when all its groups have.

Triton is imported, and the kernel decorated, on first use: `import proxsparse_ao.prox` does
not need Triton, and TRITON_INTERPRET=1 set before the first call runs the kernel on CPU
tensors through Triton's interpreter (the tests). The kernel calls Triton builtins only, not
library @jit functions such as tl.max, which are bound when triton is imported and so would
not be interpreted where Triton was imported before the variable was set.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

_BLOCK = 32  # groups per program, one per thread: a program's loop runs until its slowest group converges
# (on an H200, 4096x4096 fp32, lam 0.1 / 1 / 10: 0.20 / 0.70 / 0.28 ms at 32, 0.22 / 1.09 / 0.38 at 64)
_MAX_SWEEPS = 1000
_BISECTIONS = 200
# A group has converged when its sweep changes it by at most REL_TOL * max|z|; in fp32 that
# is two ulps of the largest entry, below which a sweep moves entries by rounding alone.
_REL_TOL = {torch.float64: 1e-13, torch.float32: 2.0**-22}
_SLACK = {torch.float64: 1e-12, torch.float32: 1e-5}  # as prox._SLACK and the C kernel's SLACK
_BOUND_ROUNDS = 2  # rounds of the stationarity map that bound the local minima, as in the C kernel
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # the dtypes the kernel loads and stores
_kernel: Any = None


@functools.cache
def available() -> bool:
    """Whether Triton can be imported (the kernel itself runs on CUDA, or anywhere interpreted)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def prox24_triton(groups_in: torch.Tensor, groups_out: torch.Tensor, lam: float, *, block: int = _BLOCK) -> None:
    """groups_out = prox of lam * R on every row of the [G, 4] contiguous groups_in (lam > 0).

    groups_out may be groups_in itself; rows with at most two non-zeros are copied as they are.
    `block` groups go to a program (a power of two >= 32, one warp per 32); every group
    converges on its own, so the result does not depend on it.
    """
    if not 0 < lam < float("inf"):
        raise ValueError(f"prox24_triton: lam must be finite and > 0, got {lam!r}")
    if block < 32 or block & (block - 1):
        raise ValueError(f"prox24_triton: block must be a power of two >= 32, got {block}")
    if groups_in.dtype not in DTYPES:
        raise TypeError(f"prox24_triton: unsupported dtype {groups_in.dtype}")
    for name, groups in (("groups_in", groups_in), ("groups_out", groups_out)):
        if groups.dim() != 2 or groups.shape[1] != 4 or not groups.is_contiguous():
            raise ValueError(f"prox24_triton: {name} must be a contiguous [G, 4] tensor, got {tuple(groups.shape)}")
    if groups_out.shape != groups_in.shape or groups_out.dtype != groups_in.dtype or groups_out.device != groups_in.device:
        raise ValueError("prox24_triton: groups_out must match groups_in in shape, dtype and device")
    count = groups_in.shape[0]
    if count == 0:
        return
    import triton
    import triton.language as tl

    compute = torch.float64 if groups_in.dtype == torch.float64 else torch.float32
    _jit_kernel()[(triton.cdiv(count, block),)](
        groups_in,
        groups_out,
        count,
        float(lam),
        BLOCK=block,
        COMPUTE=tl.float64 if compute == torch.float64 else tl.float32,
        REL_TOL=_REL_TOL[compute],
        SLACK=_SLACK[compute],
        BOUND_ROUNDS=_BOUND_ROUNDS,
        MAX_SWEEPS=_MAX_SWEEPS,
        BISECTIONS=_BISECTIONS,
        num_warps=block // 32,
    )


def _jit_kernel() -> Any:
    """The kernel, decorated with triton.jit on first use (the interpreter setting is read then)."""
    global _kernel, tl
    if _kernel is None:
        import triton
        import triton.language as tl  # the kernel's body resolves `tl` in this module's globals

        _kernel = triton.jit(_prox24_groups)
    return _kernel


def _prox24_groups(
    src,
    dst,
    groups,
    lam_arg: tl.float64,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
    REL_TOL: tl.constexpr,
    SLACK: tl.constexpr,
    BOUND_ROUNDS: tl.constexpr,
    MAX_SWEEPS: tl.constexpr,
    BISECTIONS: tl.constexpr,
):
    """Triton kernel: BLOCK groups of 4 per program; sorted magnitudes a0 >= a1 >= a2 >= a3."""
    lane = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = lane < groups
    z0 = tl.load(src + 4 * lane, mask=valid, other=0.0)
    z1 = tl.load(src + 4 * lane + 1, mask=valid, other=0.0)
    z2 = tl.load(src + 4 * lane + 2, mask=valid, other=0.0)
    z3 = tl.load(src + 4 * lane + 3, mask=valid, other=0.0)
    x0, x1, x2, x3 = z0.to(COMPUTE), z1.to(COMPUTE), z2.to(COMPUTE), z3.to(COMPUTE)
    v0, v1, v2, v3 = tl.abs(x0), tl.abs(x1), tl.abs(x2), tl.abs(x3)
    zero = tl.full([BLOCK], 0.0, COMPUTE)

    # rank_i = #{j: v_j > v_i} + #{j < i: v_j == v_i}: descending, the lower position first on ties
    r0 = (v1 > v0).to(tl.int32) + (v2 > v0).to(tl.int32) + (v3 > v0).to(tl.int32)
    r1 = (v0 >= v1).to(tl.int32) + (v2 > v1).to(tl.int32) + (v3 > v1).to(tl.int32)
    r2 = (v0 >= v2).to(tl.int32) + (v1 >= v2).to(tl.int32) + (v3 > v2).to(tl.int32)
    r3 = (v0 >= v3).to(tl.int32) + (v1 >= v3).to(tl.int32) + (v2 >= v3).to(tl.int32)
    a0 = tl.where(r0 == 0, v0, tl.where(r1 == 0, v1, tl.where(r2 == 0, v2, v3)))
    a1 = tl.where(r0 == 1, v0, tl.where(r1 == 1, v1, tl.where(r2 == 1, v2, v3)))
    a2 = tl.where(r0 == 2, v0, tl.where(r1 == 2, v1, tl.where(r2 == 2, v2, v3)))
    a3 = tl.where(r0 == 3, v0, tl.where(r1 == 3, v1, tl.where(r2 == 3, v2, v3)))
    # Solve the group scaled to a0 = 1 (prox(c z, lam) = c prox(z, c lam)), so that squares of
    # tiny or huge weights neither underflow nor overflow; the result is scaled back at the end.
    top = a0
    divisor = tl.where(top > 0, top, 1.0)  # an all-zero group stays zero
    m0, m1, m2, m3 = a0, a1, a2, a3  # the magnitudes, which no result entry exceeds
    a0, a1, a2, a3 = a0 / divisor, a1 / divisor, a2 / divisor, a3 / divisor
    lam = tl.full([BLOCK], lam_arg, COMPUTE) * top
    cap = 1.0 / tl.where(lam > 0, lam, 1.0)  # a local minimum has lam * w_k <= 1 (lam 0: no cap below a0 = 1)
    tol = REL_TOL * a0
    half_norm = 0.5 * (a0 * a0 + a1 * a1 + a2 * a2 + a3 * a3)
    obj_slack = SLACK * half_norm  # how much a bound must win by to skip a search

    # candidate (a0, a1, 0, 0)
    b0, b1, b2, b3 = a0, a1, zero, zero
    f2 = 0.5 * (a2 * a2 + a3 * a3)
    best_obj = f2

    # 4-support bounds: lo from hi by stationarity, hi from lo by stationarity and by the pair
    # condition lam (w_i + w_j) <= 1 (h_i <= 1/lam - the largest other lo)
    h0, h1, h2, h3 = tl.minimum(a0, cap), tl.minimum(a1, cap), tl.minimum(a2, cap), tl.minimum(a3, cap)
    l0, l1, l2, l3 = zero, zero, zero, zero
    for _round in tl.static_range(BOUND_ROUNDS):
        l0 = tl.maximum(a0 - lam * (h1 * h2 + h1 * h3 + h2 * h3), 0.0)
        l1 = tl.maximum(a1 - lam * (h0 * h2 + h0 * h3 + h2 * h3), 0.0)
        l2 = tl.maximum(a2 - lam * (h0 * h1 + h0 * h3 + h1 * h3), 0.0)
        l3 = tl.maximum(a3 - lam * (h0 * h1 + h0 * h2 + h1 * h2), 0.0)
        m01, m23 = tl.maximum(l0, l1), tl.maximum(l2, l3)
        h0 = tl.minimum(h0, tl.minimum(a0 - lam * (l1 * l2 + l1 * l3 + l2 * l3), cap - tl.maximum(l1, m23)))
        h1 = tl.minimum(h1, tl.minimum(a1 - lam * (l0 * l2 + l0 * l3 + l2 * l3), cap - tl.maximum(l0, m23)))
        h2 = tl.minimum(h2, tl.minimum(a2 - lam * (l0 * l1 + l0 * l3 + l1 * l3), cap - tl.maximum(l3, m01)))
        h3 = tl.minimum(h3, tl.minimum(a3 - lam * (l0 * l1 + l0 * l2 + l1 * l2), cap - tl.maximum(l2, m01)))
    # the objective at a local minimum is at least Euler's f(hi); search only where the bounds
    # leave room for one (a non-empty box with hi > 0) and f(hi) may beat the best
    euler = half_norm + h0 * (h0 / 6 - a0 * 2 / 3) + h1 * (h1 / 6 - a1 * 2 / 3)
    euler += h2 * (h2 / 6 - a2 * 2 / 3) + h3 * (h3 / 6 - a3 * 2 / 3)
    room = tl.minimum(tl.minimum(h0 - l0, h1 - l1), tl.minimum(h2 - l2, h3 - l3)) + SLACK * a0
    lowest = tl.minimum(tl.minimum(h0, h1), tl.minimum(h2, h3))
    try4 = valid & (lowest > 0) & (tl.minimum(room, best_obj + obj_slack - euler) > 0)

    # coordinate minimisation on {0,1,2,3} from the middle of the bounds, each group until it converges
    w0, w1, w2, w3 = 0.5 * (h0 + l0), 0.5 * (h1 + l1), 0.5 * (h2 + l2), 0.5 * (h3 + l3)
    moving = try4
    sweeps = 0
    # any lane still moving: tl.max's own combine, which the interpreter also knows
    active = tl.reduce(moving.to(tl.int32), 0, tl.standard._elementwise_max)
    while active > 0:
        n3 = tl.maximum(a3 - lam * (w0 * w1 + w0 * w2 + w1 * w2), 0.0)
        n2 = tl.maximum(a2 - lam * (w0 * w1 + (w0 + w1) * n3), 0.0)
        n1 = tl.maximum(a1 - lam * (w0 * (n2 + n3) + n2 * n3), 0.0)
        n0 = tl.maximum(a0 - lam * (n1 * (n2 + n3) + n2 * n3), 0.0)
        change = tl.abs(n0 - w0) + tl.abs(n1 - w1) + tl.abs(n2 - w2) + tl.abs(n3 - w3)
        w0, w1 = tl.where(moving, n0, w0), tl.where(moving, n1, w1)
        w2, w3 = tl.where(moving, n2, w2), tl.where(moving, n3, w3)
        sweeps += 1
        moving = moving & (change > tol) & (sweeps < MAX_SWEEPS)
        active = tl.reduce(moving.to(tl.int32), 0, tl.standard._elementwise_max)
    d0, d1, d2, d3 = w0 - a0, w1 - a1, w2 - a2, w3 - a3
    obj = 0.5 * (d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3) + lam * (w0 * w1 * (w2 + w3) + w2 * w3 * (w0 + w1))
    better = try4 & (obj < best_obj)
    b0, b1, b2, b3 = tl.where(better, w0, b0), tl.where(better, w1, b1), tl.where(better, w2, b2), tl.where(better, w3, b3)
    best_obj = tl.where(better, obj, best_obj)

    # 3-support bounds (lam w_k <= 1 is the cap; no pair condition on 3 entries)
    h0, h1, h2 = tl.minimum(a0, cap), tl.minimum(a1, cap), tl.minimum(a2, cap)
    for _round in tl.static_range(BOUND_ROUNDS):
        l0 = tl.maximum(a0 - lam * h1 * h2, 0.0)
        l1 = tl.maximum(a1 - lam * h0 * h2, 0.0)
        l2 = tl.maximum(a2 - lam * h0 * h1, 0.0)
        h0 = tl.minimum(h0, a0 - lam * l1 * l2)
        h1 = tl.minimum(h1, a1 - lam * l0 * l2)
        h2 = tl.minimum(h2, a2 - lam * l0 * l1)
    # a local minimum has f = f2 - w2^2 (1 - lam^2 (w0^2 + w1^2)) / 2 >= the "gain" bound, and
    # f >= Euler's f(hi); it is the global minimum only if raising w3 does not pay,
    # a3 <= lam e2(w0, w1, w2) <= lam e2(hi)
    gain = 1.0 - lam * lam * (l0 * l0 + l1 * l1)
    euler = half_norm + h0 * (h0 / 6 - a0 * 2 / 3) + h1 * (h1 / 6 - a1 * 2 / 3) + h2 * (h2 / 6 - a2 * 2 / 3)
    bound = tl.maximum(f2 - 0.5 * h2 * h2 * tl.maximum(gain, 0.0), euler)
    room = tl.minimum(tl.minimum(h0 - l0, h1 - l1), h2 - l2) + SLACK * a0
    lowest = tl.minimum(tl.minimum(h0, h1), h2)
    w3_pays = a3 - lam * (h0 * h1 + h0 * h2 + h1 * h2) * (1.0 + SLACK)
    margin = tl.minimum(tl.minimum(room, -w3_pays), best_obj + obj_slack - bound)
    try3 = valid & (lowest > 0) & (margin > 0)

    # coordinate minimisation on {0,1,2} (w3 = 0) from the middle of the bounds
    w0, w1, w2 = 0.5 * (h0 + l0), 0.5 * (h1 + l1), 0.5 * (h2 + l2)
    moving = try3
    sweeps = 0
    active = tl.reduce(moving.to(tl.int32), 0, tl.standard._elementwise_max)
    while active > 0:
        n2 = tl.maximum(a2 - lam * w0 * w1, 0.0)
        n1 = tl.maximum(a1 - lam * w0 * n2, 0.0)
        n0 = tl.maximum(a0 - lam * n1 * n2, 0.0)
        change = tl.abs(n0 - w0) + tl.abs(n1 - w1) + tl.abs(n2 - w2)
        w0, w1, w2 = tl.where(moving, n0, w0), tl.where(moving, n1, w1), tl.where(moving, n2, w2)
        sweeps += 1
        moving = moving & (change > tol) & (sweeps < MAX_SWEEPS)
        active = tl.reduce(moving.to(tl.int32), 0, tl.standard._elementwise_max)
    d0, d1, d2 = w0 - a0, w1 - a1, w2 - a2
    obj = 0.5 * (d0 * d0 + d1 * d1 + d2 * d2 + a3 * a3) + lam * w0 * w1 * w2
    better = try3 & (obj < best_obj)
    b0, b1, b2, b3 = tl.where(better, w0, b0), tl.where(better, w1, b1), tl.where(better, w2, b2), tl.where(better, 0.0, b3)
    best_obj = tl.where(better, obj, best_obj)

    # Where the 3-support search ended on the boundary (a tied group stalls there), the interior
    # stationary point on the branch w_i = (a_i + sqrt(a_i^2 - 4t)) / 2, t = lam w0 w1 w2, by
    # bisection on t; the residual lam w0 w1 w2 - t is decreasing.
    lo = zero
    hi = 0.25 * a2 * a2
    p0 = 0.5 * (a0 + tl.sqrt(tl.maximum(a0 * a0 - 4.0 * hi, 0.0)))
    p1 = 0.5 * (a1 + tl.sqrt(tl.maximum(a1 * a1 - 4.0 * hi, 0.0)))
    p2 = 0.5 * (a2 + tl.sqrt(tl.maximum(a2 * a2 - 4.0 * hi, 0.0)))
    branch = try3 & ((w0 == 0) | (w1 == 0) | (w2 == 0)) & (lam * p0 * p1 * p2 - hi <= 0)
    if tl.reduce(branch.to(tl.int32), 0, tl.standard._elementwise_max) > 0:
        for _ in range(BISECTIONS):
            mid = 0.5 * (lo + hi)
            p0 = 0.5 * (a0 + tl.sqrt(tl.maximum(a0 * a0 - 4.0 * mid, 0.0)))
            p1 = 0.5 * (a1 + tl.sqrt(tl.maximum(a1 * a1 - 4.0 * mid, 0.0)))
            p2 = 0.5 * (a2 + tl.sqrt(tl.maximum(a2 * a2 - 4.0 * mid, 0.0)))
            up = lam * p0 * p1 * p2 - mid > 0
            lo, hi = tl.where(up, mid, lo), tl.where(up, hi, mid)
        p0 = 0.5 * (a0 + tl.sqrt(tl.maximum(a0 * a0 - 4.0 * lo, 0.0)))
        p1 = 0.5 * (a1 + tl.sqrt(tl.maximum(a1 * a1 - 4.0 * lo, 0.0)))
        p2 = 0.5 * (a2 + tl.sqrt(tl.maximum(a2 * a2 - 4.0 * lo, 0.0)))
        d0, d1, d2 = p0 - a0, p1 - a1, p2 - a2
        obj = 0.5 * (d0 * d0 + d1 * d1 + d2 * d2 + a3 * a3) + lam * p0 * p1 * p2
        better = branch & (obj < best_obj)
        b0, b1, b2, b3 = tl.where(better, p0, b0), tl.where(better, p1, b1), tl.where(better, p2, b2), tl.where(better, 0.0, b3)

    # back to the input's scale, positions and signs; +0.0 for zeros; at most two non-zeros: unchanged
    b0, b1 = tl.minimum(b0 * top, m0), tl.minimum(b1 * top, m1)  # rounding of the scale never
    b2, b3 = tl.minimum(b2 * top, m2), tl.minimum(b3 * top, m3)  # lifts an entry above its input
    untouched = (x0 != 0).to(tl.int32) + (x1 != 0).to(tl.int32) + (x2 != 0).to(tl.int32) + (x3 != 0).to(tl.int32) <= 2
    s0 = tl.where(r0 == 0, b0, tl.where(r0 == 1, b1, tl.where(r0 == 2, b2, b3)))
    s1 = tl.where(r1 == 0, b0, tl.where(r1 == 1, b1, tl.where(r1 == 2, b2, b3)))
    s2 = tl.where(r2 == 0, b0, tl.where(r2 == 1, b1, tl.where(r2 == 2, b2, b3)))
    s3 = tl.where(r3 == 0, b0, tl.where(r3 == 1, b1, tl.where(r3 == 2, b2, b3)))
    out_ty = dst.dtype.element_ty
    y0 = tl.where(s0 == 0, 0.0, tl.where(x0 < 0, -s0, s0)).to(out_ty)
    y1 = tl.where(s1 == 0, 0.0, tl.where(x1 < 0, -s1, s1)).to(out_ty)
    y2 = tl.where(s2 == 0, 0.0, tl.where(x2 < 0, -s2, s2)).to(out_ty)
    y3 = tl.where(s3 == 0, 0.0, tl.where(x3 < 0, -s3, s3)).to(out_ty)
    tl.store(dst + 4 * lane, tl.where(untouched, z0, y0), mask=valid)
    tl.store(dst + 4 * lane + 1, tl.where(untouched, z1, y1), mask=valid)
    tl.store(dst + 4 * lane + 2, tl.where(untouched, z2, y2), mask=valid)
    tl.store(dst + 4 * lane + 3, tl.where(untouched, z3, y3), mask=valid)
