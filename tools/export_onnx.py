"""Export a DiNAT backbone, or a whole MMSegmentation model, to ONNX with dynamic input size.

What is exported (``--model``):

* ``backbone`` (default): the DiNAT of an arch name (``mini`` ... ``large``) or of a config's
  ``model.backbone``. Input ``image``: ``[N, 3, H, W]`` float32, already normalised (see the
  ``mean``/``std``/``bgr_to_rgb`` metadata of the ONNX file). Outputs ``level{i}`` for each of
  ``out_indices``: ``[N, C_i, ceil(H / s_i), ceil(W / s_i)]`` with ``s_i = 4 * 2**i``.
* ``segmentor``: an mmseg ``EncoderDecoder`` (e.g. UPerNet) of a config, as whole-image
  inference on one normalised batch (the same input as above: what the model's
  data_preprocessor produces, without its padding); the auxiliary head (training only) and
  sliding-window inference are not part of it. ``--seg-output`` picks the output:
  ``logits`` (default) ``[N, K, H, W]``: the decode head's logits resized bilinearly to the
  input, as ``EncoderDecoder.predict`` computes ``seg_logits``; ``labels`` ``[N, H, W]`` int64:
  their argmax (the sigmoid threshold for a one-channel binary head), ``pred_sem_seg``;
  ``tensor``: ``EncoderDecoder(mode='tensor')``, i.e. ``_forward``, the decode head's raw
  logits at stride 4, ``[N, K, ceil(H / 4), ceil(W / 4)]``.

Batch size, height and width are dynamic (``torch.onnx.export(..., dynamo=True,
dynamic_shapes=...)``): ``--shape`` is only the example the graph is traced with. Neighbourhood
attention is exported in its gather form, and a level whose map is smaller than
``kernel_size * dilation`` is zero-padded and cropped in the graph, as in PyTorch, so any size
works, including ones that need that padding. Tracing is symbolic and slow on a CPU: about
15 s per transformer block (DiNAT-Mini, 18 blocks: several minutes).

Weights (``--checkpoint``): for ``backbone``, any file ``load_pretrained`` reads (original
SHI-Labs, Hugging Face, ours, or a whole mmseg/mmdet model's ``backbone.*``; path, URL or
model-zoo name); without one, a config's ``init_cfg`` applies. For ``segmentor``, a whole
mmseg checkpoint (path, URL or task model-zoo name), loaded strictly. Without any, the weights
are random (a warning says so).

Verification: unless ``--no-verify``, onnxruntime runs the file at two sizes other than the
export size (``--verify-shapes``; default derived from ``--shape``, one with batch 1, one
with batch 2) and the tool prints, per size, the largest absolute difference from PyTorch; it
exits with status 1 when one exceeds ``--tolerance`` (for ``labels``: when more than 0.1% of the
pixels differ).

Examples::

    python tools/export_onnx.py mini --checkpoint dinat_mini.in1k --out dinat_mini.onnx
    python tools/export_onnx.py configs/segmentation/upernet_dinat-t_8xb2-160k_ade20k-512x512.py \\
        --model segmentor --checkpoint work_dirs/upernet/iter_160000.pth --seg-output labels

The tool imports the installed package: from a clone, run ``pip install -e .`` first.
"""
import argparse
import contextlib
import json
import logging
import os
import os.path as osp
import sys
import warnings
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dinat_backbone.engine.cli import (add_trust_checkpoint_flag, check_writable_file,
                                       parse_dilations)

