"""Static quality of the Triton kernels, without a GPU: every compiled variant the model can
run, compiled for sm_90 and sm_80 and read back with Triton's bundled ``ptxas -v``.

A compiled variant is one set of a kernel's compile-time parameters: the input dtype, whether
there is an rpb (the launchers hand it to the kernels in float32 whatever its dtype, see
:mod:`~dinat_backbone.ops.triton_na2d`), the padded head dim (32 and 64, the model's), the
float32 matmul precision, and for the dq/d(rpb) kernel the rpb table's size class (kernels up
to 7 and up to 13) and ``deterministic``; and the bias-table builder of interior tiles per
halo size (kernels up to 9 and up to 13). :func:`static_report` prints registers, spill bytes,
stack and shared memory per compiled variant, the occupancy (resident warps per SM out of 64),
and as its last line ``spills: <bytes> bytes in <n> variants``.
"""
import itertools
import os
import re
import subprocess
import tempfile
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

__all__ = ['KernelVariant', 'VariantStats', 'compile_variant', 'main', 'model_variants',
           'occupancy', 'static_report']

# Per SM, sm_80 and sm_90 alike: 64K registers, 64 resident warps, 32 blocks; shared memory
# usable by blocks (KB): sm_80 164, sm_90 228 (less 1 KB reserved per block).
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
RESERVED_SHARED_PER_BLOCK = 1024

HEAD_DIMS = (32, 64)
RPB_SIZE_CLASSES = (16, 32)  # padded d(rpb) tables: kernel sizes 3..7 and 9..13 (16 bits)
# (input dtype, float32 matmul precision): 16-bit inputs ignore the precision.
DTYPE_PRECISIONS = (('fp32', 'ieee'), ('fp32', 'tf32'), ('fp16', 'tf32'), ('bf16', 'tf32'))
KERNELS = ('fwd', 'bwd_query', 'bwd_key', 'rpb_tiles')
# The bias table's padded halo per axis (_interior_bias): kernels 3..9 and 11..13.
HALO_SIZES = (16, 24)


class KernelVariant(NamedTuple):
    """One compiled variant of one kernel."""
    kernel: str  # one of KERNELS
    dtype: str  # 'fp32', 'fp16' or 'bf16'
    precision: str  # float32 matmuls: 'ieee' or 'tf32'
    block_d: int
    has_rpb: bool
    rpb_size: int = 0  # bwd_query with rpb: the d(rpb) table; rpb_tiles: the padded halo
    deterministic: bool = False  # bwd_query with rpb only

    def name(self) -> str:
        if self.kernel == 'rpb_tiles':
            return f'rpb_tiles halo{self.rpb_size}'
        parts = [self.kernel, self.dtype + ('-' + self.precision if self.dtype == 'fp32' else ''),
                 f'D{self.block_d}', 'rpb' if self.has_rpb else 'no-rpb']
        if self.rpb_size:
            parts += [f'table{self.rpb_size}', 'det' if self.deterministic else 'atomic']
        return ' '.join(parts)


class VariantStats(NamedTuple):
    """ptxas's resource usage of one compiled variant for one architecture."""
    variant: KernelVariant
    arch: int
    num_warps: int
    registers: int
    spill_bytes: int  # spill stores + spill loads
    stack_bytes: int
    shared_bytes: int
    occupancy: float  # resident warps per SM / 64


def model_variants() -> List[KernelVariant]:
    """Every distinct compiled variant the model can run (see the module docstring)."""
    variants = []
    for (dtype, precision), block_d, has_rpb in itertools.product(
            DTYPE_PRECISIONS, HEAD_DIMS, (False, True)):
        common = dict(dtype=dtype, precision=precision, block_d=block_d, has_rpb=has_rpb)
        variants.append(KernelVariant('fwd', **common))
        variants.append(KernelVariant('bwd_key', **common))
        if not has_rpb:
            variants.append(KernelVariant('bwd_query', **common))
            continue
        # float32 with head dims over 32 pads every table to 32 (rpb_table_size).
        sizes = RPB_SIZE_CLASSES[1:] if dtype == 'fp32' and block_d > 32 else RPB_SIZE_CLASSES
        for rpb_size, deterministic in itertools.product(sizes, (False, True)):
            variants.append(KernelVariant('bwd_query', **common, rpb_size=rpb_size,
                                          deterministic=deterministic))
    variants += [KernelVariant('rpb_tiles', 'fp32', 'ieee', 0, True, halo) for halo in HALO_SIZES]
    return variants


