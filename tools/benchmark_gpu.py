"""The one-command GPU check of the fused Triton kernels (issue 11): correctness, determinism,
operator speed and memory against its peers, and DiNAT-T against Swin-T.

Sections, printed as markdown in one process (about 4 minutes on one H200):
  correctness  triton and tiled against the float64 gather form (itself checked against the
               test suite's oracle) on a few shapes, float32/float16/bfloat16, forward and
               all four gradients: max error relative to the largest reference value.
  determinism  two backward passes under torch.use_deterministic_algorithms(True), compared
               bit for bit (d(rpb) comes from per-program partial sums, no atomics).
  operator     forward and forward+backward time and peak memory at DiNAT-T's level shapes
               (kernel 7, head dim 32; 512x512 with the 'ade20k' dilations, 800x1216 with the
               'coco' ones), float32 and bfloat16, of
                 triton  na2d(backend='triton') with rpb
                 tiled   na2d(backend='torch') with rpb (the CUDA path before the kernels)
                 flex    torch.compile'd FlexAttention with the same windows (block mask) and
                         rpb (score_mod; its gradient goes through atomics)
                 window  Swin's 7x7 window attention with rpb through
                         scaled_dot_product_attention (the same FLOPs as a 7x7 neighbourhood)
                 natten  natten.na2d without rpb, only where NATTEN is importable
  model        DiNAT-T (dinat_backbone.models, needs mmengine and mmcv: skipped with a line
               saying so where they are missing) against timm's Swin-T (skipped without
               timm), forward+backward at 512x512, batch 8, bfloat16 autocast.

It imports only torch-level parts of the package (``dinat_backbone.ops``, the measuring
helpers). A failing measurement prints its error in its cell and the run goes on; a time budget
skips what would not fit, saying so.

``--device cpu --smoke`` runs a tiny version of every section on CPU tensors under Triton's
interpreter (set ``TRITON_INTERPRET=1`` first); the test suite runs it so that it cannot rot.

Example (from the repository root; PYTHONPATH=. where the package is not installed):
    PYTHONPATH=. python tools/benchmark_gpu.py                    # on the GPU machine
    TRITON_INTERPRET=1 PYTHONPATH=. python tools/benchmark_gpu.py --device cpu --smoke
"""
import argparse
import math
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from dinat_backbone.analysis.benchmark_utils import measure, window_attention
from dinat_backbone.ops import na2d, na2d_gather

