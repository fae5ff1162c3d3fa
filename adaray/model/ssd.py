"""The SSD (state space duality) scan of the Mamba-2 mixer, behind one contract.

Contract (that of ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` without
``z``, ``dt_bias`` or ``dt_softplus``)::

    x  (b, l, h, p)   inputs, h heads of width p
    dt (b, l, h)      step sizes, already positive (no softplus is applied here)
    A  (h,)           per-head decay rate, negative
    B, C (b, l, g, n) input / output projections, g groups; head i uses group i // (h // g)
    D  (h,) | (h, p) | None   skip connection
    ->  y (b, l, h, p)

For every head, with a state s of shape (p, n) starting at zero:
``s_t = exp(dt_t * A) * s_{t-1} + dt_t * x_t ⊗ B_t`` and ``y_t = s_t · C_t + D * x_t``.

Three implementations:

- ``ssd_scan_ref``: the sequential recurrence, the oracle the others are tested against;
- ``ssd_scan_chunked``: chunked SSD in plain PyTorch (CPU, or CUDA without mamba-ssm);
- ``ssd_scan_triton``: mamba-ssm's Triton kernel (CUDA), imported only when used.

``ssd_scan`` picks one from the ``ADARAY_SSD`` environment variable and the tensor's device.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

SSD_BACKEND_ENV = "ADARAY_SSD"
SSD_BACKEND_CHOICES = ("auto", "torch", "triton")


def _check_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
) -> None:
    """Raise ValueError unless the shapes follow the contract in the module docstring."""
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    batch, seqlen, nheads, headdim = x.shape
    if seqlen == 0:
        raise ValueError("x has an empty sequence (seqlen = 0)")
    if dt.shape != (batch, seqlen, nheads):
        raise ValueError(
            f"dt must have shape (batch, seqlen, nheads) = {(batch, seqlen, nheads)}, "
            f"got {tuple(dt.shape)}"
        )
    if A.shape != (nheads,):
        raise ValueError(f"A must have shape (nheads,) = ({nheads},), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, seqlen):
        raise ValueError(
            f"B must be (batch, seqlen, ngroups, dstate) with batch, seqlen = {batch}, {seqlen}, "
            f"got {tuple(B.shape)}"
        )
    if C.shape != B.shape:
        raise ValueError(f"C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}")
    ngroups = B.shape[2]
    if ngroups == 0 or nheads % ngroups != 0:
        raise ValueError(f"B/C groups ({ngroups}) must divide the number of heads ({nheads})")
    if D is not None and D.shape not in ((nheads,), (nheads, headdim)):
        raise ValueError(
            f"D must have shape (nheads,) = ({nheads},) or (nheads, headdim) = "
            f"({nheads}, {headdim}), got {tuple(D.shape)}"
        )


def _add_skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """y + D * x, with D of shape (h,) or (h, p); y unchanged when D is None."""
    if D is None:
        return y
    return y + x * (D[:, None] if D.dim() == 1 else D)


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequential SSD recurrence (the oracle): a Python loop over time, O(l) steps."""
    _check_inputs(x, dt, A, B, C, D)
    batch, _, nheads, headdim = x.shape
    heads_per_group = nheads // B.shape[2]
    B_heads = B.repeat_interleave(heads_per_group, dim=2)  # (b, l, h, n)
    C_heads = C.repeat_interleave(heads_per_group, dim=2)
    step_decay = torch.exp(dt * A)  # (b, l, h)
    dt_x = dt[..., None] * x  # (b, l, h, p)
    state = x.new_zeros(batch, nheads, headdim, B.shape[3])
    outputs = []
    # unbind (not indexing inside the loop) keeps the backward linear in l.
    for decay_t, dt_x_t, B_t, C_t in zip(
        step_decay.unbind(1), dt_x.unbind(1), B_heads.unbind(1), C_heads.unbind(1), strict=True
    ):
        state = decay_t[..., None, None] * state + dt_x_t[..., None] * B_t[:, :, None, :]
        outputs.append(torch.matmul(state, C_t[..., None]).squeeze(-1))
    return _add_skip(torch.stack(outputs, dim=1), x, D)


def _exp_segsum(log_decay: torch.Tensor) -> torch.Tensor:
    """(..., Q) -> (..., Q, Q) with [i, j] = exp(sum of log_decay[j+1 .. i]) for i >= j.

    Entries above the diagonal are exp(0) = 1; callers mask them (the score matrix they
    multiply is lower-triangular), which is cheaper than a -inf fill and keeps gradients finite.
    The masked cumulative sum (rather than a difference of two cumsums) keeps each segment
    accurate in fp32 however large the cumulative decay gets.
    """
    chunk = log_decay.shape[-1]
    keep_strict = torch.ones(chunk, chunk, dtype=torch.bool, device=log_decay.device).tril(-1)
    segsum = torch.where(keep_strict, log_decay[..., :, None], 0.0).cumsum(dim=-2)
    return segsum.exp()


