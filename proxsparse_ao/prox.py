"""The proximal operator of the 2:4 regulariser, the hot inner step of ProxSparse.

    prox(z) = argmin_w 1/2 ||w - z||^2 + lam * R(w),   R(w) = sum_{i<j<k} |wi wj wk|

solved independently for every group of 4 consecutive entries along the last dimension
(EnumALM, as in the ProxSparse reference code: the best of the 2-sparse point and coordinate
minimisation on supports of 3 and 4). Bounds on every local minimum of a support skip the
searches that cannot win and start the others near their end (`_prox24.c` states the math);
where the 3-support search stalls on the boundary of a tied group, the interior stationary
point is solved for directly, which EnumALM misses. The CPU path runs a compiled per-group solver (`_prox24.c`)
split across torch's intra-op threads; CUDA tensors go to the same algorithm as one fused
Triton kernel (`_prox24_triton.py`) when Triton is installed; elsewhere, or without a C
compiler, a vectorised torch solver that iterates only on the groups that have not converged.
"""

from __future__ import annotations

import ctypes
import math
import numbers
from concurrent.futures import ThreadPoolExecutor

import torch

from . import _native, _prox24_triton

_NATIVE_DTYPES = {torch.float32: "float", torch.float64: "double"}
_CHUNK_GROUPS = 1 << 18  # groups converted at a time for bf16/fp16: bounds the fp32 scratch
_THREAD_GRAIN = 4096  # groups per thread at least; a multiple of the C kernel's chunk (2048)
# Up to this lam, a group the fp32 solvers must search has a largest entry of at least about 2e-38,
# whose reciprocal fp32 holds (they scale each group to it); beyond it, and where lam itself is inf
# in fp32 (above 3.4e38), fp32 and half weights are solved in fp64. Such a lam leaves any weight
# above about 1e-36 at its group's top two.
_FP32_LAM_LIMIT = 1e37
_MAX_SWEEPS = 1000
_REL_TOL = 1e-12
_BOUND_ROUNDS = 2
_SLACK = {torch.float64: 1e-12, torch.float32: 1e-5}  # a bound must win by this (x ||a||^2) to skip a search
_pool: ThreadPoolExecutor | None = None


