"""The one-slot GPU check of the fused Triton kernels: correctness, determinism, DiNAT-T against
Swin-T, and the operator against its peers, planned to fit about 270 s on one GPU.

A GPU is lent for minutes at a time, so the run plans its time and accounts for it:

  checks       CUDA, a C compiler and the Python headers (Triton builds its launcher with
               them), free GPU memory. If one is missing: one line, exit 2, nothing spent.
  correctness  triton and tiled against the float64 gather form: forward and all four
               gradients, float32 / float16 / bfloat16 inputs with the float32 rpb that the
               model passes (its rpb is a float32 parameter, also under autocast).
  determinism  two backward passes under torch.use_deterministic_algorithms(True), bit for bit.
  model        DiNAT-T against Swin-T (timm's; the in-repository stand-in where timm is
               missing): forward + backward + AdamW step at 512x512, batch 8, bfloat16
               autocast. DiNAT-T is built with torch alone (no mmengine/mmcv needed).
  operator     na2d with rpb at DiNAT-T's level shapes (kernel 7, head dim 32; 512x512 with the
               'ade20k' dilations, then 800x1216 with the 'coco' ones; bfloat16 first, then
               float32). Per shape every peer is measured, interleaved (CUDA events, the
               garbage collector run once per row):
                 triton  na2d(backend='triton')
                 tiled   na2d(backend='torch'), the CUDA path before the kernels
                 flex    torch.compile'd FlexAttention, block mask of the windows, rpb as
                         score_mod (its rpb gradient goes through atomics)
                 window  Swin's 7x7 window attention with rpb through SDPA (the same FLOPs)
                 natten  natten.na2d without rpb, where NATTEN is installed
               Rows run while the budget lasts; a row that would not fit is listed as skipped.

The printout (at most 8 KB) gives the goal ratios first, then correctness, then the time
account; every table goes to DIR/benchmark_gpu.md and DIR/benchmark_gpu.json (``--out``),
written row by row, so a run cut short keeps what it measured.

``--device cpu --smoke`` runs a tiny version of every section on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``); the test suite runs it with mmengine and mmcv hidden.
``--static`` compiles every kernel variant for sm_90 and sm_80 and reports registers and spills
(ptxas; no GPU needed).

Example (from the repository root; PYTHONPATH=. where the package is not installed):
    PYTHONPATH=. python tools/benchmark_gpu.py --out results/      # on the GPU machine
    TRITON_INTERPRET=1 PYTHONPATH=. python tools/benchmark_gpu.py --device cpu --smoke
"""
import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from dinat_backbone._openmmlab import HAS_OPENMMLAB
from dinat_backbone.analysis.benchmark_utils import (run_peak_memory_mib, synchronize,
                                                     time_interleaved, window_attention)
from dinat_backbone.models import DILATION_PRESETS, DiNAT
from dinat_backbone.ops import na2d, na2d_gather

