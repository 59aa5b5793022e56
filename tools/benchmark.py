"""Benchmark DiNAT backbones against Swin-T and ResNet-50, in one process, on the same inputs.

Models (``--models``):
  dinat-mini, dinat-tiny   dinat_backbone.DiNAT; dilations from the preset named with each size
  swin-t                   mmseg's SwinTransformer as mmseg's UPerNet config builds it
                           (``mmseg::_base_/models/upernet_swin.py``, Swin-T settings)
  resnet-50                mmdet's ResNet depth 50 (``mmdet::_base_/models/mask-rcnn_r50_fpn.py``)
Every model is built without pretrained weights, with drop-path 0 and nothing frozen (ResNet:
``frozen_stages=-1``, ``norm_eval=False``), so all four train every parameter alike.

Per input size (``--sizes HxW:preset``; default 512x512:ade20k for segmentation and
800x1216:coco for detection) and batch (``--batch``), each model is measured for
  - forward: ``model.eval()`` under ``torch.no_grad()``;
  - forward+backward: ``model.train()``, the sum of the means of the 4 outputs, ``.backward()``
    (gradients freed after each run, so every run allocates them, as a training step does);
  - peak memory of each: growth over the memory in use before the run, so parameters are not
    included. CUDA: ``torch.cuda.max_memory_allocated``. CPU: growth of the peak resident set
    (``VmHWM``) in a worker process, forked before any work from this one, that builds the
    model and runs twice (warm-up, measured run); measured in this process, after other runs
    had grown its heap, the same run showed up to twice the memory (see
    ``dinat_backbone/analysis/benchmark_utils.py``);
  - parameters, and FLOPs per image with mmengine's FlopAnalyzer (one multiply-add = 1 FLOP),
    with DiNAT's attention counted as ``2 * B * heads * H * W * k*k * D``, the count Swin's
    window attention gets from the same analysis (``attn GFLOPs`` shows that part alone;
    see ``dinat_backbone/analysis/flops.py``).
Times are medians of ``--repeats`` rounds after a warm-up; within a round the models run in
turn, so a change of load on a shared machine affects them alike. The ratio columns divide by
Swin-T's numbers of the same size and batch, measured in the same process.

Optional sections:
  --with-cp         DiNAT-T with and without gradient checkpointing (first size and batch):
                    forward+backward time, peak training memory, and whether the outputs and
                    every gradient agree.
  --memory-scaling  DiNAT-T inference (no_grad, batch 1, ADE20K dilations) at 512, 1024 and
                    2048: peak memory should grow about linearly with H*W (no attention matrix).
  --profile         torch.profiler of one DiNAT-T forward+backward (first size, batch 1): the
                    top operators by self CPU time and a summary by kind of work.
  --quick           small inputs (64x64:ade20k, 64x96:coco; memory scaling at 64, 128, 256),
                    batch 1, 1 repeat: a smoke test of every section (no meaningful numbers).
At small inputs, DiNAT dilations that do not fit a level's map (``k * d`` > map side) are
lowered to the largest that fits, so the tool measures attention rather than zero padding;
a note under the table says when that happened. Output: markdown tables on stdout.

Example:
    python tools/benchmark.py                                   # main table, all models
    python tools/benchmark.py --repeats 3 --with-cp --memory-scaling --profile
    python tools/benchmark.py --models dinat-tiny swin-t --sizes 512x512:ade20k --batch 1
    python tools/benchmark.py --quick --with-cp --memory-scaling --profile
"""
import argparse
import datetime
import math
import platform
import sys
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import parameter_count

from dinat_backbone import DiNAT
from dinat_backbone.analysis.benchmark_utils import (CleanProcessMemory, run_peak_memory_mib,
                                                     time_interleaved)
from dinat_backbone.analysis.flops import flop_analyzer
from dinat_backbone.models import DILATION_PRESETS, dilation_preset