KERNEL = 7
HEAD_DIM = 32
HEADS = (2, 4, 8, 16)  # DiNAT-T, per level (stride 4, 8, 16, 32)
# DiNAT-T's dilations per level, restated from dinat_backbone.models.DILATION_PRESETS (the
# models need mmengine); tests/test_triton_na2d.py checks that they agree.
LEVEL_DILATIONS = {
    'ade20k': ((1, 16), (1, 4, 1, 8), (1, 2, 1, 3, 1, 4), (1, 2)),
    'coco': ((1, 28), (1, 7, 1, 14), (1, 3, 1, 5, 1, 7), (1, 3)),
}
INPUTS = (((512, 512), 'ade20k'), ((800, 1216), 'coco'))
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}
Inputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def random_inputs(shape: Sequence[int], kernel: int, dtype: torch.dtype, device: torch.device,
                  seed: int = 0) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=gen).to(device, dtype) for _ in range(3))
    rpb = torch.randn(shape[3], 2 * kernel - 1, 2 * kernel - 1, generator=gen)
    return q, k, v, rpb.to(device, dtype)


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


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def forward_backward(fn: Callable[..., torch.Tensor], inputs: Inputs, grad: torch.Tensor
                     ) -> List[torch.Tensor]:
    """Output and the gradients of q, k, v and rpb."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def correctness(cases: Sequence[Tuple[Tuple[int, ...], int, int]], dtypes: Sequence[str],
                device: torch.device) -> None:
    print('## Correctness against the float64 gather form (max error / max reference value)\n')
    print('| shape [B, H, W, heads, D] | kernel | dilation | dtype | backend | out | dq | dk '
          '| dv | drpb |')
    print('|' + '---|' * 10)
    for shape, kernel, dilation in cases:
        for dtype_name in dtypes:
            inputs = random_inputs(shape, kernel, DTYPES[dtype_name], device)
            grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
            expected = forward_backward(
                lambda q, k, v, rpb: na2d_gather(q, k, v, kernel, dilation, rpb=rpb),
                tuple(t.double() for t in inputs), grad.double())
            for backend in ('triton', 'torch'):
                try:
                    result = forward_backward(
                        lambda q, k, v, rpb: na2d(q, k, v, kernel, dilation, rpb=rpb,
                                                  backend=backend), inputs, grad)
                    cells = [f'{relative_error(a, b):.1e}' for a, b in zip(result, expected)]
                except Exception as err:  # report and go on: one cell must not end the run
                    cells = [f'error: {type(err).__name__}: {err}'[:120]] + [''] * 4
                print(f'| {list(shape)} | {kernel} | {dilation} | {dtype_name} | {backend} | '
                      + ' | '.join(cells) + ' |', flush=True)
    print()


def determinism(shape: Tuple[int, ...], dilation: int, device: torch.device) -> None:
    print('## Determinism: two backward passes with deterministic algorithms\n')
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
    print(f'shape {list(shape)}, dilation {dilation}: out, dq, dk, dv, drpb bit-identical: '
          f'{same}\n')


Case = Tuple[str, int, Tuple[int, ...], int, str]  # input, level, shape, dilation, dtype


def level_cases(inputs: Sequence[Tuple[Tuple[int, int], str]], batch: int,
                dtypes: Sequence[str]) -> List[Case]:
    """DiNAT-T's attention shapes: per input size, level and distinct dilation of its preset."""
    cases = []
    for (height, width), preset in inputs:
        for level, dilations in enumerate(LEVEL_DILATIONS[preset]):
            stride = 4 * 2 ** level
            shape = (batch, math.ceil(height / stride), math.ceil(width / stride), HEADS[level],
                     HEAD_DIM)
            cases += [(f'{height}x{width}', level + 1, shape, dilation, dtype)
                      for dilation in sorted(set(dilations)) for dtype in dtypes]
    return cases


def operator(cases: Sequence[Case], peers: Sequence[str], repeats: int, budget: float,
             device: torch.device) -> None:
    """All cases with every peer but FlexAttention, then FlexAttention (compiled per shape
    and dilation: the slowest to set up) in bfloat16-first order while the budget lasts."""
    print(f'## Operator: kernel {KERNEL}, median of {repeats} runs; peak MiB above the inputs\n')
    print('| input | level | map | batch x heads x dim | dilation | dtype | peer | fwd ms '
          '| fwd MiB | fwd+bwd ms | fwd+bwd MiB | fwd+bwd / triton |')
    print('|' + '---|' * 12)
    deadline = time.monotonic() + budget
    triton_ms: Dict[Case, float] = {}
    for case in cases:
        for peer in peers:
            if peer != 'flex':
                _operator_row(case, peer, repeats, deadline, triton_ms, device)
    if 'flex' in peers:
        import torch._dynamo
        # One compilation per shape and dilation: stay compiled (the eager fallback would
        # build the whole H*W x H*W score matrix).
        for name in ('cache_size_limit', 'recompile_limit'):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
        for case in sorted(cases, key=lambda case: case[4] != 'bfloat16'):
            _operator_row(case, 'flex', repeats, deadline, triton_ms, device)
    print()


def _operator_row(case: Case, peer: str, repeats: int, deadline: float,
                  triton_ms: Dict[Case, float], device: torch.device) -> None:
    input_name, level, shape, dilation, dtype_name = case
    prefix = (f'| {input_name} | {level} | {shape[1]}x{shape[2]} '
              f'| {shape[0]}x{shape[3]}x{shape[4]} '
              f'| {dilation} | {dtype_name} | {peer} |')
    if time.monotonic() > deadline:
        print(prefix + ' skipped: time budget spent | | | | |', flush=True)
        return
    try:
        fn = _peer(peer, shape, dilation, device)
        if fn is None:
            return
        dtype = DTYPES[dtype_name]
        inputs = random_inputs(shape, KERNEL, dtype, device)
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        leaves = [t.clone().requires_grad_() for t in inputs]

        def step() -> None:
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(grad)

        with torch.no_grad():
            fwd = measure(lambda: fn(*inputs), repeats, device)
        both = measure(step, repeats, device)
        if peer == 'triton':
            triton_ms[case] = both[0]
        ratio = f'{both[0] / triton_ms[case]:.3g}x' if case in triton_ms else '-'
        print(prefix + f' {fwd[0]:.2f} | {fwd[1]:.0f} | {both[0]:.2f} | {both[1]:.0f} '
              f'| {ratio} |', flush=True)
    except Exception as err:  # report and go on: one cell must not end the run
        print(prefix + f' error: {type(err).__name__}: {str(err)[:150]} | | | | |', flush=True)


