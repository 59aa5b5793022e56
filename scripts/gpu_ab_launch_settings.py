"""The prepared check for the next GPU slot (about 2 minutes on an H200): the Triton kernels'
launch settings before the spill work (e6b22fa: forward 4 warps, backward 8, 8x8 blocks, Triton's
default stages, no register cap) against today's per-variant, spill-free settings
(``triton_na2d.kernel_config``: 8 warps, at most 255 registers, smaller blocks where the larger
spilled), and today's settings without the interior tiles' bias table (``BIAS_TABLE``),
interleaved in one process: the operator at DiNAT-T's level shapes (bfloat16, float32 rpb) with
each kernel's settings swapped alone, a DiNAT-T training step, and the self-check.

Why: between the first two GPU runs (docs/benchmarks.md, "GPU") the operator's forward+backward
fell from 10x to 4.2x the tiled version's speed, on different machines, while the DiNAT-T / Swin-T
ratio held; this separates the launch settings from everything else. The bias table came after
those runs: no GPU has measured it yet.

    PYTHONUNBUFFERED=1 python3 scripts/gpu_ab_launch_settings.py          # on the GPU machine
    TRITON_INTERPRET=1 python scripts/gpu_ab_launch_settings.py --smoke    # CPU (its test)
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
os.environ['DINAT_TRITON_SELF_CHECK'] = '0'  # the kernels alone (the check runs once below)
from dinat_backbone.analysis.benchmark_utils import time_interleaved  # noqa: E402
from dinat_backbone.models import DiNAT  # noqa: E402
from dinat_backbone.ops import na2d  # noqa: E402
from dinat_backbone.ops import triton_na2d as tn  # noqa: E402

smoke = '--smoke' in sys.argv
device = torch.device('cpu' if smoke else 'cuda')
NEW = tn.kernel_config


def old(kernel, *args):
    """The old warps, blocks and stages (the bias table as today)."""
    new = NEW(kernel, *args)
    if kernel == 'rpb_tiles':
        return new
    blocks = ('QUERIES_Y', 'QUERIES_X') if kernel == 'bwd_key' else ('KEYS_Y', 'KEYS_X')
    return tn.KernelConfig(4 if kernel == 'fwd' else 8, 3,
                           {**new.constants, **dict(zip(blocks, (8, 8)))}, None)


def without_bias_table(kernel, *args):
    new = NEW(kernel, *args)
    return new._replace(constants={**new.constants, 'BIAS_TABLE': False}) if (
        'BIAS_TABLE' in new.constants) else new


def mixed(fwd, bwd_query, bwd_key):
    table = {'fwd': fwd, 'bwd_query': bwd_query, 'bwd_key': bwd_key, 'rpb_tiles': NEW}
    return lambda kernel, *a, **k: table[kernel](kernel, *a, **k)


CONFIGS = {'new': NEW, 'no bias table': without_bias_table, 'old': old,
           'old fwd only': mixed(old, NEW, NEW), 'old dq only': mixed(NEW, old, NEW),
           'old dkdv only': mixed(NEW, NEW, old)}
MODEL_CONFIGS = ('new', 'no bias table', 'old')
dtype = torch.float32 if smoke else torch.bfloat16
shapes = ([(1, 19, 19, 1, 8)] if smoke else  # interior and border tiles
          [(2, 128, 128, 2, 32), (8, 128, 128, 2, 32), (2, 32, 32, 8, 32), (1, 8, 8, 1, 32)])
started = time.monotonic()
print(f'torch {torch.__version__}, {torch.cuda.get_device_name() if not smoke else "cpu"}')
for shape in shapes:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()
               for _ in range(3))
    rpb = torch.randn(shape[3], 13, 13, generator=gen).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device, dtype)

    def run(config, backward):
        def fn():
            tn.kernel_config = config
            if backward:
                for t in (q, k, v, rpb):
                    t.grad = None
                na2d(q, k, v, 7, 1, rpb=rpb, backend='triton').backward(grad)
            else:
                with torch.no_grad():
                    na2d(q, k, v, 7, 1, rpb=rpb, backend='triton')
        return fn
    fwd = time_interleaved({n: run(c, False) for n, c in CONFIGS.items()}, 1 if smoke else 20,
                           device)
    both = time_interleaved({n: run(c, True) for n, c in CONFIGS.items()}, 1 if smoke else 20,
                            device)
    print(f'{list(shape)} bf16 k7 d1 rpb fp32: ' + '; '.join(
        f'{n}: fwd {fwd[n]:.3f} fwd+bwd {both[n]:.3f} ms' for n in CONFIGS), flush=True)

# The model: DiNAT-T training step, batch 8, 512x512, bf16 autocast, each config.
size, batch = (64, 1) if smoke else (512, 8)
net = DiNAT('tiny', dilations='ade20k', drop_path_rate=0.0).to(device).train()
images = torch.randn(batch, 3, size, size, device=device)


def step(config):
    def fn():
        tn.kernel_config = config
        net.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not smoke):
            out = net(images)
        sum(o.float().mean() for o in out).backward()
    return fn


times = time_interleaved({n: step(CONFIGS[n]) for n in MODEL_CONFIGS}, 1 if smoke else 10,
                         device)
print('DiNAT-T fwd+bwd batch 8 512x512 bf16: ' + '; '.join(f'{n} {t:.1f} ms'
                                                           for n, t in times.items()))
# torch.compile of the operator, forward and backward, as one graph (the registered
# operators), against eager.
if not smoke:
    tn.kernel_config = NEW
    t0 = time.monotonic()
    compiled = torch.compile(lambda *inputs: na2d(*inputs[:3], 7, 1, rpb=inputs[3],
                                                  backend='triton'), fullgraph=True)
    results = []
    for fn in (compiled, lambda *inputs: na2d(*inputs[:3], 7, 1, rpb=inputs[3],
                                              backend='triton')):
        out = fn(q, k, v, rpb)
        results.append([out, *torch.autograd.grad(out, (q, k, v, rpb), grad)])
    error = max((a.float() - b.float()).abs().max().item() for a, b in zip(*results))
    print(f'torch.compile fullgraph: max abs difference to eager {error:.2e}, '
          f'{time.monotonic() - t0:.0f} s with compilation')
# The self-check on this GPU, for the model's variant, with each config (the smoke run: one;
# interpreted, each takes a while).
os.environ['DINAT_TRITON_SELF_CHECK'] = '1'
for name in MODEL_CONFIGS[:1] if smoke else MODEL_CONFIGS:
    tn.kernel_config = CONFIGS[name]
    tn._self_checked.clear()
    t0 = time.monotonic()
    tolerance = tn.SELF_CHECK_TOLERANCE['fp32-ieee' if smoke else 'bf16']
    mismatch = tn._self_check(q, rpb, (7, 7), tolerance)
    print(f'self-check {name}: {mismatch or "passed"} in {time.monotonic() - t0:.2f} s')
print(f'total {time.monotonic() - started:.0f} s')
