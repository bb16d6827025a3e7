"""Data-parallel pretraining under torchrun: the process group from torchrun's environment, each rank's share of a
global batch, and sums over ranks. A process started without torchrun never touches torch.distributed.

The run is defined by its global batches: every rank draws the same crops and masks for the whole batch from the
shared data generator (so the random streams are those of the one-process run), then keeps every W-th utterance.
Each rank scales its mean L1 so that DDP's gradient average is the gradient of the global mean over all masked
elements of the batch, which is the one-process loss; see docs/scale.md.
"""
from __future__ import annotations

import gc
import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ContextManager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT_S = 1800.0  # a collective waiting longer than this fails the run (a rank died or hangs)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank r of `world` processes (0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current() -> Ranks:
    """The initialised default process group's rank and size, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def launched_with_ranks() -> int:
    """The number of processes torchrun started (its WORLD_SIZE), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def init_from_env(device: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group torchrun describes (env:// rendezvous: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE):
    nccl with one GPU per process (LOCAL_RANK) on CUDA, gloo on CPU. Returns this rank's device."""
    want = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} CUDA device(s): "
                             "start at most one process per GPU (torchrun --nproc_per_node)")
        want = torch.device("cuda", local)
        torch.cuda.set_device(want)
    dist.init_process_group("nccl" if want.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return want


def shutdown(synchronise: bool = False) -> None:
    """Leave the process group; with `synchronise` (a run that ended normally), once every rank has arrived: a rank
    that tore its gloo connections down while rank 0 was still writing the checkpoint could abort the other
    (SIGABRT in tests/test_ddp.py's torchrun run, now and then). Not after an error: the other ranks may never come."""
    if dist.is_available() and dist.is_initialized():
        if synchronise:
            dist.barrier()
        # a DDP wrapper left in a reference cycle keeps the group alive through its reducer after destroy_process_group,
        # to be torn down at the interpreter's finalisation, where gloo's pending work can abort the process
        # (pytorch/pytorch#179291): collected here, while the interpreter is whole. A mitigation: the abort (1 in 20+
        # runs of tests/test_ddp.py's torchrun test, "terminate called without an active exception") is too rare to
        # show the cause
        gc.collect()
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP over `model` (parameters broadcast from rank 0; the encoder has no buffers to keep in step).

    find_unused_parameters: a Pre-LN encoder has one output LayerNorm per reported hidden state and pretraining
    reads only the last, so the others get no gradient, which DDP otherwise refuses at the second step."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False, find_unused_parameters=True)


def local_share(batch: tuple[Tensor, Tensor, Tensor, Tensor], ranks: Ranks
                ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], float]:
    """This rank's utterances of a global (clean x, lengths, masked input, loss mask) batch, padding trimmed to them,
    and the factor its mean masked L1 is multiplied by: world x (its masked frames / the batch's), so that the
    average over ranks (DDP averages gradients) is the mean over all masked elements of the global batch.

    Rank r keeps utterances r, r + W, ... (batches are length-sorted, so shares have similar lengths). A rank left
    without an utterance (a batch smaller than the world) computes on the first one with factor 0: every rank must
    run forward and backward for DDP's gradient all-reduce.
    """
    x, lengths, inp, mask = batch
    rows = list(range(ranks.rank, x.shape[0], ranks.world))
    n_global = int(mask.sum())
    weight = ranks.world * int(mask[rows].sum()) / max(n_global, 1) if rows else 0.0
    idx = torch.tensor(rows or [0])
    t = int(lengths[idx].max())
    return (x[idx, :t], lengths[idx], inp[idx, :t], mask[idx, :t]), weight


def no_sync(net: nn.Module, sync: bool) -> ContextManager[Any]:
    """DDP accumulates gradients locally (no all-reduce) in every micro-batch but the step's last."""
    return net.no_sync() if isinstance(net, DistributedDataParallel) and not sync else nullcontext()


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of rank `rank` at step `step` with several ranks: dropout differs between ranks (each drops
    its own utterances' units independently) and a resume with the same number of ranks draws the same masks."""
    return (seed * 1_000_003 + step) * 1_009 + rank


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over ranks of a few scalars, in float64 (one all-reduce)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's `obj` on every rank (pickled by torch.distributed; process-internal, never written)."""
    box = [obj if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()