def _peer(peer: str, shape: Tuple[int, ...], dilation: int, device: torch.device
          ) -> Optional[Callable[..., torch.Tensor]]:
    if peer in ('triton', 'tiled'):
        backend = 'torch' if peer == 'tiled' else peer
        return lambda q, k, v, rpb: na2d(q, k, v, KERNEL, dilation, rpb=rpb, backend=backend)
    if peer == 'flex':
        return flex_neighbourhood(shape[1], shape[2], dilation, device)
    if peer == 'window':
        return window_attention
    return natten_na2d(dilation)


def model(batch: int, size: int, repeats: int, device: torch.device) -> None:
    print(f'## Model: forward+backward at {size}x{size}, batch {batch}, bfloat16 autocast\n')
    try:
        from dinat_backbone.models import DiNAT
    except ImportError as err:
        print(f'DiNAT-T: skipped (dinat_backbone.models needs mmengine and mmcv: {err})')
        DiNAT = None
    try:
        import timm
    except ImportError as err:
        print(f'Swin-T: skipped (needs timm: {err})')
        timm = None
    models = {}
    if DiNAT is not None:
        models['DiNAT-T'] = DiNAT('tiny', dilations='ade20k', drop_path_rate=0.0)
    if timm is not None:
        models['Swin-T'] = timm.create_model('swin_tiny_patch4_window7_224', img_size=size,
                                             num_classes=0)
    images = torch.randn(batch, 3, size, size, device=device)
    times = {}
    for name, net in models.items():
        net = net.to(device).train()

        def step() -> None:
            net.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = net(images)
            sum(o.float().sum() for o in (out if isinstance(out, (list, tuple)) else [out])
                ).backward()

        try:
            times[name] = measure(step, repeats, device)
            print(f'{name}: {times[name][0]:.1f} ms, peak {times[name][1]:.0f} MiB', flush=True)
        except Exception as err:  # report and go on
            print(f'{name}: error: {type(err).__name__}: {str(err)[:200]}', flush=True)
    if len(times) == 2:
        print(f'DiNAT-T / Swin-T: {times["DiNAT-T"][0] / times["Swin-T"][0]:.2f}x')
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny shapes, one repeat (with --device cpu: under the interpreter)')
    parser.add_argument('--batch', type=int, default=2, help='operator batch size')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--budget', type=float, default=240.0,
                        help='seconds for the operator section; later rows are skipped')
    parser.add_argument('--peers', nargs='+', default=['triton', 'tiled', 'flex', 'window',
                                                       'natten'])
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.monotonic()
    gpu = torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor()
    import triton
    print(f'# Triton DiNA kernels: GPU check\n\ntorch {torch.__version__}, triton '
          f'{triton.__version__}, device {device} ({gpu}){", smoke run" if args.smoke else ""}\n')

    if args.smoke:
        correctness([((1, 9, 10, 2, 8), 3, 2)], ['float32'], device)
        determinism((1, 9, 10, 2, 8), 1, device)
        operator([('smoke', 1, (1, 9, 10, 2, 8), 1, 'float32')],
                 ['triton', 'tiled', 'window'], 1, args.budget, device)
        model(1, 64, 1, device)
    else:
        cases = [((2, 20, 23, 2, 32), 7, 1), ((1, 28, 30, 2, 32), 7, 4),
                 ((1, 45, 33, 3, 32), 11, 3), ((2, 13, 17, 2, 24), 5, 2)]
        correctness(cases, ['float32', 'float16', 'bfloat16'], device)
        determinism((2, 64, 64, 4, 32), 4, device)
        operator(level_cases(INPUTS, args.batch, list(DTYPES)), args.peers, args.repeats,
                 args.budget, device)
        model(8, 512, 5, device)
    print(f'total {time.monotonic() - started:.0f} s')


if __name__ == '__main__':
    main()
