"""The fused Triton prox kernel (CUDA tensors) is the same exact operator as the CPU one.

It runs here on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1), which is
slow, so the examples are few and small.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prox_oracle import adversarial_groups, assert_rows_reach_the_minimum, brute_force_minimum, lams, objective, tolerance
from reference_enumalm import reference_prox_2to4

from proxsparse_ao import _prox24_triton, prox
from proxsparse_ao.prox import prox_2to4, prox_2to4_

pytestmark = pytest.mark.skipif(not _prox24_triton.available(), reason="triton is not installed: no kernel to interpret")


@pytest.fixture(scope="module", autouse=True)
def interpreted():
    """Every launch in this module runs in Triton's interpreter: the kernel is decorated
    afresh with TRITON_INTERPRET=1 and forgotten afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        patch.setattr(_prox24_triton, "_kernel", None)
        yield


@pytest.fixture
def through_prox(monkeypatch):
    """prox_2to4 sending CPU tensors to the Triton kernel, as it does CUDA tensors."""
    monkeypatch.setattr(prox, "_triton_solves", lambda device, dtype: True)


def solve(z: torch.Tensor, lam: float, **options) -> torch.Tensor:
    """The kernel on every group of 4 of a 2-D tensor, out of place."""
    groups = z.contiguous().view(-1, 4)
    out = torch.empty_like(groups)
    _prox24_triton.prox24_triton(groups, out, lam, **options)
    return out.view(z.shape)


def agreement_groups(dtype: torch.dtype, per_family: int = 64) -> torch.Tensor:
    """[4 * per_family, 4] groups: randn, randn over scales 1e-3..1e2, ties (multiples of 1/2,
    zeros included) and heavy tails (randn^3)."""
    generator = torch.Generator().manual_seed(3)

    def randn() -> torch.Tensor:
        return torch.randn(per_family, 4, generator=generator, dtype=torch.float64)

    scales = torch.logspace(-3, 2, per_family, dtype=torch.float64).unsqueeze(1)
    ties = torch.randint(-3, 4, (per_family, 4), generator=generator).double() * 0.5
    return torch.cat([randn(), randn() * scales, ties, randn() ** 3]).to(dtype)


def objective_gap(result: torch.Tensor, expected: torch.Tensor, z: torch.Tensor, lam: float) -> torch.Tensor:
    """objective(result) - objective(expected) per group, relative to 1/2 ||z||^2."""
    half_norm = (0.5 * (z.double() ** 2).sum(1)).clamp_min(1e-300)
    return (objective(result, z, lam) - objective(expected, z, lam)) / half_norm


