"""Measuring helpers shared by the benchmark tools: wall time and peak memory, CPU and CUDA.

Peak memory is the growth over the memory in use when a run starts: on CUDA
``torch.cuda.max_memory_allocated``; on CPU, where torch keeps no memory statistics, the
process' peak resident set (``VmHWM``), which Linux resets when ``5`` is written to
``/proc/self/clear_refs``.

On CPU the resident set counts the pages a run touches, and glibc serves allocations from the
heap's free chunks wherever they fit: measured in a process whose heap earlier runs have grown
(a training step before a forward pass), the same forward pass measured up to twice its
memory. :class:`CleanProcessMemory` therefore measures each run in a process forked from one
that has done no work yet, so every measurement starts from the same heap.
"""
import ctypes
import gc
import multiprocessing
import os
import statistics
import time
import traceback
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['synchronize', 'reset_peak_memory', 'peak_memory_mib', 'run_peak_memory_mib',
           'time_interleaved', 'measure', 'CleanProcessMemory', 'window_attention']


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor,
                     window: int = 7) -> torch.Tensor:
    """The operator benchmarks' peer: Swin's W-MSA with rpb (``[heads, 2w-1, 2w-1]``) on
    ``[B, H, W, heads, D]`` maps, padded to whole windows, through
    ``scaled_dot_product_attention`` (the same FLOPs as neighbourhood attention of kernel w)."""
    b, h, w, heads, dim = q.shape
    ph, pw = -h % window, -w % window
    if ph or pw:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pw, 0, ph)) for t in (q, k, v))
    hp, wp = h + ph, w + pw

    def windows(t: torch.Tensor) -> torch.Tensor:
        t = t.view(b, hp // window, window, wp // window, window, heads, dim)
        return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, window * window, dim)

    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing='ij')).flatten(1).to(q.device)
    rel = coords[:, :, None] - coords[:, None, :] + window - 1
    out = F.scaled_dot_product_attention(windows(q), windows(k), windows(v),
                                         attn_mask=rpb[:, rel[0], rel[1]].to(q.dtype))
    out = out.view(b, hp // window, wp // window, heads, window, window, dim)
    return out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, heads, dim)[:, :h, :w]


@lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, 'malloc_trim') else None


def _rss_peak_bytes() -> float:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024.
    except OSError:
        pass
    return float('nan')


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device, collect: bool = True) -> float:
    """Free what can be freed (``collect``: run the garbage collector too), reset the
    peak-memory counter; returns the baseline in bytes.

    On CPU (Linux) the baseline is the resident set after the reset; elsewhere ``nan``, and
    :func:`peak_memory_mib` then reports ``nan``.
    """
    if collect:
        gc.collect()
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return float(torch.cuda.memory_allocated(device))
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # give freed heap pages back, so the baseline is what is in use
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return float('nan')
    return _rss_peak_bytes()


def peak_memory_mib(device: torch.device, baseline: float) -> float:
    """Peak memory since :func:`reset_peak_memory` returned ``baseline``, above it, in MiB."""
    if device.type == 'cuda':
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    return (_rss_peak_bytes() - baseline) / 2**20


def run_peak_memory_mib(fn: Callable[[], None], device: torch.device,
                        collect: bool = True) -> float:
    """Run ``fn`` once, in this process; its peak memory above the memory in use before (MiB).

    Exact on CUDA; on CPU it depends on what ran before (see the module doc).
    """
    baseline = reset_peak_memory(device, collect)
    fn()
    synchronize(device)
    return peak_memory_mib(device, baseline)


def time_interleaved(fns: Mapping[str, Callable[[], None]], repeats: int,
                     device: torch.device, warmup: bool = True) -> Dict[str, float]:
    """Median time (ms) of several functions, timed in alternation.

    Each function runs once untimed (``warmup``), then ``repeats`` rounds run every function
    once each, so load that changes during the measurement (a shared machine) affects all of
    them alike and their ratios stay meaningful. The garbage collector runs once before the
    rounds and is paused during them. CUDA runs are timed with CUDA events (no host
    synchronisation between them); CPU runs with the wall clock.
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats=}.')
    if warmup:
        for fn in fns.values():
            fn()
    gc.collect()
    gc.disable()
    try:
        if device.type == 'cuda':
            events = {name: [] for name in fns}
            synchronize(device)
            for _ in range(repeats):
                for name, fn in fns.items():
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    start.record()
                    fn()
                    end.record()
                    events[name].append((start, end))
            synchronize(device)
            times = {name: [start.elapsed_time(end) for start, end in pairs]
                     for name, pairs in events.items()}
        else:
            times = {name: [] for name in fns}
            for _ in range(repeats):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in times.items()}


def measure(fn: Callable[[], None], repeats: int, device: torch.device) -> Tuple[float, float]:
    """Median wall time (ms) over ``repeats`` after one warm-up, and the peak memory (MiB) of
    one more run in this process (see :func:`run_peak_memory_mib`)."""
    ms = time_interleaved({'fn': fn}, repeats, device)['fn']
    return ms, run_peak_memory_mib(fn, device)


def _run_job(job: Callable[..., Callable[[], None]], args: Tuple[Any, ...]) -> float:
    fn = job(*args)
    fn()  # warm-up: one-time allocations, library code paged in
    return run_peak_memory_mib(fn, torch.device('cpu'))


def _zygote(conn: Connection) -> None:
    """Serve jobs: fork a worker per job, from this process that has done no work yet."""
    while True:
        request = conn.recv()
        if request is None:
            return
        pid = os.fork()
        if pid == 0:
            try:
                conn.send(('ok', _run_job(*request)))
            except BaseException:  # the parent raises it; the worker must never return
                conn.send(('error', traceback.format_exc()))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            conn.send(('error', f'the memory worker died (wait status {status}).'))


class CleanProcessMemory:
    """Peak CPU memory of runs, each measured in a fresh process with an unused heap.

    Start it before doing any work (it forks a server process right away, which forks one
    worker per measurement). A job is a picklable callable (a module-level function) that
    builds what it needs from picklable arguments and returns the function to measure; the
    worker runs that function once as a warm-up (one-time allocations, library code paged
    in), then once more, and reports the growth of its peak resident set (VmHWM) in that
    second run. Linux only (``fork``, ``/proc``).

    Example:
        >>> memory = CleanProcessMemory()
        >>> memory.peak_mib(make_training_step, 'dinat-tiny', 512)
        1024.0
        >>> memory.close()
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context('fork')
        self._conn, child = context.Pipe()
        self._server = context.Process(target=_zygote, args=(child, ), daemon=True)
        self._server.start()
        child.close()

    def peak_mib(self, job: Callable[..., Callable[[], None]], *args: Any) -> float:
        """Peak memory (MiB) of a run of ``job(*args)()`` in a fresh worker process."""
        self._conn.send((job, args))
        status, value = self._conn.recv()
        if status != 'ok':
            raise RuntimeError(f'Memory measurement of {job.__name__}{args} failed:\n{value}')
        return value

    def close(self) -> None:
        """Stop the server process."""
        if self._server.is_alive():
            self._conn.send(None)
            self._server.join()
        self._conn.close()