SEG_OUTPUTS = ('logits', 'labels', 'tensor')
LABELS_MAX_MISMATCH = 1e-3  # fraction of pixels whose argmax may flip (near-ties)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config_or_arch',
                        help='mmseg/mmdet config file, or a DiNAT arch name (mini, tiny, small, '
                             'base, large)')
    parser.add_argument('--model', choices=['backbone', 'segmentor'], default='backbone',
                        help='what to export (default: backbone); segmentor needs an mmseg '
                             'config')
    parser.add_argument('--checkpoint', default=None, help='weights (see above)')
    parser.add_argument('--out', default=None,
                        help='output .onnx file (default: work_dirs/onnx/<config stem or '
                             'arch>_<model>.onnx)')
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'),
                        help='input size the graph is traced with (default: 512 512); the '
                             'exported graph accepts any size')
    parser.add_argument('--opset', type=int, default=None,
                        help="ONNX opset (default: the exporter's, 20 with torch 2.13)")
    parser.add_argument('--out-indices', type=int, nargs='+', default=None,
                        help='backbone levels to output (default: the config\'s, or 0 1 2 3)')
    parser.add_argument('--dilations', default=None,
                        help='arch names only: dilation preset name (imagenet, ade20k, coco, '
                             '...) or a JSON list of per-block lists (default: the zoo entry\'s '
                             'for a zoo checkpoint name, else imagenet)')
    parser.add_argument('--kernel-size', type=int, default=None,
                        help='arch names only (default: from the checkpoint, else 7)')
    parser.add_argument('--seg-output', choices=SEG_OUTPUTS, default='logits',
                        help='segmentor output (default: logits)')
    parser.add_argument('--verify-shapes', type=int, nargs='+', default=None,
                        metavar='H W',
                        help='sizes to verify at, as H W pairs (default: two sizes derived '
                             'from --shape)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest accepted absolute difference (default: 1e-4)')
    parser.add_argument('--no-verify', action='store_true', help='skip the onnxruntime check')
    add_trust_checkpoint_flag(parser, "the checkpoint (or the config's init_cfg one)")
    args = parser.parse_args(argv)
    if args.verify_shapes is not None and len(args.verify_shapes) % 2:
        parser.error('--verify-shapes takes H W pairs')
    if min(args.shape) < 1:
        parser.error(f'--shape must be positive, got {args.shape}')
    args.out = args.out or osp.join('work_dirs', 'onnx',
                                    f'{_stem(args.config_or_arch)}_{args.model}.onnx')
    try:  # before the export, which takes minutes
        check_writable_file(args.out, '--out')
        if args.out_indices is not None:
            from dinat_backbone.models.backbone import check_out_indices
            check_out_indices(args.out_indices)
    except ValueError as error:
        parser.error(str(error))
    return args


