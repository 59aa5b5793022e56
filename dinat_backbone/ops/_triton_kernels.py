"""Triton kernels of fused 2-D (dilated) neighbourhood attention with relative positional bias.

Imported only by :mod:`.triton_na2d` (which holds the launchers, the autograd function and the
documentation), and only when Triton is installed. ``TRITON_INTERPRET=1`` must be set before
this module is imported for the kernels to run on CPU tensors under Triton's interpreter.

All tensors are contiguous ``[B, H, W, heads, D]`` (q, k, v, out and their gradients) or
``[B, H, W, heads]`` (logsumexp, delta), so a token ``(b, y, x, h)`` is the row
``((b * H + y) * W + x) * heads + h`` of a ``[tokens, D]`` matrix. A program works inside one
dilation group ``(gy, gx)`` on a tile of group positions; window arithmetic is NATTEN's (see
:mod:`.functional`): query ``p`` of a group of length ``Lg`` sees keys ``s(p) .. s(p) + k - 1``
with ``s(p) = clamp(p - k // 2, 0, Lg - k)``, and the rpb index of key ``n`` is
``n - p + k - 1``. Logits are kept in base 2 (``exp2``), the logsumexp too.
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
def _masked_logits(a, b, qy, qx, ny, nx, start_y, start_x, ok, RPB, head, qk_scale,
                   KERNEL_Y, KERNEL_X, HAS_RPB: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 logits ``a @ b.T`` plus the rpb, ``-inf`` outside the windows.

    One of ``a``/``b`` holds queries, the other keys: the positions ``qy, qx`` (queries, with
    window starts ``start_y/x``) and ``ny, nx`` (keys) come shaped [M, 1] or [1, N] to match,
    so the same code serves the query-major and the key-major loops.
    """
    # Few operations on the [M, N] block (they cost registers): offsets outside the window
    # wrap around to large unsigned values, and the rpb index is a difference of per-row and
    # per-column terms.
    valid = (ok & ((ny - start_y).to(tl.uint32) < KERNEL_Y)
             & ((nx - start_x).to(tl.uint32) < KERNEL_X))
    s = tl.dot(a, tl.trans(b), input_precision=PRECISION) * qk_scale
    if HAS_RPB:
        width = 2 * KERNEL_X - 1
        table = RPB + head * (2 * KERNEL_Y - 1) * width + (KERNEL_Y - 1) * width + KERNEL_X - 1
        bias = tl.load(table + ((ny * width + nx) - (qy * width + qx)), mask=valid, other=0.0)
        s += bias.to(tl.float32) * LOG2E
    return tl.where(valid, s, float('-inf'))