def prox_2to4(weight: torch.Tensor, lam: float | torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """prox of lam * R on every group of 4 along the last dim of a 2-D float tensor.

    Signs and the magnitude order inside each group are preserved; lam = 0 is the identity
    and a large lam gives exactly 2:4. Half-precision inputs are solved in fp32 and returned
    in their own dtype (fp32 and half inputs in fp64 where lam exceeds 1e37). `lam` is any finite
    real scalar >= 0: a Python or numpy number, or a one-element tensor. `out` may be `weight` itself (see
    `prox_2to4_`) but no other memory of it. A NaN/Inf entry raises ValueError naming the first
    one; the weight is left as it was, and a separate `out` may then hold part of the result.
    The write is guarded as torch's in-place ops guard theirs (autograd cannot record the prox).
    """
    lam = _check_input(weight, lam)
    if out is None:
        out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    elif out.shape != weight.shape or out.dtype != weight.dtype or out.device != weight.device:
        raise ValueError(
            f"prox_2to4: out has shape {tuple(out.shape)} {out.dtype} on {out.device}, "
            f"expected {tuple(weight.shape)} {weight.dtype} on {weight.device}"
        )
    if not out.is_contiguous():
        raise ValueError("prox_2to4: out must be contiguous")
    _check_writable(out)
    in_place = out.data_ptr() == weight.data_ptr() and weight.is_contiguous()  # out is the weight's own memory
    overlap = not in_place and _overlaps(weight, out)
    if overlap is None:
        raise ValueError(
            "prox_2to4: out lies inside the memory range of the weight's sparse strides and may overlap it; "
            "pass a separate out"
        )
    if overlap:
        raise ValueError(
            "prox_2to4: out partly overlaps the weight in memory (some elements refer to a single memory "
            "location); pass the weight itself as out to update it in place, or a separate tensor"
        )
    if lam > _FP32_LAM_LIMIT and weight.dtype != torch.float64:
        return out.copy_(prox_2to4(weight.double(), lam))
    native = weight.device.type == "cpu" and weight.dtype in _NATIVE_DTYPES and _native.load() is not None
    # The C solver checks each chunk as it reads it; where out shares the weight's storage, a
    # late bad entry would leave the weight half updated, so the whole weight is checked first.
    if not native or lam == 0 or out.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr():
        _check_finite(weight)
    source = weight.contiguous()
    groups_in, groups_out = source.view(-1, 4), out.view(-1, 4)
    if lam == 0:
        if groups_out.data_ptr() != groups_in.data_ptr():
            groups_out.copy_(groups_in)
        return out
    if _triton_solves(source.device, source.dtype):
        _prox24_triton.prox24_triton(groups_in, groups_out, lam)
        torch.autograd.graph.increment_version(out)
    elif native:
        bad = _prox_native(groups_in, groups_out, lam)
        torch.autograd.graph.increment_version(out)  # a write autograd cannot see otherwise
        if bad is not None:
            _raise_nonfinite(weight, bad)
    elif source.dtype in (torch.float32, torch.float64):
        groups_out.copy_(_prox_groups_torch(groups_in, lam))
    else:
        for start in range(0, groups_in.shape[0], _CHUNK_GROUPS):
            chunk = groups_in[start : start + _CHUNK_GROUPS].float()
            solved = torch.empty_like(chunk)
            if chunk.device.type == "cpu" and _native.load() is not None:
                _prox_native(chunk, solved, lam)
            else:
                solved = _prox_groups_torch(chunk, lam)
            groups_out[start : start + _CHUNK_GROUPS].copy_(solved)
    return out


def prox_2to4_(weight: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """In-place `prox_2to4`: no second full copy of the weight (the form a training step uses)."""
    if not weight.is_contiguous():
        raise ValueError("prox_2to4_: the weight must be contiguous to be updated in place")
    return prox_2to4(weight, lam, out=weight)


def backend(device: torch.device | str = "cpu") -> str:
    """Which solver `prox_2to4` uses for fp32 tensors on `device`: 'native', 'triton' or 'torch'."""
    if _triton_solves(torch.device(device)):
        return "triton"
    if torch.device(device).type == "cpu" and _native.load() is not None:
        return "native"
    return "torch"


def _triton_solves(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """CUDA tensors in fp16/bf16/fp32/fp64 go to the fused Triton kernel when Triton is installed."""
    return device.type == "cuda" and dtype in _prox24_triton.DTYPES and _prox24_triton.available()


def _check_input(weight: torch.Tensor, lam: object) -> float:
    """Refuse a weight the solvers cannot take; return lam as a float."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"prox_2to4: expected a tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"prox_2to4: expected a 2-D weight [out, in], got {weight.dim()}-D shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"prox_2to4: expected a floating-point tensor, got {weight.dtype}")
    if weight.shape[-1] % 4:
        raise ValueError(f"prox_2to4: the last dimension ({weight.shape[-1]}) is not a multiple of 4")
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1:
            raise TypeError(f"prox_2to4: lam must be a real number, got a tensor of shape {tuple(lam.shape)}")
        if lam.dtype.is_complex or lam.dtype == torch.bool:
            raise TypeError(f"prox_2to4: lam must be a real number, got a tensor of dtype {lam.dtype}")
        value = float(lam.detach())
    elif isinstance(lam, numbers.Real) and not isinstance(lam, bool):  # numpy's real scalars register here
        value = float(lam)
    else:
        raise TypeError(f"prox_2to4: lam must be a real number, got {type(lam).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"prox_2to4: lam must be a finite number >= 0, got {value!r}")
    return value


def _check_writable(out: torch.Tensor) -> None:
    """Refuse the writes torch's own in-place ops refuse: the C and Triton kernels write behind
    autograd's back, so it could neither record them nor see them in a saved tensor."""
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError("prox_2to4: inplace update to inference tensor outside InferenceMode is not allowed")
    if out.requires_grad and torch.is_grad_enabled():
        if out.is_leaf:
            raise RuntimeError(
                "prox_2to4: a leaf Variable that requires grad is being used in an in-place operation; "
                "call it under torch.no_grad()"
            )
        raise RuntimeError(
            "prox_2to4: out requires grad and autograd cannot record the prox; call it under torch.no_grad() "
            "or on a detached tensor"
        )


def _overlaps(weight: torch.Tensor, out: torch.Tensor) -> bool | None:
    """Whether an element of `weight` shares a byte with contiguous `out`, from their addresses,
    sizes and strides alone: exact, except None where the weight's inner stride is longer than
    `out` and `out` lies inside the weight's span (telling would take a walk over its rows)."""
    if weight.numel() == 0:
        return False
    size = weight.element_size()
    # An element at byte offset x from the weight's first one shares a byte with out iff low <= x < high.
    low = out.data_ptr() - weight.data_ptr() - size + 1
    high = out.data_ptr() + out.numel() * size - weight.data_ptr()
    dims = sorted((stride * size, count) for count, stride in zip(weight.shape, weight.stride()) if count > 1 and stride)
    if not dims:
        return low <= 0 < high
    step, count = dims[-1]
    reach = sum((c - 1) * s for s, c in dims[:-1])  # the span of one outer row's elements
    if len(dims) > 1 and dims[0][0] > high - low:
        return None if low <= reach + (count - 1) * step and high > 0 else False
    # The first outer row that ends at or past low; between its ends out holds one of its elements.
    first = max(0, -((reach - low) // step))
    return first < count and first * step < high


def _check_finite(weight: torch.Tensor) -> None:
    bad = _first_nonfinite(weight)
    if bad is not None:
        _raise_nonfinite(weight, bad)


def _raise_nonfinite(weight: torch.Tensor, index: int) -> None:
    """The error for the first NaN/Inf, at flat (row-major) `index` of `weight`."""
    row, col = divmod(index, weight.shape[-1])
    raise ValueError(f"prox_2to4: non-finite value {weight[row, col].item()} at [{row}, {col}]")


def _first_nonfinite(weight: torch.Tensor) -> int | None:
    """Flat index of the first NaN/Inf, without materialising a mask on the native path."""
    library = _native.load()
    if weight.device.type == "cpu" and weight.dtype in _NATIVE_DTYPES and weight.is_contiguous() and library:
        suffix = _NATIVE_DTYPES[weight.dtype]
        spans = _spans(weight.numel(), 4 * _THREAD_GRAIN)
        if library.prox24_openmp() and len(spans) > 1:  # in the OpenMP team, as _prox_native
            bounds, results = _span_arrays(spans)
            getattr(library, f"first_nonfinite_spans_{suffix}")(
                ctypes.c_void_p(weight.data_ptr()), ctypes.c_void_p(bounds[0].data_ptr()),
                ctypes.c_void_p(bounds[1].data_ptr()), len(spans), ctypes.c_void_p(results.data_ptr()),
            )
            found = results.tolist()
        else:
            check, size = getattr(library, f"first_nonfinite_{suffix}"), weight.element_size()
            found = _in_threads([(check, weight.data_ptr() + lo * size, hi - lo) for lo, hi in spans])
        hits = [lo + index for (lo, _), index in zip(spans, found) if index >= 0]
        return min(hits) if hits else None
    finite = torch.isfinite(weight)
    if bool(finite.all()):
        return None
    return int((~finite).flatten().nonzero()[0].item())


def _spans(count: int, grain: int) -> list[tuple[int, int]]:
    """[lo, hi) slices of range(count), one per intra-op thread, each at least `grain` long and
    starting on a multiple of it."""
    threads = max(1, min(torch.get_num_threads(), count // grain))
    bounds = [count * t // threads // grain * grain for t in range(threads)] + [count]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def _span_arrays(spans: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The spans' [lo; hi] bounds as two contiguous int64 rows, and a slot per span for what the
    C kernel finds there, for the prox24_spans-style entry points."""
    bounds = torch.tensor(spans, dtype=torch.int64).t().contiguous()
    return bounds, torch.empty(len(spans), dtype=torch.int64)


def _in_threads(calls: list[tuple]) -> list:
    """The results of fn(*args) for each (fn, *args), run side by side (ctypes releases the GIL)."""
    global _pool
    if len(calls) <= 1:
        return [fn(*args) for fn, *args in calls]
    if _pool is None or _pool._max_workers < len(calls):
        _pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="prox24")
    return [future.result() for future in [_pool.submit(*call) for call in calls]]


def _prox_native(groups_in: torch.Tensor, groups_out: torch.Tensor, lam: float) -> int | None:
    """Run the C solver over [G, 4] contiguous CPU groups, one contiguous slice per thread.
    Returns None, or the flat index of the first non-finite entry (the output is then partial)."""
    library, suffix = _native.load(), _NATIVE_DTYPES[groups_in.dtype]
    # The kernel solves groups in chunks; splitting on chunk boundaries keeps every chunk, and
    # so every result bit, the same whatever the thread count.
    spans = _spans(groups_in.shape[0], _THREAD_GRAIN)
    if not spans:
        return None
    # Every workspace is allocated before any group is written: no half-done in-place update.
    workspaces = torch.empty(len(spans), getattr(library, f"prox24_workspace_{suffix}")(), dtype=torch.uint8)
    if library.prox24_openmp():
        # One call from this thread: its OpenMP team (torch's, when torch runs on the same
        # runtime) takes the spans, so no thread of ours competes with torch's spinning ones.
        bounds, results = _span_arrays(spans)
        getattr(library, f"prox24_spans_{suffix}")(
            ctypes.c_void_p(groups_in.data_ptr()), ctypes.c_void_p(groups_out.data_ptr()), lam,
            ctypes.c_void_p(bounds[0].data_ptr()), ctypes.c_void_p(bounds[1].data_ptr()), len(spans),
            ctypes.c_void_p(workspaces.data_ptr()), workspaces.shape[1], ctypes.c_void_p(results.data_ptr()),
        )
        found = results.tolist()
    else:
        kernel, size = getattr(library, f"prox24_{suffix}"), groups_in.element_size() * 4
        found = _in_threads([
            (kernel, ctypes.c_void_p(groups_in.data_ptr() + lo * size), ctypes.c_void_p(groups_out.data_ptr() + lo * size),
             hi - lo, lam, ctypes.c_void_p(workspace.data_ptr()))
            for (lo, hi), workspace in zip(spans, workspaces)
        ])
    hits = [4 * lo + index for (lo, _), index in zip(spans, found) if index >= 0]
    return min(hits) if hits else None


def _prox_groups_torch(z: torch.Tensor, lam: float, precision: torch.dtype | None = None) -> torch.Tensor:
    """Vectorised EnumALM over [G, 4] fp32/fp64 groups (any device), the C solver's logic step for
    step, each group scaled to a0 = 1 as there (prox(c z, lam) = c prox(z, c lam)), so that fp32
    squares of tiny or huge weights neither underflow nor overflow. Solved in `precision`:
    by default fp64 on CPU, fp32 elsewhere."""
    work = z.to(precision or (torch.float64 if z.device.type == "cpu" else torch.float32))
    slack = _SLACK[work.dtype]
    magnitude = work.abs()
    order = _descending_order(magnitude)
    top = magnitude.amax(1)
    sorted_magnitude = magnitude.gather(1, order)
    a = sorted_magnitude / torch.where(top > 0, top, torch.ones_like(top)).unsqueeze(1)
    lam_g = lam * top  # [G]: each group's lam on its own scale
    a0, a2, a3 = a[:, 0], a[:, 2], a[:, 3]
    half_norm = 0.5 * (a**2).sum(1)

    best = torch.zeros_like(a)
    best[:, :2] = a[:, :2]
    best_obj = 0.5 * (a2**2 + a3**2)

    lo, hi = _bounds(a, lam_g, 4)
    room = (hi - lo).amin(1) + slack * a0
    margin = torch.minimum(room, best_obj + slack * half_norm - _euler_objective(half_norm, a, hi))
    try4 = ((hi.amin(1) > 0) & (margin > 0)).nonzero().squeeze(1)
    start = 0.5 * (hi + lo)
    found4 = _coordinate_minimise(a[try4], start[try4], lam_g[try4], 4)
    _keep_better(best, best_obj, try4, found4, a[try4], lam_g[try4])

    lo, hi = _bounds(a, lam_g, 3)
    gain = 1 - lam_g**2 * (lo[:, 0] ** 2 + lo[:, 1] ** 2)
    bound = torch.maximum(0.5 * (a2**2 + a3**2) - 0.5 * hi[:, 2] ** 2 * gain.clamp_min(0), _euler_objective(half_norm, a, hi))
    room = (hi - lo).amin(1) + slack * a0
    w3_pays = a3 - lam_g * _pair_sums(hi, 3).sum(1) * (1 + slack)  # > 0: raising w3 lowers f (columns: each pair once)
    margin = torch.minimum(torch.minimum(room, -w3_pays), best_obj + slack * half_norm - bound)
    try3 = ((hi.amin(1) > 0) & (margin > 0)).nonzero().squeeze(1)
    start = torch.cat([0.5 * (hi + lo), torch.zeros_like(a3).unsqueeze(1)], 1)
    w3 = _coordinate_minimise(a[try3], start[try3], lam_g[try3], 3)
    _keep_better(best, best_obj, try3, w3, a[try3], lam_g[try3])
    stalled = try3[(w3[:, :3] == 0).any(1)]
    found, branch = _plus_branch3(a[stalled], lam_g[stalled])
    _keep_better(best, best_obj, stalled[found], branch[found], a[stalled[found]], lam_g[stalled[found]])

    untouched = (work != 0).sum(1) <= 2  # at most two non-zeros: the group is its own prox
    # back on the group's own scale; an entry kept as it is stays exactly the input's
    best = torch.where(best == a, sorted_magnitude, torch.minimum(best * top.unsqueeze(1), sorted_magnitude))
    signed = torch.where(best == 0, torch.zeros_like(best), best.copysign(work.gather(1, order)))
    result = torch.empty_like(work).scatter_(1, order, signed)
    return torch.where(untouched.unsqueeze(1), work, result).to(z.dtype)


def _bounds(a: torch.Tensor, lam: torch.Tensor, support: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi] around every local minimum on the first `support` sorted entries (`_prox24.c`):
    stationarity turns upper bounds into lower ones and back, with lam (w_i + w_j) <= 1 on 4.
    lam: [G], one per group."""
    a, lam, cap = a[:, :support], lam.unsqueeze(1), (1 / lam).unsqueeze(1)
    hi = torch.minimum(a, cap)
    for _ in range(_BOUND_ROUNDS):
        lo = (a - lam * _pair_sums(hi, support)).clamp_min(0)
        hi = torch.minimum(hi, a - lam * _pair_sums(lo, support))
        if support == 4:
            others = torch.stack([lo[:, [j for j in range(4) if j != i]].amax(1) for i in range(4)], 1)
            hi = torch.minimum(hi, cap - others)
    return lo, hi


def _pair_sums(w: torch.Tensor, support: int) -> torch.Tensor:
    """Column i: the sum of pairwise products of the other entries among the first `support`."""
    columns = []
    for i in range(support):
        others = [j for j in range(support) if j != i]
        columns.append(sum(w[:, j] * w[:, k] for n, j in enumerate(others) for k in others[n + 1 :]))
    return torch.stack(columns, 1)


def _euler_objective(half_norm: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """1/2 ||a||^2 + sum_i (w_i^2 / 6 - 2/3 a_i w_i): the objective at a stationary point w
    (Euler's identity for the cubic R), a lower bound when w bounds that point from above."""
    return half_norm + (w * (w / 6 - 2 / 3 * a[:, : w.shape[1]])).sum(1)


def _keep_better(best: torch.Tensor, best_obj: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, a: torch.Tensor, lam: torch.Tensor) -> None:
    """Replace best[rows] by the candidate w where its objective is strictly lower (lam: one per row)."""
    obj = 0.5 * ((w - a) ** 2).sum(1) + lam * _triple_products(w)
    better = obj < best_obj[rows]
    best[rows[better]] = w[better]
    best_obj[rows[better]] = obj[better]


def _plus_branch3(a: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3-support stationary point on the branch w_i = (a_i + sqrt(a_i^2 - 4t)) / 2, t = lam w0 w1 w2,
    by bisection on t; coordinate minimisation stalls on the boundary when lam a1 a2 == a0 (ties).
    lam: one per group."""

    def branch(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (a[:, :3] + (a[:, :3] ** 2 - 4 * t.unsqueeze(1)).clamp_min(0).sqrt())

    def residual(t: torch.Tensor) -> torch.Tensor:
        return lam * branch(t).prod(1) - t

    lo, hi = torch.zeros_like(a[:, 0]), 0.25 * a[:, 2] ** 2
    found = residual(hi) <= 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        up = residual(mid) > 0
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    w = torch.zeros_like(a)
    w[:, :3] = branch(lo)
    return found, w


def _descending_order(magnitude: torch.Tensor) -> torch.Tensor:
    """Per-group positions sorted by magnitude, descending, the lower index first on ties."""
    rank = _rank_in_group(magnitude)
    return torch.argsort(rank, dim=1)


def _rank_in_group(values: torch.Tensor) -> torch.Tensor:
    """rank_i = #{j: v_j > v_i} + #{j < i: v_j == v_i} within each row: a strict total order."""
    m = values.shape[1]
    later = values.unsqueeze(1)  # v_j along dim 2
    here = values.unsqueeze(2)  # v_i along dim 1
    lower_index = torch.ones(m, m, dtype=torch.bool, device=values.device).tril(-1)  # j < i
    return ((later > here) | ((later == here) & lower_index)).sum(2)


def _coordinate_minimise(a: torch.Tensor, start: torch.Tensor, lam: torch.Tensor, support: int) -> torch.Tensor:
    """Exact coordinate minimisation on the first `support` sorted entries from `start`,
    sweeping from the smallest entry up; each group stops when its sweep changes it by
    less than a relative 1e-12, and only unconverged groups are carried to the next sweep.
    lam: one per group."""
    w = start.clone()
    w[:, support:] = 0
    active = torch.arange(a.shape[0], device=a.device)
    tol = _REL_TOL * a[:, 0]
    for _ in range(_MAX_SWEEPS):
        if active.numel() == 0:
            break
        wa, aa = w[active], a[active]
        before = wa.clone()
        for k in reversed(range(support)):
            others = [i for i in range(support) if i != k]
            pair_sum = sum(wa[:, i] * wa[:, j] for n, i in enumerate(others) for j in others[n + 1 :])
            wa[:, k] = (aa[:, k] - lam[active] * pair_sum).clamp_min(0)
        w[active] = wa
        moving = (wa - before).abs().sum(1) > tol[active]
        active = active[moving]
    return w


def _triple_products(w: torch.Tensor) -> torch.Tensor:
    """R per group for non-negative [G, 4] entries: the sum of the 4 triple products."""
    return w[:, 0] * w[:, 1] * (w[:, 2] + w[:, 3]) + w[:, 2] * w[:, 3] * (w[:, 0] + w[:, 1])
