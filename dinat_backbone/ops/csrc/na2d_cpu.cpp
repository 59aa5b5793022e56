// CPU kernels of 2-D (dilated) neighbourhood attention, built on first use by
// dinat_backbone/ops/cpu_kernels.py (torch.utils.cpp_extension, cached per machine). They are
// the CPU implementations of the dinat_na2d operators, whose schemas, fake (meta) functions and
// derivatives are registered in dinat_backbone/ops/library.py.
//
// Tensors use NATTEN's heads-last layout: features [B, H, W, heads, D] with D contiguous (any
// other strides), attention weights [B, H, W, heads, kh*kw] contiguous. The window arithmetic
// (dilation groups, clamped windows) lives in Python: each axis comes as tables
//   nbr[L, k]              key position of each query's k neighbours,
//   bias[L, k]             their relative-position index into the rpb table.
// Four kernels cover the forward and backward passes (see cpu_kernels.py), q a query, n one of
// its neighbours:
//   neighbour_dot           out[q, n] = scale * <x[q], y[nbr(q, n)]> (+ rpb[bias(q, n)])
//   neighbour_weighted_sum  out[q]    = scale * sum_n w[q, n] * y[nbr(q, n)]
//   neighbour_scatter       out[p]    = scale * sum_{q, n : nbr(q, n) = p} w[q, n] * z[q]
//   rpb_grad                out[r]    = sum_{q, n : bias(q, n) = r} g[q, n]
// No atomics, and results do not depend on the number of threads: each output row is written
// by one thread (neighbour_scatter: see its passes; rpb_grad: partial sums per row).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

// One head's D-vector. For the head dims DiNAT uses (16, 32, 64), D is a compile-time constant
// and the vector lives in D / lanes 32-byte SIMD registers (GCC/Clang vector extensions), so
// each query's row is loaded once and summed over its neighbours in registers; measured 3-4x
// faster than a loop over a runtime D. Other head dims use the generic specialisation below.
template <typename T, int D>
struct HeadVector {
  typedef T Simd __attribute__((vector_size(32)));
  static constexpr int kLanes = 32 / sizeof(T);
  static constexpr int kChunks = D / kLanes;
  static_assert(D % kLanes == 0, "head dim must be a multiple of the SIMD width");
  Simd v[kChunks];

  explicit HeadVector(int64_t /*dim*/) {}
  static Simd load_simd(const T* p) {
    Simd s;
    std::memcpy(&s, p, sizeof(Simd));
    return s;
  }
  void load(const T* p) {
    for (int c = 0; c < kChunks; ++c) v[c] = load_simd(p + c * kLanes);
  }
  void zero() {
    for (int c = 0; c < kChunks; ++c) v[c] = Simd{};
  }
  void add_scaled(T weight, const T* p) {
    for (int c = 0; c < kChunks; ++c) v[c] += weight * load_simd(p + c * kLanes);
  }
  void add_scaled_to(T weight, T* p) const {  // p += weight * this
    for (int c = 0; c < kChunks; ++c) {
      const Simd s = load_simd(p + c * kLanes) + weight * v[c];
      std::memcpy(p + c * kLanes, &s, sizeof(Simd));
    }
  }
  T dot(const T* p) const {
    Simd acc = v[0] * load_simd(p);
    for (int c = 1; c < kChunks; ++c) acc += v[c] * load_simd(p + c * kLanes);
    T sum = 0;
    for (int l = 0; l < kLanes; ++l) sum += acc[l];
    return sum;
  }
  void store(T scale, T* p) const {
    for (int c = 0; c < kChunks; ++c) {
      const Simd s = scale * v[c];
      std::memcpy(p + c * kLanes, &s, sizeof(Simd));
    }
  }
};