def _carry_states(
    chunk_states: torch.Tensor, chunk_log_decay: torch.Tensor, block: int = 32
) -> torch.Tensor:
    """State at the start of every chunk, from what each chunk adds at its end.

    chunk_states (b, h, c, m) and each chunk's total log decay (b, h, c) ->
    start (b, h, c, m) with start[k] = sum_{j < k} exp(sum of log decay over j+1 .. k-1) u_j.
    Two levels, so the Python loop is over blocks of `block` chunks, not over chunks: inside
    a block the recurrence is one masked decay matrix times the states (like the intra-chunk
    step); a loop over unbind-ed blocks carries the state from block to block.
    """
    batch, nheads, nchunks, width = chunk_states.shape
    pad = -nchunks % block
    if pad:  # trailing chunks with no input and no decay change nothing before them
        chunk_states = F.pad(chunk_states, (0, 0, 0, pad))
        chunk_log_decay = F.pad(chunk_log_decay, (0, pad))
    nblocks = (nchunks + pad) // block
    inputs = chunk_states.reshape(batch, nheads, nblocks, block, width)
    log_decay = chunk_log_decay.reshape(batch, nheads, nblocks, block)
    mixer = _exp_segsum(log_decay).tril()  # (b, h, nblocks, block, block)
    within = torch.matmul(mixer, inputs)  # state after each chunk, from zero at block start
    from_block_start = log_decay.cumsum(dim=-1).exp()  # block start -> after chunk i
    incoming = [within.new_zeros(batch, nheads, width)]
    for block_end, block_decay in zip(
        within[..., -1, :].unbind(2)[:-1], from_block_start[..., -1].unbind(2)[:-1], strict=True
    ):
        incoming.append(block_decay[..., None] * incoming[-1] + block_end)
    after = within + from_block_start[..., None] * torch.stack(incoming, dim=2)[..., None, :]
    after = after.reshape(batch, nheads, nblocks * block, width)[:, :, :nchunks]
    return F.pad(after[:, :, :-1], (0, 0, 1, 0))  # start of chunk k = after chunk k - 1


