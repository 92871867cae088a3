"""prox_2to4 is the exact proximal operator of lam * R on every group of 4, fast and safe."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from prox_oracle import adversarial_groups, assert_rows_reach_the_minimum, brute_force_minimum, lams, objective, tolerance
from reference_enumalm import reference_prox_2to4

from proxsparse_ao import prox
from proxsparse_ao.prox import prox_2to4, prox_2to4_

BACKENDS = ["native", "torch"]


@pytest.fixture(params=BACKENDS)
def solver(request, monkeypatch):
    """prox_2to4 forced onto one solver: the compiled C kernel or the vectorised torch code."""
    if request.param == "torch":
        monkeypatch.setattr(prox._native, "load", lambda: None)
    elif prox.backend() != "native":
        pytest.skip("no C compiler: native solver unavailable")
    return prox_2to4


class TestExactness:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(group=adversarial_groups(), lam=lams)
    def test_objective_reaches_the_brute_force_global_minimum(self, solver, group, lam):
        z = torch.tensor([group], dtype=torch.float64)
        result = solver(z, lam)
        assert float(objective(result, z, lam)) <= brute_force_minimum(z[0], lam) + tolerance(z)

    def test_random_groups_match_brute_force_over_the_interesting_range_of_lam(self, solver):
        generator = torch.Generator().manual_seed(1)
        z = torch.randn(24, 4, generator=generator, dtype=torch.float64)
        for lam in (0.05, 0.3, 1.0, 3.0):
            assert_rows_reach_the_minimum(solver(z, lam), z, lam)

    @pytest.mark.parametrize(
        "group, lam",
        [([1.0, 1.0, 1.0, 1.0], 1.0), ([1.0, -1.0, 1.0, 0.3], 1.0), ([2.0, 2.0, 2.0, 2.0], 0.5), ([0.5, 0.5, -0.5, 0.2], 2.0)],
    )
    def test_tied_groups_where_the_reference_stalls_on_the_boundary(self, solver, group, lam):
        """lam * a1 * a2 == a0: EnumALM's first sweep zeroes w0 and never leaves (0, a1, a2)."""
        z = torch.tensor([group], dtype=torch.float64)
        found = float(objective(solver(z, lam), z, lam))
        assert found <= brute_force_minimum(z[0], lam) + tolerance(z)
        assert found < float(objective(reference_prox_2to4(z, lam), z, lam)) - 1e-3

    def test_never_worse_than_the_literal_reference_algorithm(self, solver):
        generator = torch.Generator().manual_seed(2)
        z = torch.randn(256, 64, generator=generator, dtype=torch.float64) * torch.logspace(-3, 2, 64, dtype=torch.float64)
        for lam in (1e-3, 0.1, 1.0, 10.0):
            ours = objective(solver(z, lam), z, lam)
            reference = objective(reference_prox_2to4(z, lam), z, lam)
            slack = 1e-9 * 0.5 * (z.reshape(-1, 4) ** 2).sum(1) + 1e-15
            assert bool((ours <= reference + slack).all()), lam

    def test_a_group_on_which_coordinate_sweeps_crawl_is_solved_to_its_stationary_point(self):
        """From its bounds' midpoint, this group's 4-support sweeps crawl towards a 3-support point
        (over 1000 sweeps to a relative 1e-13); the C kernel finishes them with Newton steps."""
        if prox.backend() != "native":
            pytest.skip("no C compiler")
        z = torch.tensor([[0.935166, -0.370805, 0.346787, 0.323991]], dtype=torch.float64)
        w, a = prox_2to4(z, 1.0)[0].abs(), z[0].abs()
        support = [i for i in range(4) if w[i] > 0]
        assert len(support) == 3
        for i in support:
            others = [j for j in support if j != i]
            assert abs(float(w[i] - a[i] + w[others[0]] * w[others[1]])) <= 1e-15

    @pytest.mark.parametrize("scale", [1e-30, 1e-15, 1e15])
    def test_tiny_and_huge_weights_are_solved_like_unit_ones(self, solver, scale):
        """prox(c z, lam / c) = c prox(z, lam): in fp32 too, where squares of 1e-30 underflow."""
        z = torch.randn(32, 64, generator=torch.Generator().manual_seed(13))
        for lam in (0.1, 1.0):
            scaled = solver(z * scale, lam / scale) / scale
            assert torch.allclose(scaled, solver(z, lam), rtol=1e-4, atol=1e-6), lam

    @pytest.mark.parametrize("scale", [2e-38, 1e30, 2e37])
    def test_fp32_weights_at_the_ends_of_the_float_range_are_solved_as_in_fp64(self, solver, scale):
        """The smallest normal and near-largest fp32 groups, most of them convex at these lams (the
        C kernel scales those by a power of two taken from their exponent bits): the fp64 solve of
        the same values, rounded to fp32, within a few units in the last place of the group's
        largest entry."""
        z = (torch.randn(32, 64, generator=torch.Generator().manual_seed(14)) * scale).float()
        groups = z.double().view(-1, 4)
        room = 4 * (groups.abs().amax(1, keepdim=True) * 2.0**-24 + 2.0**-149)
        for lam in (0.05 / scale, 0.15 / scale):
            expected = solver(z.double(), lam).float().double().view(-1, 4)
            assert bool(((solver(z, lam).double().view(-1, 4) - expected).abs() <= room).all()), lam

    @pytest.mark.parametrize(
        "dtype, scale, lam", [(torch.float32, 1e-41, 1e40), (torch.float32, 1e-39, 2e38), (torch.bfloat16, 1e-39, 2e38)]
    )
    def test_subnormal_weights_at_a_lam_that_moves_them_are_solved_as_in_fp64(self, solver, dtype, scale, lam):
        """lam |w| about 0.1-0.3 leaves most of these groups with three non-zeros. In fp32 arithmetic
        a lam of 1e40 is inf (every group would keep its top two), and the reciprocal of a
        subnormal group's largest entry overflows: these calls solve in fp64."""
        z = (torch.randn(16, 64, generator=torch.Generator().manual_seed(15)) * scale).to(dtype)
        expected = solver(z.double(), lam).to(dtype)
        assert torch.equal(solver(z, lam), expected)
        in_place = z.clone()
        prox_2to4_(in_place, lam)
        assert torch.equal(in_place, expected)
        assert (expected.view(-1, 4) != 0).sum(1).gt(2).float().mean() > 0.5

    @pytest.mark.parametrize("scale", [1e-30, 1e15])
    def test_the_torch_solver_in_fp32_solves_tiny_and_huge_weights_like_unit_ones(self, scale):
        """What runs on CUDA without Triton: in fp32 the squares of 1e-30 underflow, so every group
        is solved on its own scale."""
        z = torch.randn(32, 64, generator=torch.Generator().manual_seed(13)).view(-1, 4)
        for lam in (0.1, 1.0):
            unit = prox._prox_groups_torch(z, lam, torch.float32)
            scaled = prox._prox_groups_torch(z * scale, lam / scale, torch.float32) / scale
            assert torch.allclose(scaled, unit, rtol=1e-4, atol=1e-6), lam
            assert torch.allclose(unit.double(), prox._prox_groups_torch(z, lam).double(), rtol=1e-4, atol=1e-5), lam

    def test_native_and_torch_solvers_agree(self, monkeypatch):
        if prox.backend() != "native":
            pytest.skip("no C compiler")
        z = torch.randn(512, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        for lam in (0.01, 0.5, 5.0):
            native = prox_2to4(z, lam)
            monkeypatch.setattr(prox._native, "load", lambda: None)
            vectorised = prox_2to4(z, lam)
            monkeypatch.undo()
            assert torch.allclose(native, vectorised, rtol=1e-8, atol=1e-9)


class TestStructure:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(group=adversarial_groups(), lam=lams)
    def test_signs_and_order_are_preserved_and_no_zero_is_filled(self, solver, group, lam):
        z = torch.tensor([group], dtype=torch.float64)
        result = solver(z, lam)[0]
        kept = result != 0
        assert bool((torch.sign(result[kept]) == torch.sign(z[0][kept])).all())
        assert bool((result.abs() <= z[0].abs()).all())
        assert int(kept.sum()) <= int((z[0] != 0).sum())
        a, w = z[0].abs(), result.abs()
        for i, j in itertools.permutations(range(4), 2):
            if a[i] > a[j]:
                assert w[i] >= w[j]

    def test_lam_zero_is_the_identity(self, solver):
        z = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
        assert torch.equal(solver(z, 0.0), z)

    def test_large_lam_gives_exactly_two_of_four(self, solver):
        z = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
        result = solver(z, 1e3)
        assert int(((result != 0).reshape(-1, 4).sum(1) > 2).sum()) == 0

    def test_groups_that_are_already_two_of_four_are_untouched(self, solver):
        z = torch.tensor([[0.0, 3.0, 0.0, -2.0, 1.0, 1.0, 1.0, 1.0]])
        result = solver(z, 0.5)
        assert torch.equal(result[0, :4], z[0, :4])

    def test_no_negative_zero_in_the_output(self, solver):
        z = -torch.rand(32, 32, generator=torch.Generator().manual_seed(6)) - 0.5
        result = solver(z, 100.0)
        zeros = result == 0
        assert bool(zeros.any())
        assert not bool(torch.signbit(result[zeros]).any())


class TestForms:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_single_and_double_precision_agree(self, dtype):
        z = torch.randn(32, 64, generator=torch.Generator().manual_seed(7)).to(dtype)
        result = prox_2to4(z, 0.7)
        assert result.dtype == dtype
        assert torch.allclose(result.double(), prox_2to4(z.double(), 0.7), rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_is_solved_in_fp32_and_returned_in_its_own_dtype(self, dtype):
        z = torch.randn(32, 64, generator=torch.Generator().manual_seed(7)).to(dtype)
        result = prox_2to4(z, 0.7)
        assert result.dtype == dtype
        assert torch.equal(result, prox_2to4(z.float(), 0.7).to(dtype))

    def test_in_place_form_updates_the_same_storage(self):
        z = torch.randn(16, 32, generator=torch.Generator().manual_seed(8))
        expected = prox_2to4(z, 0.4)
        pointer = z.data_ptr()
        returned = prox_2to4_(z, 0.4)
        assert returned.data_ptr() == pointer == z.data_ptr()
        assert torch.equal(z, expected)

    def test_in_place_half_precision_works_chunk_by_chunk(self, monkeypatch):
        monkeypatch.setattr(prox, "_CHUNK_GROUPS", 7)
        z = torch.randn(16, 32, generator=torch.Generator().manual_seed(9)).bfloat16()
        expected = prox_2to4(z.clone(), 0.4)
        prox_2to4_(z, 0.4)
        assert torch.equal(z, expected)

    def test_out_form_writes_into_the_given_tensor(self):
        z = torch.randn(16, 32, generator=torch.Generator().manual_seed(10))
        out = torch.empty_like(z)
        assert prox_2to4(z, 0.4, out=out) is out
        assert torch.equal(out, prox_2to4(z, 0.4))

    @pytest.mark.parametrize(
        "lam", [torch.tensor(0.7), torch.tensor([0.7], dtype=torch.float64), np.float32(0.7), np.float64(0.7), 1, np.int64(1)],
        ids=["0-d-tensor", "one-element-tensor", "numpy-float32", "numpy-float64", "int", "numpy-int64"],
    )
    def test_lam_may_be_any_real_scalar(self, solver, lam):
        """A threshold computed from the weight, lr * rho / (3 * w.pow(2).mean()), is a 0-d tensor."""
        z = torch.randn(8, 16, generator=torch.Generator().manual_seed(17))
        assert torch.equal(solver(z, lam), solver(z, float(lam)))

    def test_an_out_in_the_gaps_of_a_strided_weight_is_accepted(self, solver):
        """The weight is the first 4 columns of a wide buffer; out lies between its rows there."""
        base = torch.randn(4, 200, generator=torch.Generator().manual_seed(18))
        weight, out = base[:, :4], base.view(-1)[10:26].view(4, 4)
        expected = solver(weight.clone(), 0.4)
        assert solver(weight, 0.4, out=out) is out
        assert torch.equal(out, expected)

    def test_non_contiguous_input_is_accepted(self):
        z = torch.randn(32, 16, generator=torch.Generator().manual_seed(11)).t()
        assert torch.equal(prox_2to4(z, 0.4), prox_2to4(z.contiguous(), 0.4))

    @pytest.mark.parametrize("lam", [0.1, 0.3, 1.0, 3.0], ids=["few-nonconvex", "mixed", "few-convex", "mostly-settled"])
    def test_a_row_is_solved_the_same_whatever_rows_come_with_it(self, lam):
        """A rank of a sharded run holds some rows of a layer: its prox is the single-process
        one, bit for bit in fp32 and fp64, and so is the prox of the rows in another order. The
        lams mix groups of the two kinds the kernel solves apart (lam sum|z| below 0.95 or not) in
        every proportion, so a group is solved in place in one run and set aside in another; at
        lam = 1 many searches are slow, and from lam = 1 on most groups are settled by the top-2 table."""
        z = torch.randn(2048, 256, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
        order = torch.randperm(2048, generator=torch.Generator().manual_seed(15))
        for dtype in (torch.float32, torch.float64):
            full = prox_2to4(z.to(dtype), lam)
            assert torch.equal(prox_2to4(z[37:1301].to(dtype), lam), full[37:1301])
            assert torch.equal(prox_2to4(z[1400:].to(dtype), lam), full[1400:])
            assert torch.equal(prox_2to4(z[order].to(dtype), lam), full[order])

    def test_a_group_is_solved_the_same_alone_or_among_others(self):
        """Groups of both kinds, one call each, against one call for all of them, in fp32 and fp64."""
        z = torch.randn(64, 16, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
        z = z * torch.logspace(-1, 1, 64, dtype=torch.float64).unsqueeze(1)
        for dtype in (torch.float32, torch.float64):
            together = prox_2to4(z.to(dtype), 0.3).reshape(-1, 4)
            groups = z.to(dtype).reshape(-1, 4)
            alone = torch.cat([prox_2to4(group.reshape(1, 4), 0.3) for group in groups])
            assert torch.equal(alone, together)

    def test_result_is_the_same_for_any_thread_count(self):
        z = torch.randn(256, 512, generator=torch.Generator().manual_seed(12))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = prox_2to4(z, 0.9)
            torch.set_num_threads(max(2, threads))
            multi = prox_2to4(z, 0.9)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(single, multi)


class TestAutograd:
    """The prox writes through the C kernel or Triton, which autograd cannot see: it guards the
    written tensor as torch's own in-place ops do."""

    @pytest.mark.parametrize("form", ["in-place", "out"])
    def test_backward_refuses_a_graph_whose_saved_tensor_was_overwritten(self, solver, form):
        a = torch.randn(4, 8, generator=torch.Generator().manual_seed(19), requires_grad=True)
        b = a * 1.0
        loss = (b * b).sum()
        with torch.no_grad():
            prox_2to4_(b, 5.0) if form == "in-place" else solver(torch.randn(4, 8), 5.0, out=b)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()

    def test_overwriting_a_detached_alias_is_seen_by_backward(self, solver):
        a = torch.randn(4, 8, generator=torch.Generator().manual_seed(20), requires_grad=True)
        b = a * 1.0
        loss = (b * b).sum()
        prox_2to4_(b.detach(), 5.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()

    @pytest.mark.parametrize("form", ["in-place", "out"])
    def test_a_leaf_that_requires_grad_is_refused_while_grad_mode_is_on(self, solver, form):
        weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(21), requires_grad=True)
        before = weight.detach().clone()
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
            prox_2to4_(weight, 1.0) if form == "in-place" else solver(torch.randn(4, 8), 1.0, out=weight)
        assert torch.equal(weight.detach(), before)

    def test_a_tensor_in_the_autograd_graph_is_refused_while_grad_mode_is_on(self, solver):
        """Autograd cannot record the prox: the gradient through it would silently be the identity's."""
        b = torch.randn(4, 8, generator=torch.Generator().manual_seed(22), requires_grad=True) * 1.0
        with pytest.raises(RuntimeError, match="requires grad"):
            prox_2to4_(b, 1.0)

    def test_the_triton_path_guards_its_write_as_the_cpu_solvers_do(self, monkeypatch):
        """A stand-in for the CUDA kernel writes through the raw pointer, as Triton does."""

        def kernel(groups_in: torch.Tensor, groups_out: torch.Tensor, lam: float) -> None:
            solved = prox._prox_groups_torch(groups_in, lam).contiguous()
            ctypes.memmove(groups_out.data_ptr(), solved.data_ptr(), solved.numel() * solved.element_size())

        monkeypatch.setattr(prox, "_triton_solves", lambda device, dtype=torch.float32: True)
        monkeypatch.setattr(prox._prox24_triton, "prox24_triton", kernel)
        a = torch.randn(4, 8, generator=torch.Generator().manual_seed(27), requires_grad=True)
        b = a * 1.0
        loss = (b * b).sum()
        with torch.no_grad():
            prox_2to4_(b, 5.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
            prox_2to4_(a, 1.0)

    def test_a_parameter_is_updated_in_place_under_no_grad_as_in_an_optimizer_step(self, solver):
        weight = torch.nn.Parameter(torch.randn(4, 8, generator=torch.Generator().manual_seed(23)))
        expected = solver(weight.detach(), 1.0)
        version = weight._version
        with torch.no_grad():
            prox_2to4_(weight, 1.0)
        assert torch.equal(weight.detach(), expected)
        assert weight._version > version

    def test_an_inference_tensor_is_updated_in_place_only_in_inference_mode(self, solver):
        """It has no version counter to guard: outside inference mode a normal tensor may have saved it."""
        with torch.inference_mode():
            weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(24))
        expected = solver(weight.clone(), 1.0)
        with pytest.raises(RuntimeError, match="(?i)inplace update to inference tensor outside InferenceMode"):
            prox_2to4_(weight, 1.0)
        with torch.inference_mode():
            prox_2to4_(weight, 1.0)
        assert torch.equal(weight, expected)


def _settled(group: torch.Tensor, lam: float) -> bool:
    """Whether the C kernel's top-2 table settles the group as (a0, a1, 0, 0) without solving it."""
    group = group.double().contiguous()
    return bool(prox._native.load().prox24_top2_settled(ctypes.c_void_p(group.data_ptr()), lam))


@pytest.mark.skipif(prox.backend() != "native", reason="no C compiler: native solver unavailable")
class TestTopTwoTable:
    """Most groups at lam ~ 1 and above keep their two largest entries; a table of thresholds,
    built by the solver itself at load, settles them without a solve."""

    def test_a_group_settled_at_the_edge_of_its_cell_keeps_its_top_two_at_the_global_minimum(self):
        """At the least lam the table settles a group, (a0, a1, 0, 0) is the brute-force minimum;
        the groups include some a hair inside a corner of the table's grid (32 cells per unit of
        a1 / a0 and a2 / a1, a3 = a2), where the table's own threshold is all that separates them."""
        generator = torch.Generator().manual_seed(21)
        inside = 1 - 2e-6
        corners = torch.tensor([[32 / (i0 * inside), 1.0, i2 / 32 * inside, i2 / 32 * inside]
                                for i0, i2 in [(16, 16), (30, 30), (8, 24), (32, 32), (20, 4), (28, 12), (32, 1)]],
                               dtype=torch.float64)
        groups = torch.cat([
            torch.randn(40, 4, generator=generator, dtype=torch.float64),
            torch.randn(20, 4, generator=generator, dtype=torch.float64) ** 3,
            torch.tensor([[1.0, 0.9, 0.9, 0.9], [1.0, 1.0, 0.5, 0.5], [2.0, 0.1, 0.1, 0.05], [1.0, 0.5, 0.5, 0.0]],
                         dtype=torch.float64),
            corners,
        ])
        edges = 0
        for group in groups:
            low, high = 1e-6, 1e9
            if not _settled(group, high):
                continue
            for _ in range(60):
                mid = (low * high) ** 0.5
                low, high = (low, mid) if _settled(group, mid) else (mid, high)
            a = group.abs().sort(descending=True).values
            top2 = 0.5 * float(a[2] ** 2 + a[3] ** 2)
            assert top2 <= brute_force_minimum(group, high) + tolerance(group), (group, high)
            assert float(objective(prox_2to4(group.reshape(1, 4), high), group, high)) == pytest.approx(top2, abs=0)
            edges += 1
        assert edges >= 50

    @pytest.mark.parametrize("lam, settled", [(1.0, 0.85), (10.0, 0.99)])
    def test_most_unit_gaussian_groups_are_settled_where_most_keep_their_top_two(self, lam, settled):
        groups = torch.randn(2000, 4, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
        share = sum(_settled(group, lam) for group in groups) / len(groups)
        kept = ((prox_2to4(groups, lam) != 0).sum(1) <= 2).double().mean()
        assert settled <= share <= kept

    def test_nothing_is_settled_where_the_third_entry_pays(self):
        """lam = 0 is the identity: no group with three non-zeros may be settled."""
        groups = torch.rand(500, 4, generator=torch.Generator().manual_seed(23), dtype=torch.float64) + 0.01
        assert not any(_settled(group, 0.0) or _settled(group, 1e-3) for group in groups)


class TestBadInput:
    @pytest.mark.parametrize(
        "weight, lam, message",
        [
            (torch.randn(4, 6), 1.0, "not a multiple of 4"),
            (torch.randn(8), 1.0, "expected a 2-D weight"),
            (torch.randn(2, 4, 8), 1.0, "expected a 2-D weight"),
            (torch.ones(4, 8, dtype=torch.int32), 1.0, "floating-point"),
            (torch.randn(4, 8), -0.1, "lam must be a finite number >= 0"),
            (torch.randn(4, 8), float("nan"), "lam must be a finite number >= 0"),
        ],
    )
    def test_clear_errors(self, weight, lam, message):
        with pytest.raises((ValueError, TypeError), match=message):
            prox_2to4(weight, lam)

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_non_finite_entries_are_reported_with_their_position(self, bad, dtype):
        z = torch.randn(4, 8).to(dtype)
        z[2, 5] = bad
        before = z.clone()
        with pytest.raises(ValueError, match=r"at \[2, 5\]"):
            prox_2to4_(z, 1.0)
        assert torch.equal(z.nan_to_num(), before.nan_to_num())

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("bad_rows, first", [((400, 300), "300, 999"), ((400, 300, 200), "200, 999")])
    @pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "out-of-place"])
    def test_the_first_non_finite_entry_is_named_when_threads_share_the_check(self, dtype, bad_rows, first, in_place):
        """In place the weight is checked before anything is written; out of place the C solver
        checks each chunk as it reads it, and the weight is left as it was either way."""
        z = torch.randn(512, 1024, dtype=dtype)  # two threads: rows 0-255 and 256-511
        for row in bad_rows:
            z[row, 999], z[row, 1000] = float("nan"), float("inf")
        before = z.clone()
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(max(2, threads))
            with pytest.raises(ValueError, match=rf"non-finite value nan at \[{first}\]"):
                prox_2to4_(z, 1.0) if in_place else prox_2to4(z, 1.0)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(z.nan_to_num(), before.nan_to_num())

    @pytest.mark.parametrize("position", [(0, 0), (7, 3), (63, 62)])
    def test_a_non_finite_entry_is_named_out_of_place_wherever_it_sits_in_its_group(self, position):
        z = torch.randn(64, 64, dtype=torch.float32)
        z[position] = -float("inf")
        with pytest.raises(ValueError, match=rf"non-finite value -inf at \[{position[0]}, {position[1]}\]"):
            prox_2to4(z, 0.5, out=torch.empty_like(z))

    @pytest.mark.parametrize(
        "lam, message",
        [
            (torch.tensor([0.1, 0.2]), r"lam must be a real number, got a tensor of shape \(2,\)"),
            (torch.tensor(0.5j), "lam must be a real number, got a tensor of dtype torch.complex64"),
            (torch.tensor(True), "lam must be a real number, got a tensor of dtype torch.bool"),
            (0.5j, "lam must be a real number, got complex"),
            ("0.5", "lam must be a real number, got str"),
            (True, "lam must be a real number, got bool"),
            (None, "lam must be a real number, got NoneType"),
        ],
    )
    def test_a_lam_that_is_not_a_real_scalar_is_refused_naming_its_type(self, lam, message):
        with pytest.raises(TypeError, match=message):
            prox_2to4(torch.randn(4, 8), lam)

    @pytest.mark.parametrize("lam", [torch.tensor(-0.1), np.float32("nan"), torch.tensor([float("inf")])])
    def test_a_real_scalar_lam_that_is_negative_or_not_finite_is_refused_as_a_float_is(self, lam):
        with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
            prox_2to4(torch.randn(4, 8), lam)

    @pytest.mark.parametrize(
        "weight, out",
        [
            (lambda base: base[:64], lambda base: base[1:]),
            (lambda base: base[1:], lambda base: base[:64]),
            (lambda base: base[:64, :4], lambda base: base.view(-1)[3:259].view(64, 4)),
            (lambda base: base.view(-1)[8:264].view(4, 64).t(), lambda base: base.view(-1)[:256].view(64, 4)),
        ],
        ids=["out-a-row-behind", "out-a-row-ahead", "strided-weight", "transposed-weight"],
    )
    def test_an_out_that_partly_overlaps_the_weight_is_refused(self, solver, weight, out):
        """Only out = the weight's own memory is the in-place form; any other shared element
        would be read after it was written."""
        base = torch.randn(65, 8, generator=torch.Generator().manual_seed(25))
        before = base.clone()
        with pytest.raises(ValueError, match="out partly overlaps the weight"):
            solver(weight(base), 1.0, out=out(base))
        assert torch.equal(base, before)

    def test_an_out_among_the_elements_of_a_very_sparsely_strided_weight_is_refused_as_possibly_overlapping(self):
        """Rows further apart than out is long: telling would take a walk over them, so the
        message says the overlap is possible, not certain."""
        base = torch.randn(400, generator=torch.Generator().manual_seed(26))
        weight = base.as_strided((2, 4), (50, 100))
        with pytest.raises(ValueError, match="may overlap it"):
            prox_2to4(weight, 1.0, out=base[10:18].view(2, 4))

    def test_mismatched_out_is_rejected(self):
        with pytest.raises(ValueError, match="out has shape"):
            prox_2to4(torch.randn(4, 8), 1.0, out=torch.empty(4, 4))


def test_an_empty_weight_is_returned_empty():
    """A rank of a sharded run may hold no rows of a layer."""
    empty = torch.empty(0, 16)
    assert prox_2to4(empty, 1.0).shape == (0, 16)
    assert prox_2to4_(empty, 1.0) is empty