MODEL_NAMES = ('dinat-mini', 'dinat-tiny', 'swin-t', 'resnet-50')
REFERENCE = 'swin-t'
FULL_SIZES = ('512x512:ade20k', '800x1216:coco')
QUICK_SIZES = ('64x64:ade20k', '64x96:coco')
FULL_SCALING = (512, 1024, 2048)
QUICK_SCALING = (64, 128, 256)
KERNEL = 7
# Per-image operators whose FLOPs are attention (QK and AV): ours, and Swin's matmuls.
ATTENTION_OPERATORS = ('na2d_counted', 'matmul')
# Kind of work of the operators in a DiNAT profile (self time); the rest is "other": views,
# transposes, cat/stack, dispatch bookkeeping. The attention operator is our CPU kernels
# (dinat_na2d::) or, where the tiled implementation runs, its gathers and batched matmuls.
PROFILED_NAMESPACES = ('aten::', 'dinat_na2d::')
PROFILE_CATEGORIES = {
    'attention operator (neighbour kernels, tile gathers, bias, QK/AV, softmax)': (
        'dinat_na2d::neighbour_dot', 'dinat_na2d::neighbour_weighted_sum',
        'dinat_na2d::neighbour_scatter', 'dinat_na2d::rpb_grad', 'aten::index_select',
        'aten::index_select_backward', 'aten::index_add_', 'aten::index',
        'aten::index_put_', 'aten::_index_put_impl_', 'aten::bmm', 'aten::baddbmm',
        'aten::_softmax', 'aten::_softmax_backward_data'),
    'linear layers (qkv, proj, MLP)': ('aten::addmm', 'aten::mm'),
    'copies (permute/reshape to contiguous, in and around the operator)': (
        'aten::copy_', 'aten::clone', 'aten::contiguous'),
    'LayerNorm': ('aten::native_layer_norm', 'aten::native_layer_norm_backward'),
    'GELU': ('aten::gelu', 'aten::gelu_backward'),
    'padding': ('aten::constant_pad_nd', 'aten::pad'),
    'convolutions (tokenizer, downsamplers)': (
        'aten::mkldnn_convolution', 'aten::convolution_backward', 'aten::_convolution',
        'aten::thnn_conv2d', 'aten::_slow_conv2d_forward', 'aten::_slow_conv2d_backward'),
    'element-wise (residual adds, gradient sums, zero fills)': (
        'aten::add', 'aten::add_', 'aten::mul', 'aten::sum', 'aten::fill_', 'aten::zero_',
        'aten::zeros', 'aten::new_zeros', 'aten::mean', 'aten::div'),
}


def parse_size(text: str) -> Tuple[int, int, str]:
    """``'HxW:preset'`` -> ``(H, W, preset)``, the preset a DiNAT dilation preset name."""
    size, sep, preset = text.partition(':')
    height, x, width = size.partition('x')
    if not (sep and x and height.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(
            f'sizes are HxW:preset, e.g. 512x512:ade20k, got {text!r}.')
    if preset not in DILATION_PRESETS:
        raise argparse.ArgumentTypeError(
            f'unknown dilation preset {preset!r} in {text!r}; known: {sorted(DILATION_PRESETS)}.')
    return int(height), int(width), preset


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments (``--quick`` fills in the sizes, batch and repeats not given)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=None,
                        help=f'inputs as HxW:dilation-preset; default: {" ".join(FULL_SIZES)}')
    parser.add_argument('--batch', nargs='+', type=int, default=None,
                        help='batch sizes; default: 1 2 (--quick: 1)')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed rounds per measurement; default: 3 (--quick: 1)')
    parser.add_argument('--skip-backward', action='store_true',
                        help='measure the forward pass only')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--with-cp', action='store_true',
                        help='compare DiNAT-T with_cp=True/False (memory, time, same grads)')
    parser.add_argument('--memory-scaling', action='store_true',
                        help='DiNAT-T inference peak memory at 512, 1024, 2048')
    parser.add_argument('--profile', action='store_true',
                        help='torch.profiler of DiNAT-T forward+backward, top operators')
    parser.add_argument('--quick', action='store_true',
                        help='small inputs, batch 1, 1 repeat (smoke test)')
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [parse_size(s) for s in (QUICK_SIZES if args.quick else FULL_SIZES)]
    if args.batch is None:
        args.batch = [1] if args.quick else [1, 2]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or min(args.batch) < 1:
        parser.error('--repeats and --batch must be >= 1.')
    args.scaling = QUICK_SCALING if args.quick else FULL_SCALING
    return args


