"""Differentiable collectives over one process group, for chunks of unequal size along one dimension.

Both run on NCCL and gloo (whose ``all_gather`` refuses tensors of unequal size, hence the padding), and each
backward is the reverse exchange, so gradients flow back to the rank that owned each value:

* ``exchange``: rank r sends ``chunks[s]`` to rank s and receives one chunk from every rank (all-to-all).
* ``gather``: every rank's tensor, concatenated in rank order along ``dim`` (an all-gather of tensors padded to
  one size; its backward sums the gradients of every rank's copy, a reduce-scatter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


class CollectiveError(RuntimeError):
    """A collective failed, almost always because another process of the run stopped (its own message says why)."""


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failure inside a collective into a :class:`CollectiveError` naming ``what`` was exchanged."""
    try:
        yield
    except RuntimeError as err:
        raise CollectiveError(f"exchanging {what} with the other processes failed: {err}") from err


def split_sizes(n: int, parts: int) -> list[int]:
    """``n`` items in ``parts`` contiguous runs, the first ``n % parts`` one longer (``torch.tensor_split``'s rule)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class _AllToAll(torch.autograd.Function):
    """Flat all-to-all: ``send`` holds the chunks for ranks 0..N-1 back to back (``send_sizes`` elements each)."""

    @staticmethod
    def forward(ctx, send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int], group: ProcessGroup | None):
        ctx.sizes, ctx.group = (send_sizes, recv_sizes), group
        recv = send.new_empty(sum(recv_sizes))
        with collective("tokens"):
            dist.all_to_all_single(recv, send.contiguous(), recv_sizes, send_sizes, group=group)
        return recv

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        send_sizes, recv_sizes = ctx.sizes
        back = grad.new_empty(sum(send_sizes))
        with collective("gradients"):
            dist.all_to_all_single(back, grad.contiguous(), send_sizes, recv_sizes, group=ctx.group)
        return back, None, None, None


def exchange(
    chunks: list[torch.Tensor], recv_shapes: list[torch.Size], group: ProcessGroup | None = None
) -> list[torch.Tensor]:
    """All-to-all: ``chunks[s]`` goes to rank s; returns what each rank sent here, shaped ``recv_shapes[s]``.

    Every chunk has this rank's dtype and device; the receive shapes are known to the caller (from the
    partition), so no sizes travel. Differentiable."""
    if len(chunks) != dist.get_world_size(group) or len(recv_shapes) != len(chunks):
        raise ValueError(f"one chunk and one receive shape per rank, got {len(chunks)} and {len(recv_shapes)}")
    send = torch.cat([c.reshape(-1) for c in chunks]) if chunks else torch.empty(0)
    recv_sizes = [s.numel() for s in recv_shapes]
    flat = _AllToAll.apply(send, [c.numel() for c in chunks], recv_sizes, group)
    return [piece.view(shape) for piece, shape in zip(flat.split(recv_sizes), recv_shapes, strict=True)]


class _AllGather(torch.autograd.Function):
    """All-gather along ``dim`` of chunks ``sizes[r]`` long: each padded to the longest (collectives want equal
    sizes), gathered, trimmed and concatenated. Backward: each rank's slice of every rank's gradient, summed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, sizes: list[int], group: ProcessGroup | None):
        ctx.dim, ctx.sizes, ctx.group = dim, sizes, group
        longest = max(sizes)
        pad = list(x.shape)
        pad[dim] = longest - x.shape[dim]
        padded = torch.cat([x, x.new_zeros(pad)], dim=dim).contiguous() if pad[dim] else x.contiguous()
        every = [torch.empty_like(padded) for _ in sizes]
        with collective("tensors"):
            dist.all_gather(every, padded, group=group)
        return torch.cat([part.narrow(dim, 0, n) for part, n in zip(every, sizes, strict=True)], dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        slices = list(grad.split(ctx.sizes, dim=ctx.dim))
        mine = slices[dist.get_rank(ctx.group)].shape
        received = exchange(slices, [mine] * len(slices), ctx.group)
        return torch.stack(received).sum(0), None, None, None


def gather(x: torch.Tensor, dim: int, sizes: list[int], group: ProcessGroup | None = None) -> torch.Tensor:
    """Every rank's ``x``, concatenated in rank order along ``dim``; ``sizes``: each rank's length along ``dim``
    (the other dimensions are equal). Differentiable: the backward sums the gradients of every rank's copy."""
    dim = dim % x.dim()
    if x.shape[dim] != sizes[dist.get_rank(group)]:
        raise ValueError(f"this rank's tensor is {x.shape[dim]} long along dim {dim}, and sizes say "
                         f"{sizes[dist.get_rank(group)]}")
    return _AllGather.apply(x, dim, sizes, group)