template <typename T>
struct HeadVector<T, 0> {  // any head dim, D known at run time
  std::vector<T> v;
  int64_t n;
  explicit HeadVector(int64_t dim) : v(dim), n(dim) {}
  void load(const T* p) { std::copy(p, p + n, v.begin()); }
  void zero() { std::fill(v.begin(), v.end(), T(0)); }
  void add_scaled(T weight, const T* p) {
    T* o = v.data();
#pragma omp simd
    for (int64_t d = 0; d < n; ++d) o[d] += weight * p[d];
  }
  void add_scaled_to(T weight, T* p) const {
    const T* u = v.data();
#pragma omp simd
    for (int64_t d = 0; d < n; ++d) p[d] += weight * u[d];
  }
  T dot(const T* p) const {
    const T* u = v.data();
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < n; ++d) acc += u[d] * p[d];
    return acc;
  }
  void store(T scale, T* p) const {
    for (int64_t d = 0; d < n; ++d) p[d] = scale * v[d];
  }
};

// Calls fn(std::integral_constant<int, D>) with D the head dim, or 0 if it is not specialised.
template <typename Fn>
void dispatch_head_dim(int64_t dim, const Fn& fn) {
  switch (dim) {
    case 16: return fn(std::integral_constant<int, 16>());
    case 32: return fn(std::integral_constant<int, 32>());
    case 64: return fn(std::integral_constant<int, 64>());
    default: return fn(std::integral_constant<int, 0>());
  }
}

struct FeatureStrides {
  int64_t b, y, x, h;
  explicit FeatureStrides(const at::Tensor& t)
      : b(t.stride(0)), y(t.stride(1)), x(t.stride(2)), h(t.stride(3)) {}
};

void check_features(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 5, name, " must be [B, H, W, heads, D], got ", t.sizes());
  TORCH_CHECK(t.stride(4) == 1, name, " must be contiguous in its last dimension");
}

// An index table of one axis: `rows` rows (and `cols` columns unless -1), every entry in
// [0, bound). The kernels index with the entries unchecked, so this is what keeps their reads
// and writes in bounds; a table is small (length x kernel), so checking it costs nothing.
void check_table(const at::Tensor& t, int64_t rows, int64_t cols, int64_t bound,
                 const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.is_contiguous() &&
                  t.dim() == 2 && t.size(0) == rows && (cols < 0 || t.size(1) == cols),
              name, " must be a contiguous int64 CPU table with ", rows, " rows",
              cols < 0 ? "" : " and as many columns as the kernel");
  TORCH_CHECK(t.size(1) >= 1, name, " must have at least one column (the kernel size)");
  const int64_t* p = t.data_ptr<int64_t>();
  for (int64_t e = 0, n = t.numel(); e < n; ++e)
    TORCH_CHECK(p[e] >= 0 && p[e] < bound, name, " holds ", p[e], " at [", e / t.size(1), ", ",
                e % t.size(1), "]: out of range [0, ", bound, ")");
}

// The neighbours' index table of one axis, its entries positions on the axis.
void check_neighbours(const at::Tensor& t, int64_t length, const char* name) {
  check_table(t, length, -1, length, name);
}

// The rpb index table of one axis for a kernel of `kernel`: entries in [0, 2 * kernel - 1).
void check_bias(const at::Tensor& t, int64_t length, int64_t kernel, const char* name) {
  check_table(t, length, kernel, 2 * kernel - 1, name);
}

void check_weights(const at::Tensor& w, const at::Tensor& features, int64_t K) {
  const auto s = features.sizes();
  TORCH_CHECK(w.is_contiguous() && w.sizes() == at::IntArrayRef({s[0], s[1], s[2], s[3], K}) &&
                  w.scalar_type() == features.scalar_type(),
              "weights must be a contiguous [B, H, W, heads, kh*kw] tensor of the features' dtype");
}