@triton.jit
def _key_block(q, K, V, RPB, ny0, nx0, halo_y1, halo_x1, py, px, start_y, start_x, q_ok, batch,
               head, gy, gx, d, d_ok, H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X,
               qk_scale, HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
               KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """Keys and values of the block at ``(ny0, nx0)`` of a query tile's halo (which ends at
    ``halo_y1, halo_x1``), and the tile's masked base-2 logits against it."""
    k_idx = tl.arange(0, KEYS_Y * KEYS_X)
    ny = ny0 + k_idx // KEYS_X
    nx = nx0 + k_idx % KEYS_X
    k_ok = (ny < halo_y1) & (nx < halo_x1)
    k_rows = _rows(batch, H, W, HEADS, head, gy, gx, DIL_Y, DIL_X, ny, nx)
    k = _load(K, k_rows, k_ok, d, d_ok, HEAD_DIM)
    v = _load(V, k_rows, k_ok, d, d_ok, HEAD_DIM)
    s = _masked_logits(q, k, py[:, None], px[:, None], ny[None, :], nx[None, :],
                       start_y[:, None], start_x[:, None], q_ok[:, None] & k_ok[None, :], RPB,
                       head, qk_scale, KERNEL_Y, KERNEL_X, HAS_RPB, PRECISION)
    return k, v, s


@triton.jit(do_not_specialize=_SIZES)
def _na2d_fwd_kernel(Q, K, V, RPB, OUT, LSE,
                     H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, qk_scale,
                     HAS_RPB: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                     TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
                     KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """One program: a TILE_Y x TILE_X tile of queries of one dilation group and one (batch,
    head); loops over its keys' halo in blocks of KEYS_Y x KEYS_X with an online softmax."""
    gy, gx, len_y, len_x, batch, head, first_y, first_x, py, px, q_ok, q_rows = _tile(
        H, W, HEADS, DIL_Y, DIL_X, TILE_Y, TILE_X)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = _load(Q, q_rows, q_ok, d, d_ok, HEAD_DIM)
    start_y = _window_start(py, len_y, KERNEL_Y)
    start_x = _window_start(px, len_x, KERNEL_X)
    halo_y0, halo_y1 = _halo(first_y, len_y, KERNEL_Y, TILE_Y)
    halo_x0, halo_x1 = _halo(first_x, len_x, KERNEL_X, TILE_X)

    m_i = tl.full([TILE_Y * TILE_X], -1.0e30, tl.float32)  # finite: a block may mask a row
    l_i = tl.zeros([TILE_Y * TILE_X], tl.float32)
    acc = tl.zeros([TILE_Y * TILE_X, BLOCK_D], tl.float32)
    for ny0 in range(halo_y0, halo_y1, KEYS_Y):
        for nx0 in range(halo_x0, halo_x1, KEYS_X):
            k, v, s = _key_block(q, K, V, RPB, ny0, nx0, halo_y1, halo_x1, py, px, start_y,
                                 start_x, q_ok, batch, head, gy, gx, d, d_ok, H, W, HEADS,
                                 HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, qk_scale, HAS_RPB,
                                 PRECISION, KEYS_Y, KEYS_X)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    l_safe = tl.where(q_ok, l_i, 1.0)
    _store(OUT, q_rows, q_ok, d, d_ok, HEAD_DIM, acc / l_safe[:, None])
    tl.store(LSE + q_rows, m_i + tl.log2(l_safe), mask=q_ok)


@triton.jit(do_not_specialize=_SIZES)
def _na2d_bwd_query_kernel(Q, K, V, RPB, DOUT, LSE, DELTA, DQ, DRPB,
                           H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, scale,
                           qk_scale, HAS_RPB: tl.constexpr, DETERMINISTIC: tl.constexpr,
                           PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                           RPB_Y: tl.constexpr, RPB_X: tl.constexpr,
                           TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
                           KEYS_Y: tl.constexpr, KEYS_X: tl.constexpr):
    """dq and d(rpb), query-major: the forward's tiling, probabilities recomputed from the
    logsumexp. d(rpb) of the tile is accumulated in a padded ``[RPB_Y, RPB_X]`` table, then
    written to this program's slot of DRPB (``DETERMINISTIC``: per-program partial sums, later
    reduced in a fixed order) or added to DRPB ``[heads, 2*kh-1, 2*kw-1]`` with atomics."""
    gy, gx, len_y, len_x, batch, head, first_y, first_x, py, px, q_ok, q_rows = _tile(
        H, W, HEADS, DIL_Y, DIL_X, TILE_Y, TILE_X)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = _load(Q, q_rows, q_ok, d, d_ok, HEAD_DIM)
    dout = _load(DOUT, q_rows, q_ok, d, d_ok, HEAD_DIM)
    lse = tl.load(LSE + q_rows, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + q_rows, mask=q_ok, other=0.0)
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
            k, v, s = _key_block(q, K, V, RPB, ny0, nx0, halo_y1, halo_x1, py, px, start_y,
                                 start_x, q_ok, batch, head, gy, gx, d, d_ok, H, W, HEADS,
                                 HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, qk_scale, HAS_RPB,
                                 PRECISION, KEYS_Y, KEYS_X)
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
    _store(DQ, q_rows, q_ok, d, d_ok, HEAD_DIM, dq * scale)
    if HAS_RPB:
        if DETERMINISTIC:
            slot = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
            tl.store(DRPB + slot * RPB_Y * RPB_X + rpb_row[:, None] * RPB_X + rpb_col[None, :],
                     drpb)
        else:
            width = 2 * KERNEL_X - 1
            tl.atomic_add(DRPB + (head * (2 * KERNEL_Y - 1) + rpb_row[:, None]) * width
                          + rpb_col[None, :], drpb,
                          mask=(rpb_row[:, None] < 2 * KERNEL_Y - 1) & (rpb_col[None, :] < width))


@triton.jit(do_not_specialize=_SIZES)
def _na2d_bwd_key_kernel(Q, K, V, RPB, DOUT, LSE, DELTA, DK, DV,
                         H, W, HEADS, HEAD_DIM, KERNEL_Y, KERNEL_X, DIL_Y, DIL_X, scale,
                         qk_scale, HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_D: tl.constexpr, TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
                         QUERIES_Y: tl.constexpr, QUERIES_X: tl.constexpr):
    """dk and dv, key-major: a TILE_Y x TILE_X tile of keys loops over the queries that can
    attend to it (see :func:`_queries`), each masked by recomputing its own window."""
    gy, gx, len_y, len_x, batch, head, first_y, first_x, ny, nx, k_ok, k_rows = _tile(
        H, W, HEADS, DIL_Y, DIL_X, TILE_Y, TILE_X)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    k = _load(K, k_rows, k_ok, d, d_ok, HEAD_DIM)
    v = _load(V, k_rows, k_ok, d, d_ok, HEAD_DIM)
    queries_y0, queries_y1 = _queries(first_y, len_y, KERNEL_Y, TILE_Y)
    queries_x0, queries_x1 = _queries(first_x, len_x, KERNEL_X, TILE_X)

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
                                 KERNEL_Y, KERNEL_X, HAS_RPB, PRECISION)
            p_t = tl.exp2(s_t - lse[None, :])
            dv += tl.dot(p_t.to(dout.dtype), dout, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(dout), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    _store(DK, k_rows, k_ok, d, d_ok, HEAD_DIM, dk * scale)
    _store(DV, k_rows, k_ok, d, d_ok, HEAD_DIM, dv)