def ssd_scan_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Chunked SSD in plain PyTorch: exact (up to rounding) and differentiable.

    The sequence is padded with dt = 0 to a multiple of ``chunk_size``. Within a chunk the
    output is a masked quadratic form (attention-like, with a segment-sum decay mask); across
    chunks the state at each chunk's end is carried forward by `_carry_states`.
    """
    _check_inputs(x, dt, A, B, C, D)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    heads_per_group = nheads // ngroups
    pad = -seqlen % chunk_size
    nchunks = (seqlen + pad) // chunk_size
    x_in = x
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))

    # Sequence-major layouts (b, c, Q, h, p): the chunk-state and inter-chunk products then
    # fold the heads of a group into one matmul without copies.
    x_c = x.reshape(batch, nchunks, chunk_size, nheads, headdim)
    dt_c = dt.reshape(batch, nchunks, chunk_size, nheads)
    dt_x = x_c * dt_c[..., None]  # (b, c, Q, h, p)
    B_c = B.reshape(batch, nchunks, chunk_size, ngroups, dstate)
    C_c = C.reshape(batch, nchunks, chunk_size, ngroups, dstate)

    # Decays are head-major (b, h, c, Q[, Q]).
    log_decay = (dt_c.permute(0, 3, 1, 2) * A[:, None, None]).contiguous()
    decay_from_start = log_decay.cumsum(dim=-1).exp()  # chunk start -> position i (inclusive)
    decay_within = _exp_segsum(log_decay)  # (b, h, c, Q, Q): position j -> position i

    # 1. Intra-chunk: y_i = sum_{j <= i} (C_i · B_j) decay(j -> i) dt_j x_j, one matmul per head.
    scores = torch.einsum("bcign,bcjgn->bgcij", C_c, B_c).tril_()  # (b, g, c, Q, Q)
    mixer = decay_within.reshape(batch, ngroups, heads_per_group, nchunks, chunk_size, chunk_size)
    mixer = (mixer * scores[:, :, None]).reshape(batch, nheads, nchunks, chunk_size, chunk_size)
    y = torch.stack(
        [
            torch.matmul(mixer_head, dt_x_head)
            for mixer_head, dt_x_head in zip(mixer.unbind(1), dt_x.unbind(3), strict=True)
        ],
        dim=3,
    )  # (b, c, Q, h, p)

    # 2. State each chunk contributes at its end: sum_j decay(j -> end) dt_j x_j ⊗ B_j,
    # stored transposed as (n, p) per head.
    decay_to_end = decay_within[..., -1, :].permute(0, 2, 3, 1)  # (b, c, Q, h)
    weighted_x = (dt_x * decay_to_end[..., None]).reshape(
        batch, nchunks, chunk_size, ngroups, heads_per_group * headdim
    )
    chunk_states = torch.einsum("bcqgn,bcqgm->cbgnm", B_c, weighted_x).reshape(
        nchunks, batch, ngroups, dstate, heads_per_group, headdim
    )

    # 3. Carry states across chunks: the state at each chunk's start, per head.
    per_head = chunk_states.permute(1, 2, 4, 0, 3, 5).reshape(
        batch, nheads, nchunks, dstate * headdim
    )
    start = _carry_states(per_head, log_decay.sum(dim=-1))  # (b, h, c, n * p)
    start = (
        start.reshape(batch, ngroups, heads_per_group, nchunks, dstate, headdim)
        .permute(3, 0, 1, 4, 2, 5)
        .reshape(nchunks, batch, ngroups, dstate, heads_per_group * headdim)
    )

    # 4. Inter-chunk: y_i += decay(start -> i) C_i · state at the chunk's start.
    y_from_start = torch.einsum("bcqgn,cbgnm->bcqgm", C_c, start).reshape(
        batch, nchunks, chunk_size, nheads, headdim
    )
    y = y + y_from_start * decay_from_start.permute(0, 2, 3, 1)[..., None]
    y = y.reshape(batch, nchunks * chunk_size, nheads, headdim)
    return _add_skip(y[:, :seqlen], x_in, D)


@functools.cache
def triton_ssd_unavailable_reason() -> str | None:
    """Why the Triton SSD cannot run here (None when it can). Probed once, then cached."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except ImportError as exc:
        return (
            f"mamba-ssm is not installed or not importable ({exc}); install the 'gpu' extra "
            "(see README, 'GPU')"
        )
    return None


def triton_ssd_available() -> bool:
    """True when CUDA is available and mamba-ssm's Triton SSD kernel imports."""
    return triton_ssd_unavailable_reason() is None


def ssd_scan_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """mamba-ssm's fused Triton SSD (CUDA only), called with this module's contract."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    _check_inputs(x, dt, A, B, C, D)
    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D)


def _requested_backend() -> str:
    """The value of ADARAY_SSD, read now; 'auto' when unset or empty."""
    requested = os.environ.get(SSD_BACKEND_ENV, "").strip().lower() or "auto"
    if requested not in SSD_BACKEND_CHOICES:
        raise ValueError(
            f"{SSD_BACKEND_ENV}={os.environ[SSD_BACKEND_ENV]!r} is not valid; "
            f"use one of {', '.join(SSD_BACKEND_CHOICES)} (unset means auto)"
        )
    return requested


def active_ssd_backend(device: torch.device | str = "cpu") -> str:
    """The SSD backend ``ssd_scan`` uses for tensors on ``device``: "torch" or "triton".

    ``ADARAY_SSD`` = torch | triton | auto (unset: auto = triton on CUDA when mamba-ssm
    imports, torch otherwise). Raises RuntimeError when triton is forced but cannot run on
    ``device``, ValueError for any other value of the variable.
    """
    requested = _requested_backend()
    if requested == "torch":
        return "torch"
    on_cuda = torch.device(device).type == "cuda"
    if requested == "triton":
        if not on_cuda:
            raise RuntimeError(
                f"{SSD_BACKEND_ENV}=triton needs tensors on a CUDA device, got {device}; "
                f"unset {SSD_BACKEND_ENV} or set it to torch"
            )
        reason = triton_ssd_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"{SSD_BACKEND_ENV}=triton but the Triton SSD cannot run: {reason}")
        return "triton"
    return "triton" if on_cuda and triton_ssd_available() else "torch"


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The SSD scan the network calls: Triton or chunked PyTorch, per ``active_ssd_backend``."""
    if active_ssd_backend(x.device) == "triton":
        return ssd_scan_triton(x, dt, A, B, C, D, chunk_size)
    return ssd_scan_chunked(x, dt, A, B, C, D, chunk_size)