at::Tensor neighbour_dot(const at::Tensor& x, const at::Tensor& y, const at::Tensor& nbr_h,
                         const at::Tensor& nbr_w, double scale, const std::optional<at::Tensor>& rpb,
                         const std::optional<at::Tensor>& bias_h,
                         const std::optional<at::Tensor>& bias_w) {
  check_features(x, "x");
  check_features(y, "y");
  TORCH_CHECK(x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type(),
              "x and y must match in shape and dtype");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), heads = x.size(3), D = x.size(4);
  check_neighbours(nbr_h, H, "nbr_h");
  check_neighbours(nbr_w, W, "nbr_w");
  const int64_t kh = nbr_h.size(1), kw = nbr_w.size(1), K = kh * kw;
  at::Tensor table;
  if (rpb) {
    table = rpb->contiguous();
    TORCH_CHECK(table.scalar_type() == x.scalar_type() &&
                    table.sizes() == at::IntArrayRef({heads, 2 * kh - 1, 2 * kw - 1}),
                "rpb must be [heads, 2*kh-1, 2*kw-1] of the inputs' dtype");
    TORCH_CHECK(bias_h && bias_w, "rpb needs its index tables bias_h and bias_w");
    check_bias(*bias_h, H, kh, "bias_h");
    check_bias(*bias_w, W, kw, "bias_w");
  }
  auto out = at::empty({B, H, W, heads, K}, x.options());
  const FeatureStrides xs(x), ys(y);
  const int64_t* rows = nbr_h.data_ptr<int64_t>();
  const int64_t* cols = nbr_w.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "neighbour_dot", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* bp = rpb ? table.data_ptr<scalar_t>() : nullptr;
    const int64_t* brows = rpb ? bias_h->data_ptr<int64_t>() : nullptr;
    const int64_t* bcols = rpb ? bias_w->data_ptr<int64_t>() : nullptr;
    const int64_t bias_cols = 2 * kw - 1, bias_head = (2 * kh - 1) * bias_cols;
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(scale);
    dispatch_head_dim(D, [&](auto dim) {
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        HeadVector<scalar_t, decltype(dim)::value> q(D);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / H, i = row % H;
          for (int64_t j = 0; j < W; ++j) {
            scalar_t* o = op + (row * W + j) * heads * K;
            for (int64_t h = 0; h < heads; ++h, o += K) {
              q.load(xp + b * xs.b + i * xs.y + j * xs.x + h * xs.h);
              for (int64_t a = 0; a < kh; ++a) {
                const scalar_t* yr = yp + b * ys.b + rows[i * kh + a] * ys.y + h * ys.h;
                for (int64_t c = 0; c < kw; ++c)
                  o[a * kw + c] = s * q.dot(yr + cols[j * kw + c] * ys.x);
              }
              if (bp) {
                const scalar_t* bh = bp + h * bias_head;
                for (int64_t a = 0; a < kh; ++a)
                  for (int64_t c = 0; c < kw; ++c)
                    o[a * kw + c] += bh[brows[i * kh + a] * bias_cols + bcols[j * kw + c]];
              }
            }
          }
        }
      });
    });
  });
  return out;
}

at::Tensor neighbour_weighted_sum(const at::Tensor& w, const at::Tensor& y, const at::Tensor& nbr_h,
                                  const at::Tensor& nbr_w, double scale) {
  check_features(y, "y");
  const int64_t B = y.size(0), H = y.size(1), W = y.size(2), heads = y.size(3), D = y.size(4);
  check_neighbours(nbr_h, H, "nbr_h");
  check_neighbours(nbr_w, W, "nbr_w");
  const int64_t kh = nbr_h.size(1), kw = nbr_w.size(1), K = kh * kw;
  check_weights(w, y, K);
  auto out = at::empty({B, H, W, heads, D}, y.options());
  const FeatureStrides ys(y);
  const int64_t* rows = nbr_h.data_ptr<int64_t>();
  const int64_t* cols = nbr_w.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "neighbour_weighted_sum", [&] {
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(scale);
    dispatch_head_dim(D, [&](auto dim) {
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        HeadVector<scalar_t, decltype(dim)::value> acc(D);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / H, i = row % H;
          for (int64_t j = 0; j < W; ++j) {
            const scalar_t* wq = wp + (row * W + j) * heads * K;
            for (int64_t h = 0; h < heads; ++h, wq += K) {
              acc.zero();
              for (int64_t a = 0; a < kh; ++a) {
                const scalar_t* yr = yp + b * ys.b + rows[i * kh + a] * ys.y + h * ys.h;
                for (int64_t c = 0; c < kw; ++c)
                  acc.add_scaled(wq[a * kw + c], yr + cols[j * kw + c] * ys.x);
              }
              acc.store(s, op + ((row * W + j) * heads + h) * D);
            }
          }
        }
      });
    });
  });
  return out;
}

