"""The SSD scan: chunked PyTorch (and, on CUDA, Triton) against the sequential oracle.

Error measure used throughout: relative error = max|got - ref| / max|ref| over the whole tensor
(max|got - ref| when ref is all zeros, e.g. dL/dA for a one-step sequence). Tolerances:
float64 < 1e-8, float32 < 1e-4, for the output and for the gradients w.r.t. x, dt, A, B, C, D
under a random upstream gradient.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

from adaray.model import ssd
from adaray.model.ssd import (
    active_ssd_backend,
    ssd_scan,
    ssd_scan_chunked,
    ssd_scan_ref,
    triton_ssd_available,
)

TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}
INPUT_NAMES = ("x", "dt", "A", "B", "C", "D")
Scan = Callable[..., torch.Tensor]


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref| (the plain max difference when ref is all zeros)."""
    max_diff = (got - ref).abs().max().item()
    max_ref = ref.abs().max().item()
    return max_diff / max_ref if max_ref > 0 else max_diff


def make_inputs(
    batch: int,
    seqlen: int,
    nheads: int,
    headdim: int,
    ngroups: int,
    dstate: int,
    dtype: torch.dtype,
    skip: str | None = "heads",
    dt_range: tuple[float, float] = (1e-3, 1e-1),
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Inputs at the magnitudes of the network's init: dt log-uniform in dt_range
    (softplus already applied), A uniform in -[1, 16], x, B, C ~ N(0, 1).
    skip: "heads" -> D (h,), "full" -> D (h, p), None -> no D."""
    gen = torch.Generator().manual_seed(seed)
    log_lo, log_hi = math.log(dt_range[0]), math.log(dt_range[1])
    log_dt = torch.rand(batch, seqlen, nheads, generator=gen, dtype=dtype)
    inputs: dict[str, torch.Tensor | None] = {
        "x": torch.randn(batch, seqlen, nheads, headdim, generator=gen, dtype=dtype),
        "dt": torch.exp(log_lo + (log_hi - log_lo) * log_dt),
        "A": -(1 + 15 * torch.rand(nheads, generator=gen, dtype=dtype)),
        "B": torch.randn(batch, seqlen, ngroups, dstate, generator=gen, dtype=dtype),
        "C": torch.randn(batch, seqlen, ngroups, dstate, generator=gen, dtype=dtype),
        "D": None,
    }
    if skip == "heads":
        inputs["D"] = torch.randn(nheads, generator=gen, dtype=dtype)
    elif skip == "full":
        inputs["D"] = torch.randn(nheads, headdim, generator=gen, dtype=dtype)
    for tensor in inputs.values():
        if tensor is not None:
            tensor.requires_grad_(True)
    return inputs


def output_and_grads(
    scan: Scan, inputs: dict[str, torch.Tensor | None], upstream_seed: int = 1, **kwargs: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run scan, backpropagate a fixed random upstream gradient, return y and the gradients."""
    y = scan(*(inputs[name] for name in INPUT_NAMES), **kwargs)
    gen = torch.Generator().manual_seed(upstream_seed)
    upstream = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
    names = [name for name in INPUT_NAMES if inputs[name] is not None]
    grads = torch.autograd.grad(y, [inputs[name] for name in names], upstream)
    return y.detach(), dict(zip(names, grads, strict=True))


def assert_matches_ref(
    inputs: dict[str, torch.Tensor | None],
    tolerance: float,
    scan: Scan = ssd_scan_chunked,
    **kwargs: int,
) -> None:
    """scan and ssd_scan_ref agree on the output and on every input gradient."""
    y_ref, grads_ref = output_and_grads(ssd_scan_ref, inputs)
    y, grads = output_and_grads(scan, inputs, **kwargs)
    errors = {"y": relative_error(y.cpu(), y_ref.cpu())}
    errors |= {name: relative_error(grads[name].cpu(), grads_ref[name].cpu()) for name in grads}
    assert max(errors.values()) < tolerance, errors


# (batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size, skip)
CASES = {
    "seqlen_not_multiple_of_chunk": (2, 100, 4, 8, 2, 16, 32, "heads"),
    "one_head_per_group": (1, 96, 4, 4, 4, 8, 32, "full"),
    "single_step": (2, 1, 2, 4, 1, 8, 64, "heads"),
    "no_skip": (1, 50, 3, 5, 1, 6, 16, None),
    "chunk_longer_than_seq": (1, 20, 2, 4, 2, 8, 64, "full"),
    "chunk_of_one": (2, 9, 2, 3, 1, 4, 1, "heads"),
    # 175 chunks: several blocks of the two-level state carry, the last one partial.
    "many_chunks": (2, 700, 2, 4, 1, 4, 4, "heads"),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_chunked_matches_sequential(case: tuple, dtype: torch.dtype) -> None:
    batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size, skip = case
    inputs = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, dtype, skip)
    assert_matches_ref(inputs, TOLERANCE[dtype], chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_chunked_matches_sequential_with_strong_decay(dtype: torch.dtype) -> None:
    """dt up to 1 with A down to -16: segment sums reach about -1000 within one chunk."""
    inputs = make_inputs(2, 130, 4, 8, 2, 16, dtype, dt_range=(1e-2, 1.0))
    assert_matches_ref(inputs, TOLERANCE[dtype], chunk_size=64)


def test_chunked_matches_sequential_on_a_long_fp32_sequence() -> None:
    inputs = make_inputs(1, 1000, 2, 16, 1, 16, torch.float32)
    assert_matches_ref(inputs, TOLERANCE[torch.float32], chunk_size=64)


def test_chunked_accepts_non_contiguous_inputs() -> None:
    """The network passes views split out of one projection; they must give the same result."""
    batch, seqlen, nheads, headdim, dstate = 2, 70, 2, 4, 8
    gen = torch.Generator().manual_seed(0)
    packed = torch.randn(batch, seqlen, nheads * headdim + 2 * dstate + nheads, generator=gen)
    x, B, C, dt = torch.split(packed, [nheads * headdim, dstate, dstate, nheads], dim=-1)
    x = x.reshape(batch, seqlen, nheads, headdim)
    B, C = B.reshape(batch, seqlen, 1, dstate), C.reshape(batch, seqlen, 1, dstate)
    dt = torch.nn.functional.softplus(dt - 3)
    A = -torch.arange(1.0, nheads + 1)
    D = torch.ones(nheads)
    assert not x.is_contiguous()
    y = ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=16)
    y_contiguous = ssd_scan_chunked(
        x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), D, chunk_size=16
    )
    assert relative_error(y, ssd_scan_ref(x, dt, A, B, C, D)) < 1e-4
    assert relative_error(y, y_contiguous) < 1e-6