KERNEL = 7
HEAD_DIM = 32
HEADS = (2, 4, 8, 16)  # DiNAT-T, per level (stride 4, 8, 16, 32)
INPUTS = (((512, 512), 'ade20k'), ((800, 1216), 'coco'))
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
# Max error / max reference value against float64 that a backend must stay within.
TOLERANCE = {'float32': 1e-4, 'float16': 5e-3, 'bfloat16': 3e-2}
# Seconds per section (the total, with imports and set-up, is about 270 s on one H200).
PLAN = {'correctness': 35.0, 'determinism': 5.0, 'model': 45.0, 'operator': 170.0}
# A FlexAttention row's compilation and measurement, until one has run: 223 s and 158 s on
# the H200 machines' cold caches (torch 2.11, 2026-12-04; level 1 at 512x512, bfloat16).
FLEX_ROW_GUESS_S = 225.0
MIN_FREE_GIB = 24.0
# The H200's peaks for the roofline estimates: HBM3e bandwidth and dense bf16 tensor-core rate.
PEAK_BYTES_PER_S = 4.8e12
PEAK_FLOPS = 990e12
PRINT_LIMIT = 8000  # bytes of printout
Inputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def random_inputs(shape: Sequence[int], kernel: int, dtype: torch.dtype, device: torch.device,
                  seed: int = 0, rpb_dtype: torch.dtype = torch.float32) -> Inputs:
    """q, k, v of ``shape`` in ``dtype`` and an rpb ``[heads, 2k-1, 2k-1]`` in ``rpb_dtype``
    (float32, as the model's parameter)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=gen).to(device, dtype) for _ in range(3))
    rpb = torch.randn(shape[3], 2 * kernel - 1, 2 * kernel - 1, generator=gen)
    return q, k, v, rpb.to(device, rpb_dtype)


def flex_neighbourhood(height: int, width: int, dilation: int, device: torch.device,
                       compile: bool = True) -> Callable[..., torch.Tensor]:
    """FlexAttention computing ``na2d`` with rpb: a block mask of the dilated windows (NATTEN's
    shifted borders) and a ``score_mod`` adding ``rpb[h, dy + k - 1, dx + k - 1]``; compiled
    (the eager form builds the whole score matrix: for tests)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    k, d = KERNEL, dilation

    def axis(q_pos: torch.Tensor, k_pos: torch.Tensor, length: int) -> torch.Tensor:
        group = q_pos % d
        group_len = (length - group + d - 1) // d
        start = torch.clamp(torch.clamp(q_pos // d - k // 2, min=0), max=group_len - k)
        offset = k_pos // d - start
        return (k_pos % d == group) & (offset >= 0) & (offset < k)

    def mask_mod(b, h, q_idx, kv_idx):
        return (axis(q_idx // width, kv_idx // width, height)
                & axis(q_idx % width, kv_idx % width, width))

    block_mask = create_block_mask(mask_mod, None, None, height * width, height * width,
                                   device=device, _compile=compile)
    compiled = torch.compile(flex_attention, dynamic=False) if compile else flex_attention

    def attention(q: torch.Tensor, key: torch.Tensor, v: torch.Tensor,
                  rpb: torch.Tensor) -> torch.Tensor:
        def score_mod(score, b, h, q_idx, kv_idx):
            # Clamped: the mask drops other groups' keys, whose offsets are not whole.
            dy = torch.clamp((kv_idx // width - q_idx // width) // d + k - 1, 0, 2 * k - 2)
            dx = torch.clamp((kv_idx % width - q_idx % width) // d + k - 1, 0, 2 * k - 2)
            return score + rpb[h, dy, dx]

        b, h, w, heads, dim = q.shape
        q, key, v = (t.reshape(b, h * w, heads, dim).transpose(1, 2) for t in (q, key, v))
        out = compiled(q, key, v, score_mod=score_mod, block_mask=block_mask)
        return out.transpose(1, 2).reshape(b, h, w, heads, dim)

    return attention


def natten_na2d(dilation: int) -> Optional[Callable[..., torch.Tensor]]:
    try:
        import natten
    except ImportError:
        return None
    return lambda q, k, v, rpb: natten.na2d(q, k, v, kernel_size=KERNEL, dilation=dilation)


class Report:
    """The run's results: tables written to ``DIR/benchmark_gpu.md`` as they are measured (and
    the rows to ``benchmark_gpu.json``), and a short summary printed at the end."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.md_path, self.json_path = out_dir / 'benchmark_gpu.md', out_dir / 'benchmark_gpu.json'
        self.md_path.write_text('')
        self.data: Dict[str, Any] = {}
        self.started = time.monotonic()
        self.spent: Dict[str, float] = {}

    def write(self, *lines: str) -> None:
        with self.md_path.open('a') as f:
            f.write('\n'.join(lines) + '\n')

    def record(self, section: str, row: Dict[str, Any]) -> None:
        self.data.setdefault(section, []).append(row)
        self.json_path.write_text(json.dumps(self.data, indent=1))

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def roofline(shape: Sequence[int], dtype: torch.dtype, kernel: int = KERNEL
             ) -> Dict[str, Tuple[float, float, float]]:
    """The least work of na2d with rpb, forward and forward+backward: (bytes, FLOPs, the time
    in ms at the H200's peak bandwidth or tensor-core rate, whichever binds).

    Bytes: each of q, k, v, out read or written once (forward: q, k, v in, out and the float32
    logsumexp out; backward: q, k, v, out, d(out) and logsumexp in, dq, dk, dv out; rpb and its
    gradient are negligible). FLOPs: 2 per multiply-add of the k*k neighbours per query and head
    dim: QK and AV forward; the backward recomputes QK, then dV, dP, dQ, dK.
    """
    batch, height, width, heads, dim = shape
    size = torch.finfo(dtype).bits // 8
    tokens = batch * height * width * heads
    matmul = 2 * tokens * kernel * kernel * dim
    fwd = (tokens * dim * size * 4 + tokens * 4, 2 * matmul)
    bwd = (tokens * dim * size * 8 + tokens * 4, 5 * matmul)
    both = (fwd[0] + bwd[0], fwd[1] + bwd[1])
    return {name: (nbytes, flops, 1e3 * max(nbytes / PEAK_BYTES_PER_S, flops / PEAK_FLOPS))
            for name, (nbytes, flops) in (('fwd', fwd), ('fwd+bwd', both))}


def forward_backward(fn: Callable[..., torch.Tensor], inputs: Inputs, grad: torch.Tensor
                     ) -> List[torch.Tensor]:
    """Output and the gradients of q, k, v and rpb."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def correctness(report: Report, cases: Sequence[Tuple[Tuple[int, ...], int, int]],
                dtypes: Sequence[str], device: torch.device) -> None:
    report.write('## Correctness against the float64 gather form (max error / max reference)',
                 '', '| shape [B, H, W, heads, D] | kernel | dilation | dtype (rpb float32) '
                 '| backend | out | dq | dk | dv | drpb |', '|' + '---|' * 10)
    for shape, kernel, dilation in cases:
        for dtype_name in dtypes:
            inputs = random_inputs(shape, kernel, DTYPES[dtype_name], device)
            grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
            expected = forward_backward(
                lambda q, k, v, rpb: na2d_gather(q, k, v, kernel, dilation, rpb=rpb),
                tuple(t.double() for t in inputs), grad.double())
            for backend in ('triton', 'torch'):
                row = dict(shape=list(shape), kernel=kernel, dilation=dilation, dtype=dtype_name,
                           backend=backend)
                try:
                    result = forward_backward(
                        lambda q, k, v, rpb: na2d(q, k, v, kernel, dilation, rpb=rpb,
                                                  backend=backend), inputs, grad)
                    row['errors'] = [relative_error(a, b) for a, b in zip(result, expected)]
                    cells = [f'{e:.1e}' for e in row['errors']]
                except Exception as err:  # report and go on: one cell must not end the run
                    row['error'] = f'{type(err).__name__}: {err}'[:200]
                    cells = ['error: ' + row['error'][:100]] + [''] * 4
                report.record('correctness', row)
                report.write(f'| {list(shape)} | {kernel} | {dilation} | {dtype_name} | '
                             f'{backend} | ' + ' | '.join(cells) + ' |')
    report.write('')


def correctness_summary(rows: Sequence[Dict[str, Any]]) -> List[str]:
    lines = ['| dtype (rpb float32) | backend | max error (out, dq, dk, dv, drpb) | tolerance '
             '| within |', '|---|---|---|---|---|']
    keys = sorted({(r['dtype'], r['backend']) for r in rows}, key=lambda k: (k[0], k[1]))
    for dtype_name, backend in keys:
        group = [r for r in rows if (r['dtype'], r['backend']) == (dtype_name, backend)]
        failed = [r['error'] for r in group if 'error' in r]
        if failed:
            lines.append(f'| {dtype_name} | {backend} | error: {failed[0][:80]} | | no |')
            continue
        worst = max(max(r['errors']) for r in group)
        lines.append(f'| {dtype_name} | {backend} | {worst:.1e} | {TOLERANCE[dtype_name]:.0e} '
                     f'| {"yes" if worst <= TOLERANCE[dtype_name] else "NO"} |')
    return lines


def determinism(report: Report, shape: Tuple[int, ...], dilation: int,
                device: torch.device) -> str:
    inputs = random_inputs(shape, KERNEL, torch.float32, device)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    fn = lambda q, k, v, rpb: na2d(q, k, v, KERNEL, dilation, rpb=rpb,  # noqa: E731
                                   backend='triton')
    torch.use_deterministic_algorithms(True)
    try:
        first, second = (forward_backward(fn, inputs, grad) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(False)
    same = all(torch.equal(a, b) for a, b in zip(first, second))
    line = (f'Determinism: shape {list(shape)}, dilation {dilation}: out, dq, dk, dv, drpb '
            f'bit-identical: {same}')
    report.record('determinism', dict(shape=list(shape), dilation=dilation, identical=same))
    report.write('## Determinism', '', line, '')
    return line


def swin_tiny(size: int) -> Tuple[str, torch.nn.Module]:
    """timm's Swin-T, or the in-repository stand-in where timm is not installed."""
    try:
        import timm
    except ImportError:
        from dinat_backbone.analysis.swin_standin import SwinTinyStandIn
        return 'Swin-T (stand-in: timm not installed)', SwinTinyStandIn()
    return 'Swin-T (timm)', timm.create_model('swin_tiny_patch4_window7_224', img_size=size,
                                              num_classes=0)


def model(report: Report, batch: int, size: int, repeats: int, device: torch.device) -> str:
    """DiNAT-T and Swin-T training steps, interleaved; returns the ratio line."""
    swin_name, swin = swin_tiny(size)
    models = {'DiNAT-T': DiNAT('tiny', dilations='ade20k', drop_path_rate=0.0), swin_name: swin}
    images = torch.randn(batch, 3, size, size, device=device)
    autocast_dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    steps = {}
    for name, net in models.items():
        net = net.to(device).train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step(net: torch.nn.Module = net, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=device.type == 'cuda'):
                out = net(images)
            sum(o.float().mean() for o in (out if isinstance(out, (list, tuple)) else [out])
                ).backward()
            optimizer.step()

        steps[name] = step
    report.write(f'## Model: forward + backward + AdamW at {size}x{size}, batch {batch}, '
                 f'{autocast_dtype} autocast, median of {repeats}', '',
                 '| model | ms | peak MiB |', '|---|---|---|')
    try:
        times = time_interleaved(steps, repeats, device)
        memory = {name: run_peak_memory_mib(step, device, collect=False)
                  for name, step in steps.items()}
    except Exception as err:  # report and go on
        line = f'model: error: {type(err).__name__}: {str(err)[:200]}'
        report.write(line, '')
        return line
    for name in steps:
        report.write(f'| {name} | {times[name]:.1f} | {memory[name]:.0f} |')
        report.record('model', dict(model=name, ms=times[name], peak_mib=memory[name]))
    ratio = times['DiNAT-T'] / times[swin_name]
    line = (f'DiNAT-T {times["DiNAT-T"]:.1f} ms / {swin_name} {times[swin_name]:.1f} ms = '
            f'{ratio:.2f}x (goal <= 1.2x)')
    report.write('', line, '')
    for name, step in steps.items():
        profile(report, name, step, device)
    return line


def profile(report: Report, name: str, step: Callable[[], None], device: torch.device,
            rows: int = 15) -> None:
    """Where one step's time goes: torch.profiler's operators by self time on the device, and
    the number of kernels run there (in the file only)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda'
                                           else [])
    with torch_profile(activities=activities) as prof:
        step()
        synchronize(device)
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    table = prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)
    kernels = sum(e.count for e in prof.key_averages()
                  if e.device_type == torch.autograd.DeviceType.CUDA)
    report.write(f'### Profile of one {name} step ({kernels} kernels on the device)', '', '```',
                 table.strip(), '```', '')


Case = Tuple[str, int, Tuple[int, ...], int, str]  # input, level, shape, dilation, dtype


def level_cases(inputs: Sequence[Tuple[Tuple[int, int], str]], batch: int,
                dtypes: Sequence[str]) -> List[Case]:
    """DiNAT-T's attention shapes, in the order they are measured: per dtype, input size,
    level and distinct dilation of the input's preset."""
    cases = []
    for dtype in dtypes:
        for (height, width), preset in inputs:
            for level, dilations in enumerate(DILATION_PRESETS[preset]):
                stride = 4 * 2 ** level
                shape = (batch, math.ceil(height / stride), math.ceil(width / stride),
                         HEADS[level], HEAD_DIM)
                cases += [(f'{height}x{width}', level + 1, shape, dilation, dtype)
                          for dilation in sorted(set(dilations))]
    return cases


def peer_function(peer: str, shape: Tuple[int, ...], dilation: int, device: torch.device
                  ) -> Optional[Callable[..., torch.Tensor]]:
    if peer in ('triton', 'tiled'):
        backend = 'torch' if peer == 'tiled' else peer
        return lambda q, k, v, rpb: na2d(q, k, v, KERNEL, dilation, rpb=rpb, backend=backend)
    if peer == 'flex':
        return flex_neighbourhood(shape[1], shape[2], dilation, device)
    if peer == 'window':
        return window_attention
    return natten_na2d(dilation)


class Operator:
    """The operator rows, in two passes over the shapes, while the budget lasts: first every
    shape with the peers that set up in seconds (triton, tiled, window, natten), interleaved;
    then shapes again with triton and compiled FlexAttention interleaved, as long as the next
    compilation fits (FLEX_ROW_GUESS_S until one has been measured)."""

    def __init__(self, report: Report, peers: Sequence[str], repeats: int, deadline: float,
                 device: torch.device) -> None:
        self.report, self.repeats, self.deadline, self.device = report, repeats, deadline, device
        self.peers = [p for p in peers if p != 'natten' or natten_na2d(1) is not None]
        # Seconds each peer took in its last row: the estimate for the next one.
        self.last_s: Dict[str, float] = {'flex': FLEX_ROW_GUESS_S}
        report.write(f'## Operator: kernel {KERNEL}, rpb float32, median of {repeats} '
                     'interleaved runs (CUDA events on a GPU); peak MiB above the inputs', '',
                     '| input | level | map | batch x heads x dim | dilation | dtype | peer '
                     '| fwd ms | fwd+bwd ms | fwd+bwd MiB | fwd+bwd / triton '
                     '| fwd+bwd / roofline | set-up s (fwd + bwd) |', '|' + '---|' * 13)
        if 'natten' in peers and 'natten' not in self.peers:
            report.write('(natten: not installed)')

    def run(self, cases: Sequence[Case]) -> None:
        for case in cases:
            self.row(case, [p for p in self.peers if p != 'flex'], 'quick')
        if 'flex' not in self.peers:
            return
        for i, case in enumerate(cases):
            if not self.row(case, ['triton', 'flex'], 'flex'):
                left = self.deadline - time.monotonic()
                self.report.write(f'flex: {len(cases) - i} shapes not measured: '
                                  f'{left:.0f} s left, a flex row takes about '
                                  f'{self.last_s["flex"]:.0f} s (compilation included)')
                self.report.record('operator', dict(peer='flex', skipped=len(cases) - i))
                return

    def row(self, case: Case, peers: List[str], group: str) -> bool:
        """Measure ``peers`` on one shape, interleaved; False if the row does not fit."""
        input_name, level, shape, dilation, dtype_name = case
        prefix = (f'| {input_name} | {level} | {shape[1]}x{shape[2]} '
                  f'| {shape[0]}x{shape[3]}x{shape[4]} | {dilation} | {dtype_name} |')
        left = self.deadline - time.monotonic()
        if sum(self.last_s.get(p, 2.0) for p in peers) > left:
            if group == 'quick':
                self.report.write(prefix + f' {"/".join(peers)} | skipped: {left:.0f} s left '
                                  'of the budget | | | | | |')
                self.report.record('operator', dict(case=list(case), peer='quick', skipped=1))
            return False
        gc.collect()  # once per row: time_interleaved pauses the collector while it times
        dtype = DTYPES[dtype_name]
        q, k, v, rpb = random_inputs(shape, KERNEL, dtype, self.device)
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        grad = grad.to(self.device, dtype)
        leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
        forwards, steps, setup = {}, {}, {}
        for peer in peers:
            started = time.monotonic()
            try:
                fn = peer_function(peer, shape, dilation, self.device)
                if fn is None:
                    continue

                def forward(fn: Callable[..., torch.Tensor] = fn) -> None:
                    with torch.no_grad():
                        fn(q, k, v, rpb)

                def step(fn: Callable[..., torch.Tensor] = fn) -> None:
                    for t in leaves:
                        t.grad = None
                    fn(*leaves).backward(grad)

                # Warm-up, compiling (Triton JIT, torch.compile) where the peer does.
                forward()
                synchronize(self.device)
                forward_s = time.monotonic() - started
                step()
                synchronize(self.device)
                setup[peer] = (forward_s, time.monotonic() - started - forward_s)
                forwards[peer], steps[peer] = forward, step
            except Exception as err:  # report and go on: one cell must not end the run
                self.report.write(prefix + f' {peer} | error: {type(err).__name__}: '
                                  f'{str(err)[:150]} | | | | | |')
                self.report.record('operator', dict(case=list(case), peer=peer, group=group,
                                                    error=f'{type(err).__name__}: {err}'[:300]))
                setup[peer] = (time.monotonic() - started, 0.0)
        row_started = time.monotonic()
        fwd = time_interleaved(forwards, self.repeats, self.device, warmup=False)
        both = time_interleaved(steps, self.repeats, self.device, warmup=False)
        memory = {peer: run_peak_memory_mib(step, self.device, collect=False)
                  for peer, step in steps.items()}
        timing_s = (time.monotonic() - row_started) / max(len(steps), 1)
        ideal_ms = roofline(shape, dtype)['fwd+bwd'][2]
        for peer in peers:
            self.last_s[peer] = sum(setup[peer]) + timing_s
        for peer in steps:
            ratio = both[peer] / both['triton'] if 'triton' in both else float('nan')
            self.report.write(prefix + f' {peer} | {fwd[peer]:.3f} | {both[peer]:.3f} '
                              f'| {memory[peer]:.0f} | {ratio:.2f}x | {both[peer] / ideal_ms:.1f}x '
                              f'| {setup[peer][0]:.1f} + {setup[peer][1]:.1f} |')
            self.report.record('operator', dict(
                case=list(case), peer=peer, group=group, fwd_ms=fwd[peer],
                fwd_bwd_ms=both[peer], fwd_bwd_mib=memory[peer], setup_s=setup[peer],
                roofline_ms=ideal_ms))
        return True


def goal_lines(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The operator goals over the measured rows, per dtype: fwd+bwd of each peer / triton."""
    lines = ['| dtype | peer | rows | peer fwd+bwd / triton: min / median / max | goal | met in |',
             '|---|---|---|---|---|---|']
    goals = {'tiled': ('>= 3x', lambda r: r >= 3), 'flex': ('> 1x', lambda r: r > 1),
             'window': ('>= 0.67x (triton <= 1.5x window)', lambda r: r >= 1 / 1.5),
             'natten': ('- (no rpb)', None)}
    measured = [r for r in rows if 'fwd_bwd_ms' in r]
    # Each peer against the triton run interleaved with it (same pass, same shape).
    triton = {(r['group'], str(r['case'])): r['fwd_bwd_ms'] for r in measured
              if r['peer'] == 'triton'}
    for dtype_name in DTYPES:
        for peer, (goal, met) in goals.items():
            ratios = [r['fwd_bwd_ms'] / triton[key] for r in measured
                      if r['peer'] == peer and r['case'][4] == dtype_name
                      and (key := (r['group'], str(r['case']))) in triton]
            if not ratios:
                continue
            hits = f'{sum(map(met, ratios))}/{len(ratios)}' if met else '-'
            lines.append(f'| {dtype_name} | {peer} | {len(ratios)} | {min(ratios):.2f}x / '
                         f'{statistics.median(ratios):.2f}x / {max(ratios):.2f}x | {goal} '
                         f'| {hits} |')
        ideal = [r['fwd_bwd_ms'] / r['roofline_ms'] for r in measured
                 if r['peer'] == 'triton' and r['group'] == 'quick' and r['case'][4] == dtype_name]
        if ideal:
            lines.append(f'| {dtype_name} | roofline (triton / ideal) | {len(ideal)} '
                         f'| {min(ideal):.1f}x / {statistics.median(ideal):.1f}x / '
                         f'{max(ideal):.1f}x | - | - |')
    return lines


def preflight(device: torch.device) -> Optional[str]:
    """Why this machine cannot run the check (one line), or None."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f'triton is not importable ({err}): pip install "dinat-backbone[triton]"'
    if device.type == 'cpu':
        if os.environ.get('TRITON_INTERPRET', '0') in ('', '0'):
            return ('the kernels run on CPU tensors only under Triton\'s interpreter: set '
                    'TRITON_INTERPRET=1')
        return None
    if not torch.cuda.is_available():
        return f'no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda})'
    compiler = os.environ.get('CC') or next(
        (shutil.which(c) for c in ('cc', 'gcc', 'clang') if shutil.which(c)), None)
    if compiler is None:
        return 'no C compiler (Triton compiles its launcher at run time): install gcc or set CC'
    headers = Path(sysconfig.get_paths()['include'], 'Python.h')
    if not headers.exists():
        return (f'no Python headers ({headers}; Triton compiles its launcher against them): '
                'install python3-dev')
    free, total = torch.cuda.mem_get_info(device)
    if free < MIN_FREE_GIB * 2**30:
        return (f'{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB on '
                f'{torch.cuda.get_device_name(device)}; the run needs {MIN_FREE_GIB:.0f} GiB')
    return None


def summary(report: Report, header: str, model_line: str, determinism_line: str,
            plan: Dict[str, float]) -> str:
    lines = [header, '', '## Goals: operator fwd+bwd with rpb (peer / triton)', '']
    lines += goal_lines(report.data.get('operator', []))
    lines += ['', f'Model: {model_line}', '', '## Correctness (rpb float32, as the model)', '']
    lines += correctness_summary(report.data.get('correctness', []))
    lines += ['', determinism_line, '', '## Time account (s)', '',
              '| section | planned | spent |', '|---|---|---|']
    lines += [f'| {name} | {plan.get(name, 0):.0f} | {spent:.0f} |'
              for name, spent in report.spent.items()]
    skipped = sum(r.get('skipped', 0) for r in report.data.get('operator', []))
    errors = sum(1 for r in report.data.get('operator', []) if 'error' in r)
    lines += [f'| total | {sum(plan.values()):.0f} | {report.elapsed():.0f} |', '',
              f'Operator rows skipped for time: {skipped}, errors: {errors}. '
              f'Every table: {report.md_path}']
    text = '\n'.join(lines)
    if len(text.encode()) > PRINT_LIMIT:
        tail = f'\n... (cut at {PRINT_LIMIT} bytes; every table: {report.md_path})'
        text = text.encode()[:PRINT_LIMIT - len(tail)].decode(errors='ignore') + tail
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny shapes, one repeat (with --device cpu: under the interpreter)')
    parser.add_argument('--static', action='store_true',
                        help='compile every kernel variant for sm_90/sm_80 and report '
                        'registers and spills (no GPU needed), then exit')
    parser.add_argument('--out', type=Path, default=Path('work_dirs/benchmark_gpu'),
                        help='folder for the full results (benchmark_gpu.md / .json)')
    parser.add_argument('--batch', type=int, default=2, help='operator batch size')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--budget', type=float, default=sum(PLAN.values()),
                        help='seconds for all sections; the operator gets what the others '
                        'leave')
    parser.add_argument('--peers', nargs='+', default=['triton', 'tiled', 'window', 'natten',
                                                       'flex'],
                        help='operator peers; the last ones are dropped first for time')
    args = parser.parse_args()
    if args.static:
        from dinat_backbone.analysis.kernel_static import static_report
        sys.exit(0 if static_report() == 0 else 1)
    device = torch.device(args.device)
    problem = preflight(device)
    if problem is not None:
        print(f'benchmark_gpu: cannot run: {problem}')
        sys.exit(2)
    import triton
    report = Report(args.out)
    gpu = torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor()
    header = (f'# Triton DiNA kernels: GPU check{" (smoke run)" if args.smoke else ""}\n\n'
              f'torch {torch.__version__}, triton {triton.__version__}, Python '
              f'{platform.python_version()}, device {device} ({gpu}); mmengine/mmcv '
              f'{"installed" if HAS_OPENMMLAB else "not installed"}; {time.strftime("%Y-%m-%d")}')
    report.write(header, '')
    plan = dict(PLAN, operator=args.budget - sum(v for k, v in PLAN.items() if k != 'operator'))

    def section(name: str, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            return fn()
        except Exception as err:  # one section must not cost the others their slot
            line = f'{name}: error: {type(err).__name__}: {str(err)[:300]}'
            report.write(line, '')
            return line
        finally:
            report.spent[name] = time.monotonic() - started

    if args.smoke:
        section('correctness', lambda: correctness(report, [((1, 9, 10, 2, 8), 3, 2)],
                                                   ['float32'], device))
        determinism_line = section('determinism',
                                   lambda: determinism(report, (1, 9, 10, 2, 8), 1, device))
        model_line = section('model', lambda: model(report, 1, 64, 1, device))
        cases: List[Case] = [('smoke', 1, (1, 9, 10, 2, 8), 1, 'float32')]
        # Compiled FlexAttention, and NATTEN's backward (FlexAttention there), are GPU-only.
        peers = [p for p in args.peers if p not in ('flex', 'natten')]
    else:
        section('correctness', lambda: correctness(
            report, [((2, 20, 23, 2, 32), 7, 1), ((1, 28, 30, 2, 32), 7, 4),
                     ((1, 45, 33, 3, 32), 11, 3)], ['float32', 'float16', 'bfloat16'], device))
        determinism_line = section('determinism',
                                   lambda: determinism(report, (2, 64, 64, 4, 32), 4, device))
        model_line = section('model', lambda: model(report, 8, 512, args.repeats, device))
        cases = level_cases(INPUTS, args.batch, ['bfloat16', 'float32'])
        peers = list(args.peers)
    deadline = report.started + args.budget
    operator = Operator(report, peers, 1 if args.smoke else args.repeats, deadline, device)
    section('operator', lambda: operator.run(cases))
    print(summary(report, header, model_line, determinism_line, plan))


if __name__ == '__main__':
    main()