// A block of consecutive query positions of one dilation group on one axis.
struct AxisBlock {
  int64_t first, last, step;  // source indices first, first + step, ... < last
};

// A query at position p of its dilation group only reaches keys at p - (k-1) .. p + (k-1) of
// the same group. So blocks of S = 2(k-1) query positions per axis, taken every other block,
// write disjoint keys: per axis, blocks of even index, then of odd index.
std::vector<AxisBlock> axis_blocks(int64_t length, int64_t kernel, int64_t dilation, int parity) {
  const int64_t S = std::max<int64_t>(2 * (kernel - 1), 1);
  std::vector<AxisBlock> blocks;
  for (int64_t g = 0; g < dilation; ++g) {
    const int64_t group_len = (length - g + dilation - 1) / dilation;
    for (int64_t t = parity; t * S < group_len; t += 2)
      blocks.push_back({g + t * S * dilation,
                        g + std::min((t + 1) * S, group_len) * dilation, dilation});
  }
  return blocks;
}

// The dilation of an axis, read from its table: a query's neighbours are `dilation` apart
// (any value is race-free for k = 1, where each query writes only its own key). The passes
// below are race-free only if every query's neighbours lie in its own dilation group, within
// (k-1) group positions of it: checked here, entry by entry (the table is small).
int64_t table_dilation(const at::Tensor& nbr, const char* name) {
  const int64_t length = nbr.size(0), kernel = nbr.size(1);
  const int64_t* p = nbr.data_ptr<int64_t>();
  const int64_t dilation = length > 0 && kernel > 1 ? p[1] - p[0] : 1;
  TORCH_CHECK(length == 0 || (dilation >= 1 && dilation * kernel <= length), name,
              "'s dilation must be in [1, size / kernel], got ", dilation);
  for (int64_t i = 0; i < length; ++i)
    for (int64_t a = 0; a < kernel; ++a) {
      const int64_t offset = p[i * kernel + a] - i;
      TORCH_CHECK(offset % dilation == 0 && std::abs(offset) <= (kernel - 1) * dilation, name,
                  " row ", i, " reaches ", p[i * kernel + a],
                  ": outside its dilation group's window");
    }
  return dilation;
}

at::Tensor neighbour_scatter(const at::Tensor& w, const at::Tensor& z, const at::Tensor& nbr_h,
                             const at::Tensor& nbr_w, double scale) {
  check_features(z, "z");
  const int64_t B = z.size(0), H = z.size(1), W = z.size(2), heads = z.size(3), D = z.size(4);
  check_neighbours(nbr_h, H, "nbr_h");
  check_neighbours(nbr_w, W, "nbr_w");
  const int64_t kh = nbr_h.size(1), kw = nbr_w.size(1), K = kh * kw;
  const int64_t dilation_h = table_dilation(nbr_h, "nbr_h");
  const int64_t dilation_w = table_dilation(nbr_w, "nbr_w");
  check_weights(w, z, K);
  auto out = at::zeros({B, H, W, heads, D}, z.options());
  const FeatureStrides zs(z);
  const int64_t* rows = nbr_h.data_ptr<int64_t>();
  const int64_t* cols = nbr_w.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "neighbour_scatter", [&] {
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(scale);
    dispatch_head_dim(D, [&](auto dim) {
      // Four passes (row block parity x column block parity), each a race-free parallel loop
      // over (batch, row block, column block): blocks of one pass write disjoint outputs.
      for (int pass = 0; pass < 4; ++pass) {
        const auto row_blocks = axis_blocks(H, kh, dilation_h, pass / 2);
        const auto col_blocks = axis_blocks(W, kw, dilation_w, pass % 2);
        const int64_t nr = row_blocks.size(), nc = col_blocks.size();
        at::parallel_for(0, B * nr * nc, 1, [&](int64_t begin, int64_t end) {
          HeadVector<scalar_t, decltype(dim)::value> value(D);
          for (int64_t item = begin; item < end; ++item) {
            const int64_t b = item / (nr * nc);
            const AxisBlock& rb = row_blocks[item / nc % nr];
            const AxisBlock& cb = col_blocks[item % nc];
            for (int64_t i = rb.first; i < rb.last; i += rb.step) {
              for (int64_t j = cb.first; j < cb.last; j += cb.step) {
                const scalar_t* wq = wp + ((b * H + i) * W + j) * heads * K;
                for (int64_t h = 0; h < heads; ++h, wq += K) {
                  value.load(zp + b * zs.b + i * zs.y + j * zs.x + h * zs.h);
                  for (int64_t a = 0; a < kh; ++a) {
                    scalar_t* orow = op + ((b * H + rows[i * kh + a]) * W * heads + h) * D;
                    for (int64_t c = 0; c < kw; ++c)
                      value.add_scaled_to(s * wq[a * kw + c], orow + cols[j * kw + c] * heads * D);
                  }
                }
              }
            }
          }
        });
      }
    });
  });
  return out;
}

