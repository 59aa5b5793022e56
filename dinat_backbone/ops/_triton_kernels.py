"""Triton kernels of fused 2-D (dilated) neighbourhood attention with relative positional bias.

Imported only by :mod:`.triton_na2d` (which holds the launchers, the operators and the
documentation), and only when Triton is installed. ``TRITON_INTERPRET=1`` must be set before
this module is imported for the kernels to run on CPU tensors under Triton's interpreter.

All tensors are contiguous ``[B, H, W, heads, D]`` (q, k, v, out and their gradients) or
``[B, H, W, heads]`` (logsumexp, delta), so a token ``(b, y, x, h)`` is the row
``((b * H + y) * W + x) * heads + h`` of a ``[tokens, D]`` matrix. A program works inside one
dilation group ``(gy, gx)`` on a tile of group positions; window arithmetic is NATTEN's (see
:mod:`.functional`): query ``p`` of a group of length ``Lg`` sees keys ``s(p) .. s(p) + k - 1``
with ``s(p) = clamp(p - k // 2, 0, Lg - k)``, and the rpb index of key ``n`` is
``n - p + k - 1``. Logits are kept in base 2 (``exp2``), the logsumexp too.

Interior tiles, whose windows are all unshifted, add the rpb from a per-head bias table built
once per forward (:func:`_rpb_tiles_kernel`): the bias of each query of a tile against each key
of its halo, masked windows included, read as dense rows with no per-logit index arithmetic.
The key-major kernel reads it with both orders reversed (see :func:`_na2d_bwd_key_kernel`).
Tiles at the group borders keep the general path (:func:`_masked_logits`).
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
# Sizes that change with the input or the layer: one compilation serves them all (Triton
# would otherwise compile per value 1 and per multiple of 16). The head dim stays specialized.
_SIZES = ['H', 'W', 'HEADS', 'KERNEL_Y', 'KERNEL_X', 'DIL_Y', 'DIL_X']


@triton.jit
def _window_start(pos, group_len, KERNEL):
    """First key position (in the group) of the window of query position ``pos``."""
    return tl.minimum(tl.maximum(pos - KERNEL // 2, 0), group_len - KERNEL)


@triton.jit
def _rows(batch, H, W, HEADS, head, gy, gx, DIL_Y, DIL_X, py, px):
    """Row of each token (group positions ``py``, ``px``) in the ``[tokens, D]`` view."""
    y = gy + DIL_Y * py
    x = gx + DIL_X * px
    return ((batch.to(tl.int64) * H + y) * W + x) * HEADS + head


@triton.jit
def _tile(H, W, HEADS, DIL_Y, DIL_X, TILE_Y: tl.constexpr, TILE_X: tl.constexpr):
    """This program's tile: its group ``(gy, gx)`` and the group's lengths, batch and head,
    the tile's first positions and, per token of the tile, its positions, whether it lies in
    the group, and its row. Column tiles vary fastest, so neighbouring programs share keys."""
    tiles_y = tl.cdiv(tl.cdiv(H, DIL_Y), TILE_Y)
    tiles_x = tl.cdiv(tl.cdiv(W, DIL_X), TILE_X)
    tile_id = tl.program_id(0)
    first_x = tile_id % tiles_x * TILE_X
    rest = tile_id // tiles_x
    gx = rest % DIL_X
    rest = rest // DIL_X
    first_y = rest % tiles_y * TILE_Y
    gy = rest // tiles_y
    len_y = (H - gy + DIL_Y - 1) // DIL_Y
    len_x = (W - gx + DIL_X - 1) // DIL_X
    batch = tl.program_id(1) // HEADS
    head = tl.program_id(1) % HEADS
    index = tl.arange(0, TILE_Y * TILE_X)
    pos_y = first_y + index // TILE_X
    pos_x = first_x + index % TILE_X
    ok = (pos_y < len_y) & (pos_x < len_x)
    rows = _rows(batch, H, W, HEADS, head, gy, gx, DIL_Y, DIL_X, pos_y, pos_x)
    return gy, gx, len_y, len_x, batch, head, first_y, first_x, pos_y, pos_x, ok, rows


@triton.jit
def _halo(first, group_len, KERNEL, TILE: tl.constexpr):
    """Keys ``[lo, hi)`` of one axis seen by the queries ``first .. first + TILE - 1``."""
    last = tl.minimum(first + TILE, group_len) - 1
    return (_window_start(first, group_len, KERNEL),
            _window_start(last, group_len, KERNEL) + KERNEL)


@triton.jit
def _queries(first, group_len, KERNEL, TILE: tl.constexpr):
    """Queries ``[lo, hi)`` of one axis that see some key of ``first .. first + TILE - 1``.
    ``s(p)`` is non-decreasing in ``p``, so key ``n`` is seen by the range
    ``(0 if n < k else n - k//2) .. (Lg - 1 if n >= Lg - k else n + k//2)``."""
    last = tl.minimum(first + TILE, group_len) - 1
    return (tl.where(first < KERNEL, 0, first - KERNEL // 2),
            tl.where(last >= group_len - KERNEL, group_len, last + KERNEL // 2 + 1))


@triton.jit
def _load(PTR, rows, ok, d, d_ok, HEAD_DIM):
    """Rows of a ``[tokens, D]`` tensor, zero outside ``ok`` and beyond the head dim."""
    return tl.load(PTR + rows[:, None] * HEAD_DIM + d[None, :], mask=ok[:, None] & d_ok[None, :],
                   other=0.0)


@triton.jit
def _store(PTR, rows, ok, d, d_ok, HEAD_DIM, value):
    tl.store(PTR + rows[:, None] * HEAD_DIM + d[None, :], value.to(PTR.dtype.element_ty),
             mask=ok[:, None] & d_ok[None, :])


@triton.jit
def _halo_stride(KERNEL, TILE: tl.constexpr):
    """A tile's halo length on one axis, ``TILE + k - 1``, padded to a multiple of 8 (the
    largest key block): the bias table's extent on that axis."""
    return tl.cdiv(TILE + KERNEL - 1, 8) * 8


@triton.jit
def _masked_logits(a, b, qy, qx, ny, nx, start_y, start_x, ok, RPB, head, qk_scale,
                   KERNEL_Y, KERNEL_X, BIAS, bias_rows, bias_hy, bias_hx,
                   HAS_RPB: tl.constexpr, INTERIOR: tl.constexpr, PRECISION: tl.constexpr,
                   TILE_Y: tl.constexpr, TILE_X: tl.constexpr):
    """Base-2 logits ``a @ b.T`` plus the rpb, ``-inf`` outside the windows.

    One of ``a``/``b`` holds queries, the other keys: the positions ``qy, qx`` (queries, with
    window starts ``start_y/x``) and ``ny, nx`` (keys) come shaped [M, 1] or [1, N] to match,
    so the same code serves the query-major and the key-major loops. ``INTERIOR`` (an interior
    tile, with rpb): the bias and the windows come from the table BIAS instead, at
    ``bias_rows`` ([M, 1]) and ``bias_hy, bias_hx`` ([1, N], see :func:`_interior_bias`).
    """
    s = tl.dot(a, tl.trans(b), input_precision=PRECISION) * qk_scale
    if INTERIOR:
        s += tl.load(_interior_bias(BIAS, head, bias_rows, bias_hy, bias_hx, KERNEL_Y,
                                    KERNEL_X, TILE_Y, TILE_X), mask=ok, other=float('-inf'))
    else:
        # Few operations on the [M, N] block (they cost registers): offsets outside the window
        # wrap around to large unsigned values, and the rpb index is a difference of per-row
        # and per-column terms.
        valid = (ok & ((ny - start_y).to(tl.uint32) < KERNEL_Y)
                 & ((nx - start_x).to(tl.uint32) < KERNEL_X))
        if HAS_RPB:
            width = 2 * KERNEL_X - 1
            table = (RPB + head * (2 * KERNEL_Y - 1) * width + (KERNEL_Y - 1) * width
                     + KERNEL_X - 1)
            bias = tl.load(table + ((ny * width + nx) - (qy * width + qx)), mask=valid,
                           other=0.0)
            s += bias.to(tl.float32) * LOG2E
        s = tl.where(valid, s, float('-inf'))
    return s


@triton.jit
def _interior_bias(BIAS, head, rows, hy, hx, KERNEL_Y, KERNEL_X,
                   TILE_Y: tl.constexpr, TILE_X: tl.constexpr):
    """Pointers into the bias table of ``head`` (:func:`_rpb_tiles_kernel`): table rows
    ``rows`` ([M, 1]) against the halo positions ``hy, hx`` ([1, N])."""
    stride_y = _halo_stride(KERNEL_Y, TILE_Y)
    stride_x = _halo_stride(KERNEL_X, TILE_X)
    return BIAS + (head * (TILE_Y * TILE_X) + rows) * (stride_y * stride_x) + hy * stride_x + hx


@triton.jit(do_not_specialize=['KERNEL_Y', 'KERNEL_X'])
def _rpb_tiles_kernel(RPB, BIAS, KERNEL_Y, KERNEL_X, TILE_Y: tl.constexpr,
                      TILE_X: tl.constexpr, BLOCK: tl.constexpr):
    """The bias table of interior tiles: ``BIAS[head, a, hy, hx]`` is the base-2 rpb of query
    ``a`` of a tile against key ``(hy, hx)`` of its halo, ``-inf`` outside its window (and in
    the padding). One program per (query of the tile, head)."""
    a = tl.program_id(0)
    head = tl.program_id(1)
    stride_y = _halo_stride(KERNEL_Y, TILE_Y)
    stride_x = _halo_stride(KERNEL_X, TILE_X)
    cols = tl.arange(0, BLOCK)
    # Key minus query position: the halo starts k // 2 before the tile.
    offset_y = cols // stride_x - a // TILE_X - KERNEL_Y // 2
    offset_x = cols % stride_x - a % TILE_X - KERNEL_X // 2
    inside = ((offset_y + KERNEL_Y // 2).to(tl.uint32) < KERNEL_Y) & (
        (offset_x + KERNEL_X // 2).to(tl.uint32) < KERNEL_X) & (cols < stride_y * stride_x)
    width = 2 * KERNEL_X - 1
    bias = tl.load(RPB + (head * (2 * KERNEL_Y - 1) + offset_y + KERNEL_Y - 1) * width
                   + offset_x + KERNEL_X - 1, mask=inside, other=float('-inf'))
    tl.store(_interior_bias(BIAS, head, a, 0, cols, KERNEL_Y, KERNEL_X, TILE_Y, TILE_X),
             bias * LOG2E, mask=cols < stride_y * stride_x)


@triton.jit
def _key_block(q, K, V, RPB, BIAS, ny0, nx0, halo_y0, halo_x0, halo_y1, halo_x1, py, px,
               start_y, start_x, q_ok, batch, head, gy, gx, d, d_ok, H, W, HEADS, HEAD_DIM,
               KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, qk_scale, HAS_RPB: tl.constexpr,
               INTERIOR: tl.constexpr, PRECISION: tl.constexpr, TILE_Y: tl.constexpr,
               TILE_X: tl.constexpr, KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """Keys and values of the block at ``(ny0, nx0)`` of a query tile's halo ``[halo_y0,
    halo_y1) x [halo_x0, halo_x1)``, and the tile's masked base-2 logits against it."""
    k_idx = tl.arange(0, KEYS_Y * KEYS_X)
    ny = ny0 + k_idx // KEYS_X
    nx = nx0 + k_idx % KEYS_X
    k_ok = (ny < halo_y1) & (nx < halo_x1)
    k_rows = _rows(batch, H, W, HEADS, head, gy, gx, DIL_Y, DIL_X, ny, nx)
    k = _load(K, k_rows, k_ok, d, d_ok, HEAD_DIM)
    v = _load(V, k_rows, k_ok, d, d_ok, HEAD_DIM)
    s = _masked_logits(q, k, py[:, None], px[:, None], ny[None, :], nx[None, :],
                       start_y[:, None], start_x[:, None], q_ok[:, None] & k_ok[None, :], RPB,
                       head, qk_scale, KERNEL_Y, KERNEL_X, BIAS,
                       tl.arange(0, TILE_Y * TILE_X)[:, None], (ny - halo_y0)[None, :],
                       (nx - halo_x0)[None, :], HAS_RPB, INTERIOR, PRECISION, TILE_Y, TILE_X)
    return k, v, s


@triton.jit
def _query_interior(first_y, first_x, len_y, len_x, KERNEL_Y, KERNEL_X,
                    TILE_Y: tl.constexpr, TILE_X: tl.constexpr):
    """Whether a query tile is interior: its queries all lie in the group, with centred
    windows (``s(p) = p - k // 2``) on both axes."""
    return ((first_y >= KERNEL_Y // 2) & (first_y + TILE_Y + KERNEL_Y // 2 <= len_y)
            & (first_x >= KERNEL_X // 2) & (first_x + TILE_X + KERNEL_X // 2 <= len_x))


@triton.jit
def _key_interior(first_y, first_x, len_y, len_x, KERNEL_Y, KERNEL_X,
                  TILE_Y: tl.constexpr, TILE_X: tl.constexpr):
    """Whether a key tile is interior: every query that sees one of its keys has a centred
    window (those queries are ``first - k // 2 .. first + TILE + k // 2 - 1``, see
    :func:`_queries`), on both axes."""
    return ((first_y >= KERNEL_Y) & (first_y + TILE_Y + KERNEL_Y <= len_y)
            & (first_x >= KERNEL_X) & (first_x + TILE_X + KERNEL_X <= len_x))


@triton.jit
def _attend(q, K, V, RPB, BIAS, py, px, q_ok, batch, head, gy, gx, len_y, len_x, first_y,
            first_x, d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, qk_scale,
            HAS_RPB: tl.constexpr, INTERIOR: tl.constexpr, PRECISION: tl.constexpr,
            BLOCK_D: tl.constexpr, TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
            KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """The forward's loop over a query tile's halo, online softmax: (row max, row sum,
    unnormalised output), all base 2."""
    start_y = _window_start(py, len_y, KERNEL_Y)
    start_x = _window_start(px, len_x, KERNEL_X)
    halo_y0, halo_y1 = _halo(first_y, len_y, KERNEL_Y, TILE_Y)
    halo_x0, halo_x1 = _halo(first_x, len_x, KERNEL_X, TILE_X)
    m_i = tl.full([TILE_Y * TILE_X], -1.0e30, tl.float32)  # finite: a block may mask a row
    l_i = tl.zeros([TILE_Y * TILE_X], tl.float32)
    acc = tl.zeros([TILE_Y * TILE_X, BLOCK_D], tl.float32)
    for ny0 in range(halo_y0, halo_y1, KEYS_Y):
        for nx0 in range(halo_x0, halo_x1, KEYS_X):
            k, v, s = _key_block(q, K, V, RPB, BIAS, ny0, nx0, halo_y0, halo_x0, halo_y1,
                                 halo_x1, py, px, start_y, start_x, q_ok, batch, head, gy, gx,
                                 d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y,
                                 DIL_X, qk_scale, HAS_RPB, INTERIOR, PRECISION, TILE_Y, TILE_X,
                                 KEYS_Y, KEYS_X)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    return m_i, l_i, acc


@triton.jit(do_not_specialize=_SIZES)
def _na2d_fwd_kernel(Q, K, V, RPB, BIAS, OUT, LSE,
                     H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, qk_scale,
                     HAS_RPB: tl.constexpr, BIAS_TABLE: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_D: tl.constexpr, TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
                     KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """One program: a TILE_Y x TILE_X tile of queries of one dilation group and one (batch,
    head); loops over its keys' halo in blocks of KEYS_Y x KEYS_X with an online softmax.
    BIAS: the interior tiles' bias table, read where ``BIAS_TABLE`` (with rpb). The interior
    and the border loops are separate copies (``INTERIOR``), so that each keeps only its own
    registers."""
    gy, gx, len_y, len_x, batch, head, first_y, first_x, py, px, q_ok, q_rows = _tile(
        H, W, HEADS, DIL_Y, DIL_X, TILE_Y, TILE_X)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = _load(Q, q_rows, q_ok, d, d_ok, HEAD_DIM)
    args = (q, K, V, RPB, BIAS, py, px, q_ok, batch, head, gy, gx, len_y, len_x, first_y,
            first_x, d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, qk_scale)
    if BIAS_TABLE:
        if _query_interior(first_y, first_x, len_y, len_x, KERNEL_Y, KERNEL_X, TILE_Y,
                           TILE_X):
            m_i, l_i, acc = _attend(*args, HAS_RPB, True, PRECISION, BLOCK_D, TILE_Y, TILE_X,
                                    KEYS_Y, KEYS_X)
        else:
            m_i, l_i, acc = _attend(*args, HAS_RPB, False, PRECISION, BLOCK_D, TILE_Y, TILE_X,
                                    KEYS_Y, KEYS_X)
    else:
        m_i, l_i, acc = _attend(*args, HAS_RPB, False, PRECISION, BLOCK_D, TILE_Y, TILE_X,
                                KEYS_Y, KEYS_X)
    l_safe = tl.where(q_ok, l_i, 1.0)
    _store(OUT, q_rows, q_ok, d, d_ok, HEAD_DIM, acc / l_safe[:, None])
    tl.store(LSE + q_rows, m_i + tl.log2(l_safe), mask=q_ok)


@triton.jit
def _query_gradients(q, dout, lse, delta, K, V, RPB, BIAS, py, px, q_ok, batch, head, gy, gx,
                     len_y, len_x, first_y, first_x, d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y,
                     KERNEL_X, DIL_Y, DIL_X, qk_scale, HAS_RPB: tl.constexpr,
                     INTERIOR: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                     RPB_Y: tl.constexpr, RPB_X: tl.constexpr, TILE_Y: tl.constexpr,
                     TILE_X: tl.constexpr, KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """The dq kernel's loop over a query tile's halo: (dq / scale, the tile's padded d(rpb))."""
    start_y = _window_start(py, len_y, KERNEL_Y)
    start_x = _window_start(px, len_x, KERNEL_X)
    halo_y0, halo_y1 = _halo(first_y, len_y, KERNEL_Y, TILE_Y)
    halo_x0, halo_x1 = _halo(first_x, len_x, KERNEL_X, TILE_X)
    # d(rpb) of a block: ds reshaped to [query row, key row] x [query col, key col] pairs, then
    # one-hot matrices sum the pairs of each rpb row (left) and column (right) offset.
    pair_y = tl.arange(0, TILE_Y * KEYS_Y)
    pair_x = tl.arange(0, TILE_X * KEYS_X)
    rpb_row = tl.arange(0, RPB_Y)
    rpb_col = tl.arange(0, RPB_X)
    drpb = tl.zeros([RPB_Y, RPB_X], tl.float32)
    dq = tl.zeros([TILE_Y * TILE_X, BLOCK_D], tl.float32)
    for ny0 in range(halo_y0, halo_y1, KEYS_Y):
        for nx0 in range(halo_x0, halo_x1, KEYS_X):
            k, v, s = _key_block(q, K, V, RPB, BIAS, ny0, nx0, halo_y0, halo_x0, halo_y1,
                                 halo_x1, py, px, start_y, start_x, q_ok, batch, head, gy, gx,
                                 d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y,
                                 DIL_X, qk_scale, HAS_RPB, INTERIOR, PRECISION, TILE_Y, TILE_X,
                                 KEYS_Y, KEYS_X)
            p = tl.exp2(s - lse[:, None])
            dp = tl.dot(dout, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])  # gradient of the (natural) logits
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            if HAS_RPB:
                pairs = tl.reshape(tl.permute(tl.reshape(ds, (TILE_Y, TILE_X, KEYS_Y, KEYS_X)),
                                              (0, 2, 1, 3)),
                                   (TILE_Y * KEYS_Y, TILE_X * KEYS_X))
                offset_y = ny0 + pair_y % KEYS_Y - first_y - pair_y // KEYS_Y + KERNEL_Y - 1
                offset_x = nx0 + pair_x % KEYS_X - first_x - pair_x // KEYS_X + KERNEL_X - 1
                sum_y = (rpb_row[:, None] == offset_y[None, :]).to(tl.float32)
                sum_x = (offset_x[:, None] == rpb_col[None, :]).to(tl.float32)
                drpb += tl.dot(tl.dot(sum_y, pairs, input_precision='ieee'), sum_x,
                               input_precision='ieee')
    return dq, drpb


@triton.jit(do_not_specialize=_SIZES)
def _na2d_bwd_query_kernel(Q, K, V, RPB, BIAS, OUT, DOUT, LSE, DELTA, DQ, DRPB,
                           H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, scale,
                           qk_scale, HAS_RPB: tl.constexpr, BIAS_TABLE: tl.constexpr,
                           DETERMINISTIC: tl.constexpr, PRECISION: tl.constexpr,
                           BLOCK_D: tl.constexpr, RPB_Y: tl.constexpr, RPB_X: tl.constexpr,
                           TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
                           KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """dq and d(rpb), query-major: the forward's tiling (interior and border loops as there),
    probabilities recomputed from the logsumexp. It also writes DELTA (``rowsum(dout * out)``,
    float32) of its queries, which the dk/dv kernel, launched after it, reads. d(rpb) of the
    tile is accumulated in a padded ``[RPB_Y, RPB_X]`` table, then written to this program's
    slot of DRPB (``DETERMINISTIC``: per-program partial sums, later reduced in a fixed order)
    or added to DRPB ``[heads, 2*kh-1, 2*kw-1]`` with atomics."""
    gy, gx, len_y, len_x, batch, head, first_y, first_x, py, px, q_ok, q_rows = _tile(
        H, W, HEADS, DIL_Y, DIL_X, TILE_Y, TILE_X)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    # delta from loads of its own, before q: dout and out held beside q spill registers
    # (ptxas, float32 at head dim 64).
    delta = tl.sum(_load(DOUT, q_rows, q_ok, d, d_ok, HEAD_DIM).to(tl.float32)
                   * _load(OUT, q_rows, q_ok, d, d_ok, HEAD_DIM).to(tl.float32), 1)
    tl.store(DELTA + q_rows, delta, mask=q_ok)
    q = _load(Q, q_rows, q_ok, d, d_ok, HEAD_DIM)
    dout = _load(DOUT, q_rows, q_ok, d, d_ok, HEAD_DIM)
    lse = tl.load(LSE + q_rows, mask=q_ok, other=0.0)
    args = (q, dout, lse, delta, K, V, RPB, BIAS, py, px, q_ok, batch, head, gy, gx, len_y,
            len_x, first_y, first_x, d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y,
            DIL_X, qk_scale)
    if BIAS_TABLE:
        if _query_interior(first_y, first_x, len_y, len_x, KERNEL_Y, KERNEL_X, TILE_Y,
                           TILE_X):
            dq, drpb = _query_gradients(*args, HAS_RPB, True, PRECISION, BLOCK_D, RPB_Y, RPB_X,
                                        TILE_Y, TILE_X, KEYS_Y, KEYS_X)
        else:
            dq, drpb = _query_gradients(*args, HAS_RPB, False, PRECISION, BLOCK_D, RPB_Y,
                                        RPB_X, TILE_Y, TILE_X, KEYS_Y, KEYS_X)
    else:
        dq, drpb = _query_gradients(*args, HAS_RPB, False, PRECISION, BLOCK_D, RPB_Y, RPB_X,
                                    TILE_Y, TILE_X, KEYS_Y, KEYS_X)
    _store(DQ, q_rows, q_ok, d, d_ok, HEAD_DIM, dq * scale)
    if HAS_RPB:
        rpb_row = tl.arange(0, RPB_Y)
        rpb_col = tl.arange(0, RPB_X)
        if DETERMINISTIC:
            slot = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
            tl.store(DRPB + slot * RPB_Y * RPB_X + rpb_row[:, None] * RPB_X + rpb_col[None, :],
                     drpb)
        else:
            width = 2 * KERNEL_X - 1
            tl.atomic_add(DRPB + (head * (2 * KERNEL_Y - 1) + rpb_row[:, None]) * width
                          + rpb_col[None, :], drpb,
                          mask=(rpb_row[:, None] < 2 * KERNEL_Y - 1) & (rpb_col[None, :] < width))


@triton.jit
def _key_gradients(k, v, Q, DOUT, LSE, DELTA, RPB, BIAS, ny, nx, k_ok, batch, head, gy, gx,
                   len_y, len_x, first_y, first_x, d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y,
                   KERNEL_X, DIL_Y, DIL_X, qk_scale, HAS_RPB: tl.constexpr,
                   INTERIOR: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                   TILE_Y: tl.constexpr, TILE_X: tl.constexpr, QUERIES_Y: tl.constexpr,
                   QUERIES_X: tl.constexpr):
    """The dk/dv kernel's loop over the queries that see a key tile: (dk / scale, dv)."""
    queries_y0, queries_y1 = _queries(first_y, len_y, KERNEL_Y, TILE_Y)
    queries_x0, queries_x1 = _queries(first_x, len_x, KERNEL_X, TILE_X)
    bias_rows = TILE_Y * TILE_X - 1 - tl.arange(0, TILE_Y * TILE_X)
    dk = tl.zeros([TILE_Y * TILE_X, BLOCK_D], tl.float32)
    dv = tl.zeros([TILE_Y * TILE_X, BLOCK_D], tl.float32)
    q_idx = tl.arange(0, QUERIES_Y * QUERIES_X)
    for py0 in range(queries_y0, queries_y1, QUERIES_Y):
        for px0 in range(queries_x0, queries_x1, QUERIES_X):
            py = py0 + q_idx // QUERIES_X
            px = px0 + q_idx % QUERIES_X
            q_ok = (py < queries_y1) & (px < queries_x1)
            q_rows = _rows(batch, H, W, HEADS, head, gy, gx, DIL_Y, DIL_X, py, px)
            q = _load(Q, q_rows, q_ok, d, d_ok, HEAD_DIM)
            dout = _load(DOUT, q_rows, q_ok, d, d_ok, HEAD_DIM)
            lse = tl.load(LSE + q_rows, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + q_rows, mask=q_ok, other=0.0)
            start_y = _window_start(py, len_y, KERNEL_Y)
            start_x = _window_start(px, len_x, KERNEL_X)
            s_t = _masked_logits(k, q, py[None, :], px[None, :], ny[:, None], nx[:, None],
                                 start_y[None, :], start_x[None, :],
                                 k_ok[:, None] & q_ok[None, :], RPB, head, qk_scale,
                                 KERNEL_Y, KERNEL_X, BIAS, bias_rows[:, None],
                                 (TILE_Y + KERNEL_Y - 2 - (py - queries_y0))[None, :],
                                 (TILE_X + KERNEL_X - 2 - (px - queries_x0))[None, :],
                                 HAS_RPB, INTERIOR, PRECISION, TILE_Y, TILE_X)
            p_t = tl.exp2(s_t - lse[None, :])
            dv += tl.dot(p_t.to(dout.dtype), dout, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(dout), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=_SIZES)
def _na2d_bwd_key_kernel(Q, K, V, RPB, BIAS, DOUT, LSE, DELTA, DK, DV,
                         H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, scale,
                         qk_scale, HAS_RPB: tl.constexpr, BIAS_TABLE: tl.constexpr,
                         PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                         TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
                         QUERIES_Y: tl.constexpr, QUERIES_X: tl.constexpr):
    """dk and dv, key-major: a TILE_Y x TILE_X tile of keys loops over the queries that can
    attend to it (see :func:`_queries`), each masked by recomputing its own window.

    On an interior key tile (:func:`_key_interior`) the queries that see it are the halo of a
    tile of the same size, so the bias table serves here too, read with the key and query
    orders reversed (the bias of key ``a`` against query ``h`` of that halo is the bias of query
    ``TILE - 1 - a`` against key ``TILE + k - 2 - h``, per axis: the same offset with its sign
    flipped)."""
    gy, gx, len_y, len_x, batch, head, first_y, first_x, ny, nx, k_ok, k_rows = _tile(
        H, W, HEADS, DIL_Y, DIL_X, TILE_Y, TILE_X)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    k = _load(K, k_rows, k_ok, d, d_ok, HEAD_DIM)
    v = _load(V, k_rows, k_ok, d, d_ok, HEAD_DIM)
    args = (k, v, Q, DOUT, LSE, DELTA, RPB, BIAS, ny, nx, k_ok, batch, head, gy, gx, len_y,
            len_x, first_y, first_x, d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y,
            DIL_X, qk_scale)
    if BIAS_TABLE:
        if _key_interior(first_y, first_x, len_y, len_x, KERNEL_Y, KERNEL_X, TILE_Y, TILE_X):
            dk, dv = _key_gradients(*args, HAS_RPB, True, PRECISION, BLOCK_D, TILE_Y, TILE_X,
                                    QUERIES_Y, QUERIES_X)
        else:
            dk, dv = _key_gradients(*args, HAS_RPB, False, PRECISION, BLOCK_D, TILE_Y, TILE_X,
                                    QUERIES_Y, QUERIES_X)
    else:
        dk, dv = _key_gradients(*args, HAS_RPB, False, PRECISION, BLOCK_D, TILE_Y, TILE_X,
                                QUERIES_Y, QUERIES_X)
    _store(DK, k_rows, k_ok, d, d_ok, HEAD_DIM, dk * scale)
    _store(DV, k_rows, k_ok, d, d_ok, HEAD_DIM, dv)