def _pool_matrix(out_size: Any, in_size: Any, like: torch.Tensor) -> torch.Tensor:
    """``[out, in]``: row ``i`` averages the input bin ``[floor(i*in/out), ceil((i+1)*in/out))``,
    the bins of ``nn.AdaptiveAvgPool2d``."""
    i = torch.arange(out_size, device=like.device)
    start = (i * in_size) // out_size
    end = ((i + 1) * in_size + out_size - 1) // out_size
    j = torch.arange(in_size, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class AdaptiveAvgPool2dForExport(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matrices built from the input size.

    The exporter's decomposition of adaptive pooling fixes the bins of the traced size, so an
    exported PPM (UPerNet, PSPNet) is wrong at other sizes; this form computes the same averages
    at any size (up to float rounding).

    Args:
        output_size (int | tuple): As for ``nn.AdaptiveAvgPool2d`` (None keeps that side).
    """

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = (tuple(output_size) if isinstance(output_size, (tuple, list))
                            else (output_size, output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., H, W]`` -> ``[..., out_h, out_w]``."""
        height, width = x.shape[-2:]
        out_h = height if self.output_size[0] is None else self.output_size[0]
        out_w = width if self.output_size[1] is None else self.output_size[1]
        rows = _pool_matrix(out_h, height, x)
        cols = _pool_matrix(out_w, width, x)
        return rows @ x @ cols.transpose(0, 1)


def replace_adaptive_pooling(module: nn.Module) -> int:
    """Swap every ``nn.AdaptiveAvgPool2d`` in ``module`` for :class:`AdaptiveAvgPool2dForExport`
    (in place); returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, AdaptiveAvgPool2dForExport(child.output_size))
            count += 1
        else:
            count += replace_adaptive_pooling(child)
    return count


class SegmentorForExport(nn.Module):
    """Whole-image inference of an mmseg ``EncoderDecoder`` on a normalised batch.

    Args:
        segmentor (nn.Module): The ``EncoderDecoder`` (eval mode).
        output (str): ``'logits'`` (resized to the input), ``'labels'`` (their argmax) or
            ``'tensor'`` (``EncoderDecoder(mode='tensor')``, stride 4). Default: ``'logits'``.
    """

    def __init__(self, segmentor: nn.Module, output: str = 'logits') -> None:
        super().__init__()
        if output not in SEG_OUTPUTS:
            raise ValueError(f'output must be one of {SEG_OUTPUTS}, got {output=}.')
        self.segmentor = segmentor
        self.output = output

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> see the class docstring."""
        logits = self.segmentor(inputs, mode='tensor')
        if self.output == 'tensor':
            return logits
        head = self.segmentor.decode_head
        logits = F.interpolate(logits, size=inputs.shape[2:], mode='bilinear',
                               align_corners=head.align_corners)
        if self.output == 'logits':
            return logits
        if logits.shape[1] == 1:  # binary head: sigmoid threshold, as mmseg's postprocess
            return (logits.sigmoid() > head.threshold).squeeze(1).long()
        return logits.argmax(1)


def _stem(config_or_arch: str) -> str:
    return osp.splitext(osp.basename(config_or_arch))[0]


def build_segmentor(config: str, checkpoint: Optional[str] = None,
                    seg_output: str = 'logits') -> Tuple[SegmentorForExport, Dict[str, str]]:
    """The mmseg model of ``config`` wrapped for export, and the ONNX metadata to record."""
    from mmengine.logging import print_log
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from dinat_backbone.apis.features import Preprocessing
    from dinat_backbone.weights.zoo import fetch_checkpoint
    from dinat_backbone.engine.runner import load_config

    cfg = load_config(config)
    if cfg.get('default_scope') != 'mmseg':
        raise SystemExit(f'--model segmentor needs an MMSegmentation config; {config} has '
                         f"default_scope={cfg.get('default_scope')!r}.")
    if checkpoint is not None and cfg.model.get('backbone') is not None:
        cfg.model.backbone.init_cfg = None  # the checkpoint replaces ImageNet weights
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    segmentor = revert_sync_batchnorm(MODELS.build(cfg.model))  # SyncBN is CUDA-only
    if checkpoint is not None:
        load_checkpoint(segmentor, fetch_checkpoint(checkpoint), map_location='cpu',
                        strict=True, revise_keys=[(r'^module\.', '')])
    else:
        print_log('No checkpoint given: exporting the initial weights.', logger='current',
                  level=logging.WARNING)
        segmentor.init_weights()
    replace_adaptive_pooling(segmentor)  # PPM: the same averages, at any input size
    preprocessor = cfg.model.get('data_preprocessor')
    metadata = _preprocessing_metadata(Preprocessing.from_data_preprocessor(
        preprocessor.to_dict() if preprocessor is not None else None))
    metadata['output'] = seg_output
    metadata['num_classes'] = str(segmentor.decode_head.num_classes)
    return SegmentorForExport(segmentor.eval(), seg_output).eval(), metadata


def _preprocessing_metadata(preprocessing: Any) -> Dict[str, str]:
    """How to make the ``image`` input, from a
    :class:`~dinat_backbone.apis.features.Preprocessing`."""
    return dict(mean=json.dumps(list(preprocessing.mean)), std=json.dumps(list(preprocessing.std)),
                bgr_to_rgb=json.dumps(preprocessing.bgr_to_rgb),
                input='image: [N, 3, H, W] float32 = (pixels - mean) / std, pixels 0-255 in BGR '
                      'order, flipped to RGB first when bgr_to_rgb is true')


def build_model(config_or_arch: str, model: str = 'backbone', checkpoint: Optional[str] = None,
                out_indices: Optional[Sequence[int]] = None, dilations: Any = None,
                kernel_size: Optional[int] = None, seg_output: str = 'logits'
                ) -> Tuple[nn.Module, List[str], Dict[str, str]]:
    """The module to export, its output names and the ONNX metadata to record."""
    import dinat_backbone
    from dinat_backbone.apis.features import build_backbone

    if model == 'segmentor':
        if not config_or_arch.endswith('.py'):
            raise SystemExit('--model segmentor needs an mmseg config file, got '
                             f'{config_or_arch!r}.')
        if out_indices is not None or dilations is not None or kernel_size is not None:
            raise SystemExit('--out-indices, --dilations and --kernel-size apply to '
                             '--model backbone only.')
        module, metadata = build_segmentor(config_or_arch, checkpoint, seg_output)
        names = ['labels' if seg_output == 'labels' else 'logits']
    else:
        module, preprocessing = build_backbone(config_or_arch, checkpoint, out_indices,
                                               dilations=dilations, kernel_size=kernel_size)
        names = [f'level{i}' for i in module.out_indices]
        metadata = _preprocessing_metadata(preprocessing)
        metadata['strides'] = json.dumps([4 * 2**i for i in module.out_indices])
    metadata.update(exported_by=f'dinat_backbone {dinat_backbone.__version__} '
                                'tools/export_onnx.py',
                    source=config_or_arch, checkpoint=str(checkpoint), model=model)
    return module, names, metadata


def _export_context() -> ContextManager:
    # FakeTensor's op cache makes symbolic tracing of this graph slower (its cache entries
    # rebuild symbolic sizes); switching it off cuts export time by about a third here.
    config = torch._dynamo.config
    if hasattr(config, 'fake_tensor_cache_enabled'):
        return config.patch(fake_tensor_cache_enabled=False)
    return contextlib.nullcontext()


def export_onnx(module: nn.Module, out: str, shape: Sequence[int] = (512, 512),
                output_names: Optional[Sequence[str]] = None, opset: Optional[int] = None,
                metadata: Optional[Dict[str, str]] = None) -> str:
    """Export ``module`` (``[N, 3, H, W]`` -> tensor or tuple) to ``out`` with dynamic
    batch/height/width; returns ``out``."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as error:
        raise SystemExit('ONNX export needs onnx, onnxscript and onnxruntime: '
                         'pip install -e ".[export]"') from error
    module.eval()
    example = torch.randn(1, 3, *shape)
    kwargs = {} if opset is None else dict(opset_version=opset)
    with _export_context(), warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # deprecations inside torch.export
        program = torch.onnx.export(
            module, (example, ), dynamo=True, input_names=['image'],
            output_names=list(output_names) if output_names else None,
            dynamic_shapes=({0: 'batch', 2: 'height', 3: 'width'}, ), verbose=False, **kwargs)
    program.model.metadata_props.update(metadata or {})
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    program.save(out)
    return out


def default_verify_shapes(shape: Sequence[int]) -> List[Tuple[int, int]]:
    """Two sizes other than ``shape``, neither a multiple of 32 (odd level sizes), the second
    small enough that most levels are padded in attention."""
    height, width = shape
    return [(height * 3 // 4 + 1, width * 5 // 8 + 3), (height // 4 + 5, width // 3 + 2)]


@torch.no_grad()
def verify_onnx(module: nn.Module, path: str, shapes: Sequence[Tuple[int, int]],
                seed: int = 0) -> List[Dict[str, Any]]:
    """Run ``path`` in onnxruntime and ``module`` in PyTorch on the same random inputs.

    The ``i``-th size runs with batch ``1 + i % 2``. Returns per size ``shape``, ``batch``,
    ``max_abs_diff`` over all float outputs and, for integer outputs, ``mismatch`` (fraction
    of differing elements).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    module.eval()
    results = []
    for i, (height, width) in enumerate(shapes):
        batch = 1 + i % 2
        x = torch.randn(batch, 3, height, width, generator=generator)
        expected = module(x)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        try:
            got = session.run(None, {input_name: x.numpy()})
        except Exception as error:  # onnxruntime's own exception types
            raise RuntimeError(f'onnxruntime failed at {height}x{width} (batch {batch}): '
                               f'{error}') from error
        result: Dict[str, Any] = dict(shape=(height, width), batch=batch, max_abs_diff=0.,
                                      mismatch=0.)
        for ours, theirs in zip(got, expected):
            theirs = theirs.numpy()
            if ours.shape != theirs.shape:
                raise RuntimeError(f'At {height}x{width}: onnxruntime output shape '
                                   f'{ours.shape} differs from PyTorch {theirs.shape}.')
            if np.issubdtype(theirs.dtype, np.floating):
                result['max_abs_diff'] = max(result['max_abs_diff'],
                                             float(np.abs(ours - theirs).max()))
            else:
                result['mismatch'] = max(result['mismatch'], float((ours != theirs).mean()))
        results.append(result)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export, verify and report; returns the exit status."""
    args = parse_args(argv)
    from dinat_backbone.weights import CheckpointKeyError
    from dinat_backbone.weights.safe_loading import trust_checkpoints
    try:
        with trust_checkpoints(args.trust_checkpoint):  # mmengine's loading for segmentors
            module, names, metadata = build_model(
                args.config_or_arch, args.model, args.checkpoint, args.out_indices,
                parse_dilations(args.dilations), args.kernel_size, args.seg_output)
    except (FileNotFoundError, ValueError, CheckpointKeyError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    out = args.out
    export_onnx(module, out, args.shape, names, args.opset, metadata)
    import onnx
    model = onnx.load(out, load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))

    def dims(value: Any) -> str:
        return '[' + ', '.join(d.dim_param or str(d.dim_value)
                               for d in value.type.tensor_type.shape.dim) + ']'

    print(f'Exported {args.model} of {args.config_or_arch} to {out} (opset {opset}, traced at '
          f'{args.shape[0]}x{args.shape[1]}).')
    for value in model.graph.input:
        print(f'  input  {value.name}: {dims(value)}')
    for value in model.graph.output:
        print(f'  output {value.name}: {dims(value)}')
    if args.no_verify:
        return 0
    pairs = args.verify_shapes
    shapes = ([(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)] if pairs
              else default_verify_shapes(args.shape))
    try:
        results = verify_onnx(module, out, shapes)
    except RuntimeError as error:
        print(f'Verification FAILED: {error}')
        return 1
    status = 0
    for result in results:
        (height, width), batch = result['shape'], result['batch']
        line = f'Verified {height}x{width} (batch {batch}) with onnxruntime: '
        if args.model == 'segmentor' and args.seg_output == 'labels':
            failed = result['mismatch'] > LABELS_MAX_MISMATCH
            line += f'labels differing at {result["mismatch"]:.3%} of the pixels'
            line += f'  ABOVE {LABELS_MAX_MISMATCH:.1%}' if failed else ''
        else:
            failed = result['max_abs_diff'] > args.tolerance
            line += f'max abs difference {result["max_abs_diff"]:.3g}'
            line += f'  ABOVE TOLERANCE {args.tolerance:g}' if failed else ''
        print(line)
        status = status or int(failed)
    return status


if __name__ == '__main__':
    sys.exit(main())
