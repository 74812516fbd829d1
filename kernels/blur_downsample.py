"""Triton kernels of the degradation op: blur with a half-sample symmetric
border, then keep every stride-th row and column (docs/method.md section 3, "direct").

    out[b, c, i, j] = sum_{dy, dx} w[b or 0, dy, dx]
                      * x[b, c, sym(s i + dy - r, H), sym(s j + dx - r, W)]

with r = k // 2 and sym(u, n) = m if m < n else 2n - 1 - m, m = u mod 2n (the
border "... c b a | a b c ..." repeated as often as needed, so images smaller
than the kernel keep mirroring). Correlation, no flip.

Kernels (one program per (image-channel, 2-D tile); all index arithmetic in
int32 except the per-plane base offset, which is int64):

- ``_blur_fwd_kernel``: one output tile per program. Taps loop dy (runtime
  loop) x dx (unrolled, k constexpr); each tap is one gather of a
  [BLOCK_H, BLOCK_W] tile through the symmetric row and column indices and a
  scalar weight. sym() maps every integer into the image, so the gathers
  need no mask (only the store does).
- ``_gaussian_blur_fwd_kernel``: the same with the anisotropic Gaussian
  weights (docs/method.md section 2) computed inside the kernel from cos(theta),
  sin(theta) (torch's, with full range reduction for any theta), lambda1,
  lambda2, with correctly rounded divisions (_div_rn; its float32 exp
  stays Triton's ex2.approx.f32, about 2 ulp): the normaliser is one [KP, KP] block reduction per program, each
  tap weight a scalar exp (both tap loops at runtime: unrolling the scalar
  weight math doubled the registers). No [B, k, k] tensor is made.
- ``_blur_bwd_x_kernel``: gradient wrt x as a gather, one input tile per
  program. The padded image (rows -r .. s (Ho - 1) + r) is a union of mirrored
  copies of the image: copy n covers padded rows [n H, (n + 1) H), and input
  row p sits at u = n H + p (n even) or u = (n + 1) H - 1 - p (n odd). The
  program loops over the copies (row copies x column copies) that overlap the
  padded range for its tile (usually only copy 0 away from the border) and,
  for each, over the taps that can reach u at this stride: dy = (u + r) mod s
  + s t, output row i = (u + r - dy) / s. That is ceil(k / s)^2 taps, not k^2,
  each a masked gather of grad_out and of the (cache-resident) weights.
  Deterministic, no atomics, no padded buffer.
- ``_blur_bwd_w_kernel``: gradient wrt the kernel. Each program loads its
  grad_out tile once and, per tap, reduces grad_out * (shifted input gather)
  over the tile to one number, written to a partial buffer
  [B * C * tiles, k * k]; the launcher sums the partials per kernel batch
  (two-stage, deterministic, no atomics).

The launchers ``blur_downsample``, ``blur_downsample_backward`` and
``gaussian_blur_downsample`` are plain functions (not differentiable) with the
names and arguments of the three ops; mzsr_fast.ops.blur_downsample registers
them as mzsr_fast::<name>_triton, with their fake kernels and autograd. Each
checks the shapes its kernels rely on.

On CPU tensors the kernels run only under TRITON_INTERPRET=1 set before this
module is imported. The interpreter has no bf16/fp16 arithmetic worth
trusting, so half-precision CPU inputs are computed in float32 and cast back
(the GPU path accumulates half inputs in float32 anyway).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["blur_downsample", "blur_downsample_backward", "gaussian_blur_downsample", "block_sizes"]

# Integer arguments that Triton must not specialise on (by default it compiles a
# variant for a value of 1 and for multiples of 16): new image sizes reuse the
# compiled kernels; only the constexpr kernel size, stride, dtypes and block
# shape select a compilation.
_SIZES = ["C", "H", "W", "HO", "WO"]


# ---------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------

@triton.jit
def _sym(u, n):
    """Half-sample symmetric index into 0..n-1 of u + (a multiple of 2n) >= 0.

    Callers add the multiple (_sym_offset on the host) to u beforehand, so
    the remainder needs no sign fix: four integer ops per index vector.
    """
    m = u % (2 * n)
    return tl.minimum(m, 2 * n - 1 - m)


@triton.jit
def _div_rn(a, b):
    """a / b rounded to nearest: Triton's float32 "/" is the approximate
    div.full.f32 (float64's is already div.rn.f64)."""
    if a.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return a / b


@triton.jit
def _mirror_copy(n, size, first, last, last_read, R: tl.constexpr):
    """Mirrored copy n of an axis of length size: it covers padded indices
    [n size, (n + 1) size) and holds input index p at u = base + sign * p.

    Returns (hit, base, sign); hit: whether the tile's input indices
    first..last land somewhere in the padded range -R..last_read read by the
    forward. One axis of _blur_bwd_x_kernel (rows, then columns).
    """
    odd = n & 1
    sign = 1 - 2 * odd
    base = n * size + odd * (size - 1)
    u_first = base + sign * first
    u_last = base + sign * last
    return (tl.maximum(u_first, u_last) >= -R) & (tl.minimum(u_first, u_last) <= last_read), base, sign


@triton.jit
def _first_tap(u, off, R: tl.constexpr, S: tl.constexpr):
    """For padded indices u of one axis: (the first tap d0 that lands on an
    output index at stride S, that output index o0); tap d0 + S t reaches
    output index o0 - t. off (a multiple of S) makes u + R + off >= 0."""
    ur = u + (R + off)
    d0 = ur % S
    return d0, (ur - d0) // S - off // S


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

@triton.jit(do_not_specialize=_SIZES + ["W_BATCH_STRIDE", "OFF_H", "OFF_W"])
def _blur_fwd_kernel(x_ptr, w_ptr, out_ptr, C, H, W, HO, WO, W_BATCH_STRIDE, OFF_H, OFF_W,
                     K: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    bc = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    x_base = x_ptr + bc.to(tl.int64) * H * W
    w_base = w_ptr + (bc // C) * W_BATCH_STRIDE
    R: tl.constexpr = K // 2
    u0 = rows * S + (OFF_H - R)      # padded row of tap 0, shifted to be >= 0
    v0 = cols * S + (OFF_W - R)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for dy in range(K):
        x_rows = x_base + (_sym(u0 + dy, H) * W)[:, None]
        w_row = w_base + dy * K
        for dx in tl.static_range(K):
            wv = tl.load(w_row + dx).to(ACC)
            xv = tl.load(x_rows + _sym(v0 + dx, W)[None, :])   # in bounds: no mask
            acc += wv * xv.to(ACC)
    mask = (rows < HO)[:, None] & (cols < WO)[None, :]
    out_off = bc.to(tl.int64) * HO * WO + rows[:, None] * WO + cols[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SIZES + ["P_STRIDE", "OFF_H", "OFF_W"])
def _gaussian_blur_fwd_kernel(x_ptr, cos_ptr, sin_ptr, l1_ptr, l2_ptr, out_ptr, C, H, W, HO, WO, P_STRIDE,
                              OFF_H, OFF_W,
                              K: tl.constexpr, KP: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr,
                              BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    bc = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    x_base = x_ptr + bc.to(tl.int64) * H * W
    R: tl.constexpr = K // 2

    # Kernel parameters, computed in the parameters' dtype (float32 / float64).
    p = (bc // C) * P_STRIDE
    c = tl.load(cos_ptr + p)   # cos(theta), sin(theta): computed by torch, accurate for any theta
    s = tl.load(sin_ptr + p)
    l1 = tl.load(l1_ptr + p)
    l2 = tl.load(l2_ptr + p)
    qa = c * c * l1 + s * s * l2       # S = [[qa, qb], [qb, qd]]
    qb = c * s * (l1 - l2)
    qd = s * s * l1 + c * c * l2
    det = l1 * l2
    # Normaliser: sum of the unnormalised weights over the k x k grid.
    # Offsets j - (k / 2 - 0.5) = j - r for odd k; x = column, y = row offset.
    grid = tl.arange(0, KP)
    off = (grid - R).to(c.dtype)
    yy = off[:, None]
    xx = off[None, :]
    e = tl.exp(-0.5 * _div_rn(qd * xx * xx - 2 * qb * xx * yy + qa * yy * yy, det))
    e = tl.where((grid < K)[:, None] & (grid < K)[None, :], e, 0.0)
    total = tl.sum(e)

    u0 = rows * S + (OFF_H - R)
    v0 = cols * S + (OFF_W - R)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for dy in range(K):
        x_rows = x_base + (_sym(u0 + dy, H) * W)[:, None]
        y = tl.cast(dy - R, c.dtype)   # row offset
        for dx in range(K):
            x = tl.cast(dx - R, c.dtype)   # column offset
            q = _div_rn(qd * x * x - 2 * qb * x * y + qa * y * y, det)
            wv = _div_rn(tl.exp(-0.5 * q), total)
            xv = tl.load(x_rows + _sym(v0 + dx, W)[None, :])
            acc += wv.to(ACC) * xv.to(ACC)
    mask = (rows < HO)[:, None] & (cols < WO)[None, :]
    out_off = bc.to(tl.int64) * HO * WO + rows[:, None] * WO + cols[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

@triton.jit(do_not_specialize=_SIZES + ["W_BATCH_STRIDE", "NR_LO", "NR_HI", "NC_LO", "NC_HI", "OFF_H",
                                       "OFF_W"])
def _blur_bwd_x_kernel(g_ptr, w_ptr, gx_ptr, C, H, W, HO, WO, W_BATCH_STRIDE,
                       NR_LO, NR_HI, NC_LO, NC_HI, OFF_H, OFF_W,
                       K: tl.constexpr, S: tl.constexpr, T: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    bc = tl.program_id(0)
    p0 = tl.program_id(1) * BLOCK_H
    q0 = tl.program_id(2) * BLOCK_W
    p = p0 + tl.arange(0, BLOCK_H)          # input rows of this tile
    q = q0 + tl.arange(0, BLOCK_W)          # input columns
    p1 = tl.minimum(p0 + BLOCK_H, H) - 1    # last valid row / column of the tile
    q1 = tl.minimum(q0 + BLOCK_W, W) - 1
    p_ok = p < H
    q_ok = q < W
    g_base = g_ptr + bc.to(tl.int64) * HO * WO
    w_base = w_ptr + (bc // C) * W_BATCH_STRIDE
    R: tl.constexpr = K // 2
    U_MAX = S * (HO - 1) + R                # last padded row that is read
    V_MAX = S * (WO - 1) + R
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for nr in range(NR_LO, NR_HI + 1):
        r_hit, r_base, r_sign = _mirror_copy(nr, H, p0, p1, U_MAX, R)
        if r_hit:
            dy0, i0 = _first_tap(r_base + r_sign * p, OFF_H, R, S)   # tap dy0 + S t -> output row i0 - t
            for nc in range(NC_LO, NC_HI + 1):
                c_hit, c_base, c_sign = _mirror_copy(nc, W, q0, q1, V_MAX, R)
                if c_hit:
                    dx0, j0 = _first_tap(c_base + c_sign * q, OFF_W, R, S)
                    for ty in range(T):
                        dy = dy0 + ty * S
                        i = i0 - ty
                        r_ok = p_ok & (dy < K) & (i >= 0) & (i < HO)
                        g_rows = g_base + (i * WO)[:, None]
                        w_rows = w_base + (dy * K)[:, None]
                        for tx in range(T):
                            dx = dx0 + tx * S
                            j = j0 - tx
                            c_ok = q_ok & (dx < K) & (j >= 0) & (j < WO)
                            m = r_ok[:, None] & c_ok[None, :]
                            gv = tl.load(g_rows + j[None, :], mask=m, other=0.0)
                            wv = tl.load(w_rows + dx[None, :], mask=m, other=0.0)
                            acc += gv.to(ACC) * wv.to(ACC)
    mask = p_ok[:, None] & q_ok[None, :]
    gx_off = bc.to(tl.int64) * H * W + p[:, None] * W + q[None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["H", "W", "HO", "WO", "OFF_H", "OFF_W"])
def _blur_bwd_w_kernel(g_ptr, x_ptr, part_ptr, H, W, HO, WO, OFF_H, OFF_W,
                       K: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    bc = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < HO)[:, None] & (cols < WO)[None, :]
    g_off = bc.to(tl.int64) * HO * WO + rows[:, None] * WO + cols[None, :]
    gv = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(ACC)   # zero outside the output
    x_base = x_ptr + bc.to(tl.int64) * H * W
    tile = (bc * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
    part_base = part_ptr + tile.to(tl.int64) * (K * K)
    R: tl.constexpr = K // 2
    u0 = rows * S + (OFF_H - R)
    v0 = cols * S + (OFF_W - R)
    for dy in range(K):
        x_rows = x_base + (_sym(u0 + dy, H) * W)[:, None]
        part_row = part_base + dy * K
        for dx in tl.static_range(K):
            xv = tl.load(x_rows + _sym(v0 + dx, W)[None, :]).to(ACC)
            tl.store(part_row + dx, tl.sum(gv * xv))


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_sizes(rows: int, cols: int, device: torch.device, max_tile: int = 1024) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, num_warps) for tiling a [rows, cols] plane on device.

    GPU: up to 64 consecutive columns per tile row, so a warp's stores (and
    its loads at stride 1) cover contiguous memory, and up to max_tile
    elements over 4 warps: 16 x 64 (8 accumulators per thread) for the
    forward and kernel-gradient kernels, which compile to about 80-95
    registers on sm_90 with no spills; the input-gradient kernel, with two
    masked gathers per tap, asks for 512 (8 x 64: 64 registers; 16 x 64
    needs about 115). Small planes shrink the tile. The interpreter (CPU
    tensors) pays per operation, not per element, so it gets tiles up to
    64 x 64 and max_tile does not apply.
    """
    np2 = triton.next_power_of_2
    if device.type == "cuda":
        block_w = min(64, max(16, np2(cols)))
        block_h = min(16, np2(rows), max(1, max_tile // block_w))
        return block_h, block_w, 4
    return min(64, np2(rows)), min(64, np2(cols)), 1


def _sym_offset(n: int, k: int) -> int:
    """Smallest multiple of 2n that is >= k // 2 (makes padded indices >= 0)."""
    return 2 * n * -(-(k // 2) // (2 * n))


def _bwd_offset(n_lo: int, n: int, stride: int) -> int:
    """A multiple of stride that makes u + r >= 0 for every padded index u of
    the mirrored copies n >= n_lo (u >= n_lo * n)."""
    return stride * -(-max(0, -n_lo * n) // stride)


def _out_size(h: int, w: int, stride: int) -> tuple[int, int]:
    return -(-h // stride), -(-w // stride)


def _check_launch(x: torch.Tensor, stride: int, **others: torch.Tensor) -> None:
    """x [B, C, H, W] on a device Triton runs on, stride >= 1, and the other
    tensor arguments (by name) on x's device: a launcher never moves data
    between devices."""
    if x.dim() != 4:
        raise ValueError(f"x: expected [B, C, H, W], got shape {tuple(x.shape)}")
    if stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x: Triton runs on cpu (interpreter) or cuda tensors, got {x.device.type}")
    for name, t in others.items():
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on x's device {x.device}, got {t.device}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the kernels see: x's, except half types on CPU (float32)."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


def _check_kernel3(x: torch.Tensor, kernel: torch.Tensor) -> None:
    if kernel.dim() != 3 or kernel.shape[1] != kernel.shape[2] or kernel.shape[1] % 2 == 0 \
            or kernel.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"kernel: expected [1 or B, k, k] with k odd and B = {x.shape[0]}, "
                         f"got shape {tuple(kernel.shape)}")


def blur_downsample(x: torch.Tensor, kernel: torch.Tensor, stride: int) -> torch.Tensor:
    """x [B, C, H, W], kernel [1 or B, k, k] (k odd; 1: shared), stride >= 1 ->
    [B, C, ceil(H / stride), ceil(W / stride)] in x's dtype."""
    _check_launch(x, stride, kernel=kernel)
    _check_kernel3(x, kernel)
    out_dtype, cdt = x.dtype, _compute_dtype(x)
    x = x.to(cdt).contiguous()
    kernel = kernel.to(cdt).contiguous()
    b, c, h, w = x.shape
    k = kernel.shape[-1]
    ho, wo = _out_size(h, w, stride)
    out = torch.empty(b, c, ho, wo, dtype=cdt, device=x.device)
    bh, bw, warps = block_sizes(ho, wo, x.device)
    grid = (b * c, triton.cdiv(ho, bh), triton.cdiv(wo, bw))
    _blur_fwd_kernel[grid](x, kernel, out, c, h, w, ho, wo, k * k if kernel.shape[0] > 1 else 0,
                           _sym_offset(h, k), _sym_offset(w, k),
                           K=k, S=stride, ACC=_acc_dtype(cdt), BLOCK_H=bh, BLOCK_W=bw, num_warps=warps)
    return out.to(out_dtype)


def _param_dtype(*params: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in params) else torch.float32


def gaussian_blur_downsample(x: torch.Tensor, theta: torch.Tensor, lambda1: torch.Tensor, lambda2: torch.Tensor,
                             size: int, stride: int) -> torch.Tensor:
    """blur_downsample with the normalised anisotropic Gaussian of size x size
    (docs/method.md section 2) computed inside the kernel, never materialised.
    theta, lambda1, lambda2: [1] (shared) or [B], one shape."""
    _check_launch(x, stride, theta=theta, lambda1=lambda1, lambda2=lambda2)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected an odd positive kernel size, got {size}")
    params = (theta, lambda1, lambda2)
    for t, name in zip(params, ("theta", "lambda1", "lambda2")):
        if t.dim() != 1 or t.shape[0] not in (1, x.shape[0]) or t.shape != theta.shape:
            raise ValueError(f"{name}: expected [1] or [B] (B = {x.shape[0]}) like theta, got {tuple(t.shape)}")
    pdt = _param_dtype(*params)
    theta, lambda1, lambda2 = (t.to(pdt).contiguous() for t in params)
    out_dtype, cdt = x.dtype, _compute_dtype(x)
    x = x.to(cdt).contiguous()
    b, c, h, w = x.shape
    ho, wo = _out_size(h, w, stride)
    out = torch.empty(b, c, ho, wo, dtype=cdt, device=x.device)
    bh, bw, warps = block_sizes(ho, wo, x.device)
    grid = (b * c, triton.cdiv(ho, bh), triton.cdiv(wo, bw))
    _gaussian_blur_fwd_kernel[grid](x, torch.cos(theta), torch.sin(theta), lambda1, lambda2, out, c, h, w, ho, wo,
                                    1 if theta.shape[0] > 1 else 0, _sym_offset(h, size),
                                    _sym_offset(w, size), K=size, KP=triton.next_power_of_2(size),
                                    S=stride, ACC=_acc_dtype(cdt), BLOCK_H=bh, BLOCK_W=bw, num_warps=warps)
    return out.to(out_dtype)


def blur_downsample_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, stride: int,
                             need_x: bool, need_kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of blur_downsample(x, kernel, stride) for grad_out:
    (grad_x [B, C, H, W] in x's dtype, or empty when not need_x; grad_kernel
    [Bk, k, k] in kernel's dtype, or empty when not need_kernel)."""
    _check_launch(x, stride, grad_out=grad_out, kernel=kernel)
    _check_kernel3(x, kernel)
    b, c, h, w = x.shape
    k = kernel.shape[-1]
    ho, wo = _out_size(h, w, stride)
    if tuple(grad_out.shape) != (b, c, ho, wo):
        raise ValueError(f"grad_out: expected shape {(b, c, ho, wo)}, got {tuple(grad_out.shape)}")
    cdt = _compute_dtype(x)
    grad_out = grad_out.to(cdt).contiguous()
    acc = _acc_dtype(cdt)
    grad_x = x.new_empty(0)
    grad_kernel = kernel.new_empty(0)
    if need_x:
        kernel_c = kernel.to(cdt).contiguous()
        gx = torch.empty(b, c, h, w, dtype=cdt, device=x.device)
        bh, bw, warps = block_sizes(h, w, x.device, max_tile=512)
        grid = (b * c, triton.cdiv(h, bh), triton.cdiv(w, bw))
        r = k // 2
        # Mirrored copies n of the image that the padded rows -r .. s (Ho - 1) + r touch.
        nr = (-r // h, (stride * (ho - 1) + r) // h)
        nc = (-r // w, (stride * (wo - 1) + r) // w)
        _blur_bwd_x_kernel[grid](grad_out, kernel_c, gx, c, h, w, ho, wo, k * k if kernel.shape[0] > 1 else 0,
                                 nr[0], nr[1], nc[0], nc[1], _bwd_offset(nr[0], h, stride),
                                 _bwd_offset(nc[0], w, stride), K=k, S=stride, T=-(-k // stride), ACC=acc,
                                 BLOCK_H=bh, BLOCK_W=bw, num_warps=warps)
        grad_x = gx.to(x.dtype)
    if need_kernel:
        xc = x.to(cdt).contiguous()
        bh, bw, warps = block_sizes(ho, wo, x.device)
        grid = (b * c, triton.cdiv(ho, bh), triton.cdiv(wo, bw))
        tiles = grid[1] * grid[2]
        part = torch.empty(b * c * tiles, k * k, dtype=torch.float64 if cdt == torch.float64 else torch.float32,
                           device=x.device)
        _blur_bwd_w_kernel[grid](grad_out, xc, part, h, w, ho, wo, _sym_offset(h, k), _sym_offset(w, k),
                                 K=k, S=stride, ACC=acc, BLOCK_H=bh, BLOCK_W=bw, num_warps=warps)
        gk = part.view(b, c * tiles, k, k).sum(dim=1)
        if kernel.shape[0] == 1:
            gk = gk.sum(dim=0, keepdim=True)
        grad_kernel = gk.to(kernel.dtype)
    return grad_x, grad_kernel