class TestExactness:
    @pytest.mark.parametrize("scale", [1e-30, 1e15])
    def test_tiny_and_huge_weights_are_solved_like_unit_ones(self, scale):
        """prox(c z, lam / c) = c prox(z, lam): the kernel solves every group scaled to a0 = 1."""
        z = torch.randn(8, 64, generator=torch.Generator().manual_seed(13))
        scaled = solve(z * scale, 1.0 / scale) / scale
        assert torch.allclose(scaled, prox_2to4(z, 1.0), rtol=1e-4, atol=1e-6)

    @settings(max_examples=20, deadline=None)
    @given(groups=st.lists(adversarial_groups(), min_size=1, max_size=8), lam=lams)
    def test_objective_reaches_the_brute_force_global_minimum(self, groups, lam):
        z = torch.tensor(groups, dtype=torch.float64)
        assert_rows_reach_the_minimum(solve(z, lam), z, lam)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_random_groups_match_brute_force_over_the_interesting_range_of_lam(self, dtype):
        z = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        for lam in (0.05, 0.3, 1.0, 3.0):
            assert_rows_reach_the_minimum(solve(z, lam), z, lam)

    @pytest.mark.parametrize(
        "group, lam",
        [([1.0, 1.0, 1.0, 1.0], 1.0), ([1.0, -1.0, 1.0, 0.3], 1.0), ([2.0, 2.0, 2.0, 2.0], 0.5), ([0.5, 0.5, -0.5, 0.2], 2.0)],
    )
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_tied_groups_where_coordinate_descent_stalls_on_the_boundary(self, group, lam, dtype):
        """lam * a1 * a2 == a0: the first sweep zeroes w0 and never leaves (0, a1, a2)."""
        z = torch.tensor([group], dtype=dtype)
        found = float(objective(solve(z, lam), z, lam))
        assert found <= brute_force_minimum(z[0], lam) + tolerance(z)
        assert found < float(objective(reference_prox_2to4(z.double(), lam), z, lam)) - 1e-3

    @pytest.mark.parametrize("lam", [1e-3, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0])
    def test_chooses_what_the_cpu_operator_chooses_in_fp64(self, lam):
        """Same bounds, certificates, slack and starts as the C kernel: the same candidate in
        every group, and the same point up to the searches' stopping tolerance."""
        z = agreement_groups(torch.float64)
        result, expected = solve(z, lam), prox_2to4(z, lam)
        assert float(objective_gap(result, expected, z, lam).abs().max()) <= 1e-12
        assert torch.equal(result == 0, expected == 0)
        assert float(((result - expected).abs().amax(1) / z.abs().amax(1).clamp_min(1e-300)).max()) <= 1e-8

    @pytest.mark.parametrize("lam", [1e-3, 0.5, 3.0])
    def test_agrees_with_the_cpu_operator_in_fp32(self, lam):
        """fp32 is solved in fp32 here and in double by the C kernel: a near-tie between candidates
        (a gain below fp32's rounding of the objective) may go either way, so only the objective
        is compared."""
        z = agreement_groups(torch.float32)
        gap = objective_gap(solve(z, lam), prox_2to4(z, lam), z, lam)
        assert float(gap.abs().max()) <= 1e-6


class TestStructure:
    @settings(max_examples=20, deadline=None)
    @given(groups=st.lists(adversarial_groups(), min_size=1, max_size=8), lam=lams)
    def test_signs_and_order_are_preserved_and_no_zero_is_filled(self, groups, lam):
        z = torch.tensor(groups, dtype=torch.float64)
        result = solve(z, lam)
        for row in range(z.shape[0]):
            kept = result[row] != 0
            assert bool((torch.sign(result[row][kept]) == torch.sign(z[row][kept])).all())
            assert bool((result[row].abs() <= z[row].abs()).all())
            assert int(kept.sum()) <= int((z[row] != 0).sum())
            a, w = z[row].abs(), result[row].abs()
            for i, j in itertools.permutations(range(4), 2):
                if a[i] > a[j]:
                    assert w[i] >= w[j]

    def test_large_lam_gives_exactly_two_of_four(self):
        z = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
        result = solve(z, 1e3)
        assert int(((result != 0).reshape(-1, 4).sum(1) > 2).sum()) == 0

    def test_groups_that_are_already_two_of_four_are_untouched(self):
        z = torch.tensor([[0.0, 3.0, -0.0, -2.0, 1.0, 1.0, 1.0, 1.0]])
        result = solve(z, 0.5)
        assert torch.equal(result[0, :4], z[0, :4])
        assert bool(torch.signbit(result[0, 2]))
        assert not torch.equal(result[0, 4:], z[0, 4:])

    def test_no_negative_zero_in_the_output(self):
        z = -torch.rand(32, 32, generator=torch.Generator().manual_seed(6)) - 0.5
        result = solve(z, 100.0)
        zeros = result == 0
        assert bool(zeros.any())
        assert not bool(torch.signbit(result[zeros]).any())

    def test_every_group_converges_on_its_own_whatever_the_block(self):
        z = torch.randn(64, 16, generator=torch.Generator().manual_seed(7))
        assert torch.equal(solve(z, 0.5, block=32), solve(z, 0.5, block=128))


