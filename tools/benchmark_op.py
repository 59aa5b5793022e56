"""Benchmark the DiNA operator against its peers on the DiNAT-Tiny level shapes at 512x512.

In one process, per shape (level map, heads, head dim, kernel 7, ADE20K dilations), it times
forward and forward+backward and measures peak memory of:
  ours      dinat_backbone.ops.na2d with rpb (what the backbone runs: on the CPU, the
            compiled kernels of dinat_backbone.ops.cpu_kernels)
  tiled     our tiled pure-PyTorch implementation (na2d backend='torch'; the fallback, and
            the CPU path before the compiled kernels)
  natten    natten.na2d forward, no rpb (NATTEN 0.21 has no rpb and no CPU backward)
  naive     full H*W x H*W attention with a -inf neighbourhood mask (only where it fits)
  window    Swin-style 7x7 window attention with rpb on the same map (same FLOPs as NA)
and prints the ratios the project tracks. Results go to stdout as a markdown table.

Example:
    python tools/benchmark_op.py                # all shapes, CPU
    python tools/benchmark_op.py --levels 1 2 --skip natten
"""
import argparse
import platform
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from dinat_backbone.analysis.benchmark_utils import measure, window_attention
from dinat_backbone.ops import na2d, select_backend

# DiNAT-Tiny at 512x512: (map size, channels, heads, ADE20K dilations used at that level)
TINY_LEVELS = {
    1: (128, 64, 2, (1, 16)),
    2: (64, 128, 4, (1, 4, 8)),
    3: (32, 256, 8, (1, 2, 3, 4)),
    4: (16, 512, 16, (1, 2)),
}
KERNEL = 7


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
    b, h, w, heads, dim = q.shape
    qf, kf, vf = (t.reshape(b, h * w, heads, dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, h, w, heads, dim)


def neighbourhood_mask(size: int, dilation: int, device: torch.device) -> torch.Tensor:
    """``[size*size, size*size]`` additive mask of the (dilated) neighbourhoods."""
    idx = torch.arange(size, device=device)
    group, pos = idx % dilation, idx // dilation
    group_len = (size - group + dilation - 1) // dilation
    start = torch.minimum((pos - KERNEL // 2).clamp(min=0), group_len - KERNEL)
    key_pos = idx // dilation
    same_group = group[:, None] == (idx % dilation)[None]
    inside = (key_pos[None] >= start[:, None]) & (key_pos[None] < start[:, None] + KERNEL)
    axis = same_group & inside                                       # [size, size]
    allowed = (axis[:, None, :, None] & axis[None, :, None, :]).reshape(size * size, -1)
    return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float('-inf'))


def run_case(level: int, dilation: int, args: argparse.Namespace, device: torch.device
             ) -> Tuple[str, Dict[str, Optional[Tuple[float, float]]]]:
    """The backend ``na2d`` picks for this shape, and ``{peer and pass: (ms, peak MiB)}``."""
    size, channels, heads, _ = TINY_LEVELS[level]
    dim = channels // heads
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, size, size, heads, dim, generator=gen).to(device)
               for _ in range(3))
    rpb = (0.02 * torch.randn(heads, 2 * KERNEL - 1, 2 * KERNEL - 1, generator=gen)).to(device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    results: Dict[str, Optional[Tuple[float, float]]] = {}

    def fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            for t in leaves:
                t.grad = None
            fn(*leaves).sum().backward()
        return step

    ours = lambda q, k, v, rpb: na2d(q, k, v, KERNEL, dilation, rpb=rpb)  # noqa: E731
    with torch.no_grad():
        results['ours fwd'] = measure(lambda: ours(q, k, v, rpb), args.repeats, device)
    results['ours fwd+bwd'] = measure(fwd_bwd(ours), args.repeats, device)

    if 'tiled' not in args.skip:
        tiled = lambda q, k, v, rpb: na2d(q, k, v, KERNEL, dilation, rpb=rpb,  # noqa: E731
                                          backend='torch')
        with torch.no_grad():
            results['tiled fwd'] = measure(lambda: tiled(q, k, v, rpb), args.repeats, device)
        results['tiled fwd+bwd'] = measure(fwd_bwd(tiled), args.repeats, device)

    with torch.no_grad():
        results['window fwd'] = measure(lambda: window_attention(q, k, v, rpb), args.repeats,
                                        device)
    results['window fwd+bwd'] = measure(fwd_bwd(window_attention), args.repeats, device)

    if 'natten' not in args.skip:
        import natten
        with torch.no_grad():
            results['natten fwd'] = measure(
                lambda: natten.na2d(q, k, v, kernel_size=KERNEL, dilation=dilation), 1, device)
    if 'naive' not in args.skip and (size * size) ** 2 * heads * 4 * args.batch <= 2**30:
        mask = neighbourhood_mask(size, dilation, device)
        with torch.no_grad():
            results['naive fwd'] = measure(lambda: naive_attention(q, k, v, mask), args.repeats,
                                           device)
    return select_backend(q, rpb, dilation=dilation), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--levels', type=int, nargs='+', default=sorted(TINY_LEVELS),
                        choices=sorted(TINY_LEVELS), help='DiNAT-Tiny levels to run')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per measurement')
    parser.add_argument('--skip', nargs='*', default=[], choices=['natten', 'naive', 'tiled'],
                        help='peers to leave out (natten takes ~40 s per 128x128 call on CPU)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f'# DiNA operator benchmark: DiNAT-Tiny level shapes at 512x512, kernel {KERNEL}, '
          f'batch {args.batch}')
    print(f'torch {torch.__version__}, device {device} ({platform.processor() or "cpu"}), '
          f'{torch.get_num_threads()} threads, median of {args.repeats} runs (natten: 1 run)\n')
    print('| level | map | heads x dim | dilation | ours backend | ours fwd ms | ours fwd+bwd ms '
          '| tiled fwd ms | tiled fwd+bwd ms | window fwd ms | window fwd+bwd ms | natten fwd ms '
          '| naive fwd ms | ours peak MiB (fwd / fwd+bwd) | fwd / window | fwd+bwd / window '
          '| fwd / tiled | fwd+bwd / tiled | fwd / natten | fwd+bwd / fwd |')
    print('|' + '---|' * 20)
    for level in args.levels:
        size, channels, heads, dilations = TINY_LEVELS[level]
        for dilation in dilations:
            backend, r = run_case(level, dilation, args, device)

            def t(key: str) -> str:
                return f'{r[key][0]:.1f}' if r.get(key) else '-'

            def ratio(a: str, b: str) -> str:
                return f'{r[a][0] / r[b][0]:.2f}x' if r.get(a) and r.get(b) else '-'

            print(f'| {level} | {size}x{size} | {heads}x{channels // heads} | {dilation} '
                  f'| {backend} '
                  f'| {t("ours fwd")} | {t("ours fwd+bwd")} | {t("tiled fwd")} '
                  f'| {t("tiled fwd+bwd")} | {t("window fwd")} | {t("window fwd+bwd")} '
                  f'| {t("natten fwd")} | {t("naive fwd")} '
                  f'| {r["ours fwd"][1]:.0f} / {r["ours fwd+bwd"][1]:.0f} '
                  f'| {ratio("ours fwd", "window fwd")} '
                  f'| {ratio("ours fwd+bwd", "window fwd+bwd")} '
                  f'| {ratio("ours fwd", "tiled fwd")} | {ratio("ours fwd+bwd", "tiled fwd+bwd")} '
                  f'| {ratio("ours fwd", "natten fwd")} | {ratio("ours fwd+bwd", "ours fwd")} |',
                  flush=True)


if __name__ == '__main__':
    main()