def level_sizes(height: int, width: int, levels: int = 4) -> List[Tuple[int, int]]:
    """Map size of each DiNAT level: stride 4 (two stride-2 convs), then halved per level."""
    sizes = []
    height, width = -(-height // 4), -(-width // 4)
    for _ in range(levels):
        sizes.append((height, width))
        height, width = -(-height // 2), -(-width // 2)
    return sizes


def fitted_dilations(preset: str, depths: Sequence[int], height: int, width: int
                     ) -> Tuple[List[List[int]], bool]:
    """Per-block dilations of ``preset``, each lowered to fit its level's map (``k * d <= side``).

    Returns the dilations and whether any was lowered.
    """
    dilations = dilation_preset(preset, depths)
    fitted = [[min(d, max(1, min(h, w) // KERNEL)) for d in level]
              for level, (h, w) in zip(dilations, level_sizes(height, width, len(depths)))]
    return fitted, fitted != dilations


def build_model(name: str, height: int, width: int, preset: str, with_cp: bool = False
                ) -> Tuple[nn.Module, bool]:
    """One benchmarked backbone (seeded random weights); returns it and whether DiNAT's
    dilations had to be lowered for this input size."""
    torch.manual_seed(0)
    if name.startswith('dinat-'):
        arch = name[len('dinat-'):]
        dilations, lowered = fitted_dilations(preset, DiNAT.arch_zoo[arch]['depths'], height,
                                              width)
        return DiNAT(arch, dilations=dilations, drop_path_rate=0., with_cp=with_cp), lowered
    from mmengine.hub import get_config
    if name == 'swin-t':
        from mmseg.registry import MODELS
        cfg = get_config('mmseg::_base_/models/upernet_swin.py').model.backbone
        # Swin-T, as mmseg's swin-tiny UPerNet config sets it (without the pretrained weights).
        cfg.update(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                   use_abs_pos_embed=False, patch_norm=True, drop_path_rate=0., init_cfg=None)
    else:
        from mmdet.registry import MODELS
        cfg = get_config('mmdet::_base_/models/mask-rcnn_r50_fpn.py').model.backbone
        cfg.update(frozen_stages=-1, norm_eval=False, init_cfg=None)
    return MODELS.build(cfg), False


def train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A function running one forward+backward of ``model`` on ``x`` in training mode."""
    def step() -> None:
        model.train()
        sum(out.float().mean() for out in model(x)).backward()
        # Free the gradients: every run starts from the same memory and allocates them anew.
        model.zero_grad(set_to_none=True)
    return step


def inference(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A function running one ``torch.no_grad`` forward of ``model`` on ``x`` in eval mode."""
    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)
    return forward


def training_job(name: str, height: int, width: int, preset: str, batch: int,
                 with_cp: bool = False) -> Callable[[], None]:
    """Build a model and an input, return its :func:`train_step` (for a memory worker)."""
    model = build_model(name, height, width, preset, with_cp=with_cp)[0]
    return train_step(model, torch.randn(batch, 3, height, width))


def inference_job(name: str, height: int, width: int, preset: str, batch: int
                  ) -> Callable[[], None]:
    """Build a model and an input, return its :func:`inference` (for a memory worker)."""
    model = build_model(name, height, width, preset)[0]
    return inference(model, torch.randn(batch, 3, height, width))


class Measurer:
    """Where and how memory is measured: CPU runs in clean worker processes (forked before
    any work, see :class:`CleanProcessMemory`), CUDA runs in this process
    (``max_memory_allocated`` is exact)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.workers = CleanProcessMemory() if device.type == 'cpu' else None

    def peak_mib(self, fn: Callable[[], None], job: Callable[..., Callable[[], None]],
                 *job_args: object) -> float:
        """Peak memory of ``fn``; on CPU of ``job(*job_args)()``, the same run built anew."""
        if self.workers is not None:
            return self.workers.peak_mib(job, *job_args)
        return run_peak_memory_mib(fn, self.device)

    def close(self) -> None:
        """Stop the memory workers' server."""
        if self.workers is not None:
            self.workers.close()


def complexity(model: nn.Module, x: torch.Tensor) -> Tuple[float, float, float]:
    """Parameters (M), GFLOPs and attention GFLOPs of ``model`` on ``x``."""
    model.eval()
    analyzer = flop_analyzer(model, x)
    by_operator = analyzer.by_operator()
    attention = sum(by_operator.get(op, 0) for op in ATTENTION_OPERATORS)
    return parameter_count(model)[''] / 1e6, analyzer.total() / 1e9, attention / 1e9


def ratio(value: Optional[float], reference: Optional[float]) -> str:
    """``value / reference`` as ``'1.23x'``, or ``'-'`` where either is missing."""
    if value is None or reference is None or not reference or math.isnan(value / reference):
        return '-'
    return f'{value / reference:.2f}x'


def fmt(value: Optional[float], digits: int = 0) -> str:
    """A number with ``digits`` decimals, or ``'-'``."""
    return '-' if value is None or math.isnan(value) else f'{value:.{digits}f}'


def header(args: argparse.Namespace, argv: Sequence[str], device: torch.device) -> None:
    """Command, date, machine and software versions."""
    print(f'# Backbone benchmark ({datetime.date.today().isoformat()})\n')
    print(f'Command: `{" ".join(["python tools/benchmark.py", *argv])}`')
    machine = (torch.cuda.get_device_name(device) if device.type == 'cuda'
               else f'{platform.processor() or platform.machine()}, '
                    f'{torch.get_num_threads()} threads')
    memory = ('max_memory_allocated' if device.type == 'cuda'
              else 'VmHWM growth of a run in a fresh worker process, after a warm-up')
    print(f'torch {torch.__version__}, device {device} ({machine}); times: medians of '
          f'{args.repeats} round(s) after a warm-up; peak memory: above the memory in use '
          f'before the run ({memory}); GFLOPs per image, 1 multiply-add = 1 FLOP.\n')


def main_table(args: argparse.Namespace, measurer: Measurer) -> None:
    """The per-model, per-size, per-batch table with ratios to Swin-T."""
    device = measurer.device
    print('| model | input | batch | params (M) | GFLOPs | attn GFLOPs | fwd ms | fwd+bwd ms '
          '| fwd peak MiB | fwd+bwd peak MiB | fwd vs Swin-T | fwd+bwd vs Swin-T '
          '| fwd+bwd MiB vs Swin-T |')
    print('|' + '---|' * 13, flush=True)
    notes = []
    for height, width, preset in args.sizes:
        models = {}
        stats = {}
        for name in args.models:
            model, lowered = build_model(name, height, width, preset)
            models[name] = model.to(device)
            stats[name] = complexity(models[name], torch.randn(1, 3, height, width,
                                                               device=device))
            if lowered:
                notes.append(f'{name} at {height}x{width}: {preset} dilations lowered to fit '
                             f'({models[name].dilations}).')
        for batch in args.batch:
            x = torch.randn(batch, 3, height, width, device=device)
            case = (height, width, preset, batch)
            forward = {n: inference(m, x) for n, m in models.items()}
            fwd = {n: (ms, measurer.peak_mib(forward[n], inference_job, n, *case))
                   for n, ms in time_interleaved(forward, args.repeats, device).items()}
            train: Dict[str, Tuple[Optional[float], Optional[float]]] = defaultdict(
                lambda: (None, None))
            if not args.skip_backward:
                steps = {n: train_step(m, x) for n, m in models.items()}
                train.update({n: (ms, measurer.peak_mib(steps[n], training_job, n, *case))
                              for n, ms in time_interleaved(steps, args.repeats,
                                                            device).items()})
            ref_fwd, ref_train = fwd.get(REFERENCE, (None, None)), train[REFERENCE]
            for name in args.models:
                params, gflops, attn = stats[name]
                print(f'| {name} | {height}x{width} ({preset}) | {batch} | {params:.1f} '
                      f'| {gflops:.1f} | {attn:.2f} | {fmt(fwd[name][0])} '
                      f'| {fmt(train[name][0])} | {fmt(fwd[name][1])} | {fmt(train[name][1])} '
                      f'| {ratio(fwd[name][0], ref_fwd[0])} '
                      f'| {ratio(train[name][0], ref_train[0])} '
                      f'| {ratio(train[name][1], ref_train[1])} |', flush=True)
        del models
    for note in notes:
        print(f'\nNote: {note}')


def with_cp_comparison(args: argparse.Namespace, measurer: Measurer) -> None:
    """DiNAT-T with and without gradient checkpointing: memory, time, outputs and gradients."""
    device = measurer.device
    height, width, preset = args.sizes[0]
    batch = args.batch[0]
    models = {cp: build_model('dinat-tiny', height, width, preset, with_cp=cp)[0].to(device)
              for cp in (False, True)}
    models[True].load_state_dict(models[False].state_dict())  # same weights in both
    x = torch.randn(batch, 3, height, width, device=device)
    steps = {cp: train_step(m, x) for cp, m in models.items()}
    timed = time_interleaved({str(cp): step for cp, step in steps.items()}, args.repeats, device)
    results = {cp: (timed[str(cp)], measurer.peak_mib(steps[cp], training_job, 'dinat-tiny',
                                                      height, width, preset, batch, cp))
               for cp in models}
    outputs = {}
    for cp, model in models.items():
        model.train()
        model.zero_grad(set_to_none=True)
        outs = model(x)
        sum(out.float().mean() for out in outs).backward()
        outputs[cp] = [o.detach() for o in outs]
    out_diff = max((a - b).abs().max().item() for a, b in zip(outputs[False], outputs[True]))
    grads = [(p.grad, q.grad) for p, q in zip(models[False].parameters(),
                                              models[True].parameters())]
    grad_diff = max((a - b).abs().max().item() for a, b in grads)
    identical = (all(torch.equal(a, b) for a, b in zip(outputs[False], outputs[True]))
                 and all(torch.equal(a, b) for a, b in grads))

    print(f'\n## DiNAT-T gradient checkpointing: forward+backward at {height}x{width} ({preset}), '
          f'batch {batch}\n')
    print('| with_cp | fwd+bwd ms | fwd+bwd peak MiB | time vs with_cp=False '
          '| peak memory saved |')
    print('|---|---|---|---|---|')
    base_ms, base_mib = results[False]
    for cp, (ms, mib) in results.items():
        saved = f'{100 * (1 - mib / base_mib):.0f}%' if base_mib > 0 else '-'
        print(f'| {cp} | {fmt(ms)} | {fmt(mib)} | {ratio(ms, base_ms)} | {saved} |')
    print(f'\nOutputs and all {len(grads)} parameter gradients: '
          f'{"bit-identical" if identical else "differ"} (max |diff|: outputs {out_diff:.2e}, '
          f'gradients {grad_diff:.2e}).', flush=True)


def memory_scaling(args: argparse.Namespace, measurer: Measurer) -> None:
    """DiNAT-T inference time and peak memory at growing square inputs (batch 1)."""
    device = measurer.device
    print('\n## DiNAT-T inference memory vs input size (torch.no_grad, batch 1, ade20k '
          'dilations)\n')
    print('| input | level-0 tokens | fwd ms | peak MiB | KiB per level-0 token '
          '| peak vs first | tokens vs first | full level-0 attention matrix would need MiB |')
    print('|' + '---|' * 8)
    first = None
    for side in args.scaling:
        model, _ = build_model('dinat-tiny', side, side, 'ade20k')
        model = model.to(device)
        forward = inference(model, torch.randn(1, 3, side, side, device=device))
        ms = time_interleaved({'fwd': forward}, 1, device)['fwd']
        mib = measurer.peak_mib(forward, inference_job, 'dinat-tiny', side, side, 'ade20k', 1)
        tokens = math.prod(level_sizes(side, side)[0])
        first = first or (mib, tokens)
        full = tokens ** 2 * model.arch_settings['num_heads'][0] * 4 / 2**20
        print(f'| {side}x{side} | {tokens} | {fmt(ms)} | {fmt(mib)} '
              f'| {fmt(mib * 1024 / tokens, 1)} | {ratio(mib, first[0])} '
              f'| {tokens / first[1]:.0f}x | {full:,.0f} |', flush=True)
        del model


def categorise(ops: Iterable[Tuple[str, float]]) -> Dict[str, float]:
    """Sum self times ``(op name, time)`` by :data:`PROFILE_CATEGORIES` (else ``'other'``)."""
    kinds = {op: kind for kind, names in PROFILE_CATEGORIES.items() for op in names}
    totals: Dict[str, float] = defaultdict(float)
    for op, time in ops:
        totals[kinds.get(op, 'other (views, transposes, cat/stack, dispatch)')] += time
    return dict(totals)


def profile(args: argparse.Namespace, device: torch.device, top: int = 15) -> None:
    """Profile one DiNAT-T forward+backward (first size, batch 1): top ops and kinds of work."""
    from torch.profiler import ProfilerActivity
    height, width, preset = args.sizes[0]
    model, _ = build_model('dinat-tiny', height, width, preset)
    model = model.to(device)
    step = train_step(model, torch.randn(1, 3, height, width, device=device))
    step()  # warm-up (index tables are built and cached on the first call)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda'
                                           else [])
    with torch.profiler.profile(activities=activities) as prof:
        step()
    events = [e for e in prof.key_averages() if e.key.startswith(PROFILED_NAMESPACES)]
    total = sum(e.self_cpu_time_total for e in events)
    print(f'\n## Profile: DiNAT-T forward+backward at {height}x{width} ({preset}), batch 1 '
          '(torch.profiler, ATen and DiNA-kernel operators by self CPU time, '
          f'total {total / 1e3:.0f} ms)\n')
    print('| operator | self CPU % | self CPU ms | calls |')
    print('|---|---|---|---|')
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f'| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f} '
              f'| {e.self_cpu_time_total / 1e3:.1f} | {e.count} |')
    print('\n| kind of work | self CPU % |')
    print('|---|---|')
    kinds = categorise((e.key, e.self_cpu_time_total) for e in events)
    for kind, time in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f'| {kind} | {100 * time / total:.1f} |')
    sys.stdout.flush()


def main(argv: Optional[List[str]] = None) -> None:
    """Run the sections that ``argv`` asks for and print them as markdown."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    measurer = Measurer(device)  # first: CPU memory workers fork from a process yet unused
    try:
        header(args, argv, device)
        main_table(args, measurer)
        if args.with_cp:
            with_cp_comparison(args, measurer)
        if args.memory_scaling:
            memory_scaling(args, measurer)
        if args.profile:
            profile(args, device)
    finally:
        measurer.close()


if __name__ == '__main__':
    main()