@pytest.mark.parametrize(
    ("fields", "shape", "message"),
    [
        (("B", "C"), (1, 8, 3, 4), r"B/C groups \(3\) must divide the number of heads \(4\)"),
        (("C",), (1, 8, 2, 5), "C must have the shape of B"),
        (("dt",), (1, 8, 3), "dt must have shape"),
        (("A",), (4, 1), "A must have shape"),
        (("D",), (4, 3), "D must have shape"),
        (("x",), (1, 8, 4), "x must be"),
    ],
)
def test_bad_shapes_raise_clear_errors(
    fields: tuple[str, ...], shape: tuple[int, ...], message: str
) -> None:
    inputs = make_inputs(1, 8, 4, 2, 2, 4, torch.float32)
    for field in fields:
        inputs[field] = torch.randn(shape)
    args = [inputs[name] for name in INPUT_NAMES]
    for scan in (ssd_scan_ref, ssd_scan_chunked):
        with pytest.raises(ValueError, match=message):
            scan(*args)


def test_chunk_size_must_be_positive() -> None:
    inputs = make_inputs(1, 8, 2, 2, 1, 4, torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan_chunked(*(inputs[name] for name in INPUT_NAMES), chunk_size=0)


@pytest.fixture
def chunked_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace ssd_scan_chunked by a recording wrapper; the list grows by one per call."""
    calls: list[int] = []
    original = ssd.ssd_scan_chunked

    def recording_scan(*args: torch.Tensor | None, **kwargs: int) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ssd, "ssd_scan_chunked", recording_scan)
    return calls


@pytest.mark.parametrize("setting", [None, "", "auto", "torch", " Torch "])
def test_dispatcher_uses_chunked_path_on_cpu(
    setting: str | None, chunked_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    if setting is None:
        monkeypatch.delenv(ssd.SSD_BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(ssd.SSD_BACKEND_ENV, setting)
    inputs = make_inputs(1, 40, 2, 4, 1, 8, torch.float64)
    args = [inputs[name] for name in INPUT_NAMES]
    y = ssd_scan(*args, chunk_size=16)
    assert chunked_calls == [1]
    assert relative_error(y, ssd_scan_ref(*args)) < 1e-8
    assert active_ssd_backend("cpu") == "torch"
    assert active_ssd_backend(torch.device("cpu")) == "torch"


def test_forcing_triton_on_cpu_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ssd.SSD_BACKEND_ENV, "triton")
    inputs = make_inputs(1, 8, 2, 4, 1, 8, torch.float32)
    with pytest.raises(RuntimeError, match="ADARAY_SSD=triton needs tensors on a CUDA device"):
        ssd_scan(*(inputs[name] for name in INPUT_NAMES))
    with pytest.raises(RuntimeError, match="CUDA device"):
        active_ssd_backend("cpu")


@pytest.mark.skipif(triton_ssd_available(), reason="the Triton SSD is available here")
def test_forcing_triton_without_it_raises_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ssd.SSD_BACKEND_ENV, "triton")
    with pytest.raises(RuntimeError, match=r"cannot run: (CUDA is not available|mamba-ssm)"):
        active_ssd_backend("cuda")
    monkeypatch.setenv(ssd.SSD_BACKEND_ENV, "auto")
    assert active_ssd_backend("cuda") == "torch"


def test_bad_backend_value_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ssd.SSD_BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="ADARAY_SSD='cuda' is not valid; use one of auto, torch"):
        active_ssd_backend("cpu")
    inputs = make_inputs(1, 8, 2, 4, 1, 8, torch.float32)
    with pytest.raises(ValueError, match="ADARAY_SSD"):
        ssd_scan(*(inputs[name] for name in INPUT_NAMES))


def test_import_and_cpu_use_do_not_import_mamba_ssm() -> None:
    code = (
        "import sys, torch\n"
        "from adaray.model.ssd import ssd_scan, active_ssd_backend, triton_ssd_available\n"
        "x = torch.randn(1, 5, 2, 3)\n"
        "ssd_scan(x, torch.rand(1, 5, 2), -torch.ones(2), torch.randn(1, 5, 1, 4),"
        " torch.randn(1, 5, 1, 4))\n"
        "active_ssd_backend('cpu')\n"
        "assert not any(name.split('.')[0] == 'mamba_ssm' for name in sys.modules), 'imported'\n"
    )
    environment = {name: value for name, value in os.environ.items() if name != "ADARAY_SSD"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environment
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_backends_match_sequential(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU: the chunked path and (when mamba-ssm imports) the Triton kernel."""
    if backend == "triton" and not triton_ssd_available():
        pytest.skip("mamba-ssm is not importable")
    monkeypatch.setenv(ssd.SSD_BACKEND_ENV, backend)
    inputs = make_inputs(2, 300, 4, 64, 2, 64, torch.float32)
    cuda_inputs = {
        name: None if t is None else t.detach().cuda().requires_grad_(True)
        for name, t in inputs.items()
    }
    y_ref, grads_ref = output_and_grads(ssd_scan_ref, inputs)
    y, grads = output_and_grads(ssd_scan, cuda_inputs, chunk_size=64)
    # Triton may use TF32 matmuls, hence the looser bound.
    tolerance = 1e-2 if backend == "triton" else 1e-4
    assert relative_error(y.cpu(), y_ref) < tolerance
    for name, grad in grads.items():
        assert relative_error(grad.cpu(), grads_ref[name]) < tolerance, name
