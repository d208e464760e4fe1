"""Leaving a process group: every rank's backend torn down one at a time, the store's host last.

``dist.destroy_process_group()`` only drops torch's own references to the group. The gloo backend (two worker
threads, a socket loop thread and a socket to every peer; on rank 0 also the TCPStore server thread) lives on
while anything else references the group, and then is torn down by the interpreter's final garbage collection
(``Py_FinalizeEx``), at no agreed moment with respect to the peers, which close their sockets to it as they
exit. :func:`shutdown_distributed` makes the teardown happen here instead: it checks that nothing holds the
group any more (after a garbage collection), and after a clean finish it orders the ranks through the store:
with gloo from the highest rank down (each waits until the next has released its backend, so no rank tears
its connections down while a peer tears down its own), and rank 0, which hosts the TCPStore, leaves last.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import weakref
from collections.abc import Iterable
from datetime import timedelta

import torch.distributed as dist

from hpc_sr.dist.collectives import barrier

LEFT_KEY = "hpc_sr/teardown/left/{}"  # set by each rank once its backend is released
ORDER_TIMEOUT_S = 60.0  # the longest a rank waits for its peers' teardown (they passed the barrier with it)


def shutdown_distributed(wait_for_peers: bool = False, timeout_s: float = ORDER_TIMEOUT_S) -> bool:
    """Destroy the default process group and release its backend now; returns whether it was released.

    ``wait_for_peers`` (after a clean finish): a barrier, then the ordered teardown described in the module
    docstring, bounded by ``timeout_s`` in all. After an error nothing is waited for: a hung peer would make
    this rank wait out a timeout a second time. After a clean finish, a group still referenced elsewhere after
    the garbage collection is reported on stderr (its backend then goes at interpreter exit, unordered).
    """
    if not dist.is_initialized():
        return True
    rank, world = dist.get_rank(), dist.get_world_size()
    store = None
    if wait_for_peers and world > 1:
        try:
            barrier()
            store = dist.distributed_c10d._get_default_store()
        except RuntimeError:
            store = None  # a peer is gone: no ordering to agree on
    deadline = time.monotonic() + timeout_s
    if store is not None and dist.get_backend() == "gloo" and rank < world - 1:
        _wait_for(store, [rank + 1], deadline)  # the next rank has released its backend
    released = _destroy()
    if store is not None:
        with contextlib.suppress(RuntimeError):
            store.set(LEFT_KEY.format(rank), "1")
        if rank == 0:
            _wait_for(store, range(1, world), deadline)  # the store's host leaves after everybody else
    if not released and wait_for_peers and world > 1:  # after an error the traceback still holds the models
        print(f"[hpc_sr] rank {rank}: the process group is still referenced after destroy_process_group(); "
              "its backend threads and connections stay until interpreter exit", file=sys.stderr, flush=True)
    return released


def _destroy() -> bool:
    """``destroy_process_group`` and a garbage collection; True when no reference to the group remains."""
    group = weakref.ref(dist.distributed_c10d._get_default_group())
    dist.destroy_process_group()
    if group() is not None:
        gc.collect()  # the back-end's wrapped modules (DDP) may sit in reference cycles
    return group() is None


def _wait_for(store: dist.Store, ranks: Iterable[int], deadline: float) -> None:
    """Wait for the ``LEFT_KEY`` of ``ranks`` until ``deadline``; a peer that never arrives is not waited for
    beyond it (it died or hangs: its own launcher deals with it)."""
    keys = [LEFT_KEY.format(r) for r in ranks]
    left = deadline - time.monotonic()
    if not keys or left <= 0:
        return
    with contextlib.suppress(RuntimeError):  # DistStoreError (timeout, or the store host is gone)
        store.wait(keys, timedelta(seconds=left))