at::Tensor rpb_grad(const at::Tensor& grad, const at::Tensor& bias_h, const at::Tensor& bias_w) {
  TORCH_CHECK(grad.dim() == 5 && grad.is_contiguous() && grad.device().is_cpu(),
              "grad must be a contiguous CPU [B, H, W, heads, kh*kw] tensor");
  const int64_t B = grad.size(0), H = grad.size(1), W = grad.size(2), heads = grad.size(3);
  check_bias(bias_h, H, bias_h.dim() == 2 ? bias_h.size(1) : -1, "bias_h");
  check_bias(bias_w, W, bias_w.dim() == 2 ? bias_w.size(1) : -1, "bias_w");
  const int64_t kh = bias_h.size(1), kw = bias_w.size(1), K = kh * kw;
  TORCH_CHECK(grad.size(4) == K, "grad's last dimension must be kh*kw");
  const int64_t bias_cols = 2 * kw - 1, bias_size = (2 * kh - 1) * bias_cols;
  // One partial table per (b, query row), summed in a fixed order: the same bits for any
  // number of threads.
  auto partial = at::zeros({B * H, heads * bias_size}, grad.options());
  auto out = at::zeros({heads, 2 * kh - 1, 2 * kw - 1}, grad.options());
  const int64_t* brows = bias_h.data_ptr<int64_t>();
  const int64_t* bcols = bias_w.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "rpb_grad", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* pp = partial.data_ptr<scalar_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row % H;
        scalar_t* acc = pp + row * heads * bias_size;
        for (int64_t j = 0; j < W; ++j) {
          const scalar_t* g = gp + (row * W + j) * heads * K;
          for (int64_t h = 0; h < heads; ++h, g += K) {
            scalar_t* bh = acc + h * bias_size;
            for (int64_t a = 0; a < kh; ++a)
              for (int64_t c = 0; c < kw; ++c)
                bh[brows[i * kh + a] * bias_cols + bcols[j * kw + c]] += g[a * kw + c];
          }
        }
      }
    });
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t row = 0; row < B * H; ++row)
      for (int64_t e = 0; e < heads * bias_size; ++e) op[e] += pp[row * heads * bias_size + e];
  });
  return out;
}

}  // namespace

// The schemas are defined in Python (library.py), so that every backend registers against them.
TORCH_LIBRARY_IMPL(dinat_na2d, CPU, m) {
  m.impl("neighbour_dot", &neighbour_dot);
  m.impl("neighbour_weighted_sum", &neighbour_weighted_sum);
  m.impl("neighbour_scatter", &neighbour_scatter);
  m.impl("rpb_grad", &rpb_grad);
}