class TestForms:
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_is_solved_in_fp32_and_stored_in_its_own_dtype(self, dtype):
        z = torch.randn(32, 64, generator=torch.Generator().manual_seed(8)).to(dtype)
        result, in_fp32 = solve(z, 0.7), solve(z.float(), 0.7)
        assert result.dtype == dtype
        assert torch.equal(result == 0, in_fp32 == 0)
        if dtype == torch.float16:
            assert torch.equal(result, in_fp32.to(dtype))
        else:  # Triton's interpreter truncates fp32 -> bf16 where the GPU rounds to nearest
            assert torch.allclose(result.float(), in_fp32, rtol=torch.finfo(dtype).eps, atol=0)
        assert torch.allclose(result.float(), prox_2to4(z, 0.7).float(), rtol=torch.finfo(dtype).eps, atol=1e-5)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_in_place(self, dtype):
        z = torch.randn(16, 32, generator=torch.Generator().manual_seed(9)).to(dtype)
        expected = solve(z, 0.4)
        groups = z.view(-1, 4)
        _prox24_triton.prox24_triton(groups, groups, 0.4)
        assert torch.equal(z, expected)

    def test_prox_2to4_dispatches_to_the_kernel(self, through_prox, monkeypatch):
        z = torch.randn(16, 32, generator=torch.Generator().manual_seed(10)).bfloat16()
        expected = solve(z, 0.4)
        calls = []
        kernel = _prox24_triton.prox24_triton
        monkeypatch.setattr(_prox24_triton, "prox24_triton", lambda *args: calls.append(args[0].dtype) or kernel(*args))
        assert torch.equal(prox_2to4(z, 0.4), expected)
        assert torch.equal(prox_2to4(z, 0.0), z)
        assert calls == [torch.bfloat16]  # lam = 0 is the identity before any solver

    def test_in_place_and_out_forms_through_prox_2to4(self, through_prox):
        z = torch.randn(16, 32, generator=torch.Generator().manual_seed(11)).bfloat16()
        expected = solve(z, 0.4)
        out = torch.empty_like(z)
        assert prox_2to4(z, 0.4, out=out) is out
        assert torch.equal(out, expected)
        pointer = z.data_ptr()
        assert prox_2to4_(z, 0.4).data_ptr() == pointer
        assert torch.equal(z, expected)

    def test_non_contiguous_and_empty_weights_through_prox_2to4(self, through_prox):
        z = torch.randn(32, 16, generator=torch.Generator().manual_seed(12)).t()
        assert torch.equal(prox_2to4(z, 0.4), solve(z.contiguous(), 0.4))
        assert prox_2to4(torch.empty(0, 16), 1.0).shape == (0, 16)

    def test_backend_reports_triton_for_cuda(self):
        assert prox.backend("cuda") == "triton"
        assert prox.backend("cpu") != "triton"


class TestCompiled:
    @pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
    @pytest.mark.parametrize("pointer, compute", [("*fp32", "float32"), ("*bf16", "float32"), ("*fp64", "float64")])
    def test_the_kernel_compiles_for_sm90_without_a_gpu(self, pointer, compute, monkeypatch, tmp_path):
        """The interpreter runs the kernel as Python; this lowers it to a Hopper cubin, which
        catches what only the compiler checks (types carried through loops and branches)."""
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        _prox24_triton._jit_kernel()  # binds `tl` for the kernel's body
        monkeypatch.delenv("TRITON_INTERPRET")
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
        kernel = triton.jit(_prox24_triton._prox24_groups)
        signature = {"src": pointer, "dst": pointer, "groups": "i32", "lam_arg": "fp64"}
        constants = {
            "BLOCK": 64, "COMPUTE": getattr(tl, compute), "REL_TOL": 1e-7, "SLACK": 1e-5, "BOUND_ROUNDS": 2, "MAX_SWEEPS": 1000,
            "BISECTIONS": 200,
        }
        source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 2})
        assert compiled.asm["cubin"]


class TestBadInput:
    @pytest.mark.parametrize(
        "groups, lam, options, error",
        [
            (torch.randn(4, 8), 1.0, {}, ValueError),
            (torch.randn(8, 4).t().contiguous().t(), 1.0, {}, ValueError),
            (torch.ones(4, 4, dtype=torch.int32), 1.0, {}, TypeError),
            (torch.randn(4, 4), 1.0, {"block": 48}, ValueError),
            (torch.randn(4, 4), 0.0, {}, ValueError),
        ],
    )
    def test_clear_errors(self, groups, lam, options, error):
        with pytest.raises(error, match="prox24_triton"):
            _prox24_triton.prox24_triton(groups, torch.empty_like(groups), lam, **options)