def _compile(variant: KernelVariant, arch: int) -> Tuple[str, int, int]:
    """PTX of the variant for ``sm_<arch>``, its warps per program and the shared memory
    Triton allocates (bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..ops import _triton_kernels as kernels
    from ..ops.triton_na2d import TILE, kernel_config

    fn = {'fwd': kernels._na2d_fwd_kernel, 'bwd_query': kernels._na2d_bwd_query_kernel,
          'bwd_key': kernels._na2d_bwd_key_kernel,
          'rpb_tiles': kernels._rpb_tiles_kernel}[variant.kernel]
    config = kernel_config(variant.kernel, variant.dtype, variant.precision, variant.block_d,
                           variant.has_rpb, variant.rpb_size)
    constants = dict(HAS_RPB=variant.has_rpb, PRECISION=variant.precision,
                     BLOCK_D=variant.block_d, TILE_Y=TILE, TILE_X=TILE, **config.constants)
    if variant.kernel == 'rpb_tiles':
        constants = dict(TILE_Y=TILE, TILE_X=TILE,
                         BLOCK=1 << (variant.rpb_size ** 2 - 1).bit_length())
    if variant.kernel == 'bwd_query':
        constants.update(DETERMINISTIC=variant.deterministic,
                         RPB_Y=variant.rpb_size or 16, RPB_X=variant.rpb_size or 16)
    data = '*' + variant.dtype
    fp32_pointers = {'RPB', 'BIAS', 'LSE', 'DELTA', 'DRPB'}
    signature = {}
    for name in fn.arg_names:
        if name in constants:
            signature[name] = 'constexpr'
        elif name.isupper() and len(name) <= 5 and name not in (
                'H', 'W', 'HEADS', 'DIL_Y', 'DIL_X'):
            signature[name] = '*fp32' if name in fp32_pointers else data
        else:
            signature[name] = 'fp32' if 'scale' in name else 'i32'
    compiled = triton.compile(ASTSource(fn, signature, constants),
                              target=GPUTarget('cuda', arch, 32),
                              options=dict(num_warps=config.num_warps,
                                           num_stages=config.num_stages,
                                           maxnreg=config.maxnreg))
    return compiled.asm['ptx'], config.num_warps, int(compiled.metadata.shared)


def _ptxas() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')


def _ptxas_usage(ptx: str, arch: int) -> Dict[str, int]:
    """Registers, stack frame, spill bytes and static shared memory that ``ptxas -v``
    reports."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'kernel.ptx')
        with open(path, 'w') as f:
            f.write(ptx)
        gpu = f'sm_{arch}a' if arch == 90 else f'sm_{arch}'
        result = subprocess.run([_ptxas(), '-v', '--gpu-name', gpu, path, '-o',
                                 os.path.join(tmp, 'kernel.cubin')],
                                capture_output=True, text=True, check=True)
    log = result.stdout + result.stderr

    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return dict(registers=number(r'Used (\d+) registers'),
                stack=number(r'(\d+) bytes stack frame'),
                spills=number(r'(\d+) bytes spill stores') + number(r'(\d+) bytes spill loads'),
                shared=number(r'(\d+) bytes smem'))


def occupancy(registers: int, shared_bytes: int, num_warps: int, arch: int) -> float:
    """Resident warps per SM out of 64, limited by registers (allocated per warp in units of
    256), shared memory and the block limit."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = REGISTERS_PER_SM // (per_warp * num_warps)
    by_shared = (SHARED_PER_SM[arch] // (shared_bytes + RESERVED_SHARED_PER_BLOCK)
                 if shared_bytes else MAX_BLOCKS_PER_SM)
    blocks = min(by_registers, by_shared, MAX_BLOCKS_PER_SM, MAX_WARPS_PER_SM // num_warps)
    return blocks * num_warps / MAX_WARPS_PER_SM


def compile_variant(variant: KernelVariant, arch: int) -> VariantStats:
    """Compile one variant for ``sm_<arch>`` and read its resource usage."""
    ptx, num_warps, triton_shared = _compile(variant, arch)
    usage = _ptxas_usage(ptx, arch)
    shared = max(triton_shared, usage['shared'])
    return VariantStats(variant, arch, num_warps, usage['registers'], usage['spills'],
                        usage['stack'], shared,
                        occupancy(usage['registers'], shared, num_warps, arch))


def static_report(archs: Iterable[int] = (90, 80), out: Callable[[str], None] = print,
                  variants: Optional[Iterable[KernelVariant]] = None) -> int:
    """Compile every variant (default: :func:`model_variants`) for each architecture, print
    one row each with ``out`` and, last, ``spills: <total bytes> bytes in <n> variants``.
    Returns the total spill bytes."""
    variants = list(model_variants() if variants is None else variants)
    out('| arch | variant | warps | registers | spill B | stack B | shared B | occupancy |')
    out('| --- | --- | --- | --- | --- | --- | --- | --- |')
    total = count = 0
    for arch in archs:
        for variant in variants:
            stats = compile_variant(variant, arch)
            total += stats.spill_bytes
            count += 1
            out(f'| sm_{arch} | {variant.name()} | {stats.num_warps} | {stats.registers} | '
                f'{stats.spill_bytes} | {stats.stack_bytes} | {stats.shared_bytes} | '
                f'{stats.occupancy:.3f} |')
    out(f'spills: {total} bytes in {count} variants')
    return total


def main() -> int:
    """Print the report; exit status 1 when a variant spills."""
    return 1 if static_report() else 0


if __name__ == '__main__':
    raise SystemExit(main())
