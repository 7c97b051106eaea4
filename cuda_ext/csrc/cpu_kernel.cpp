// CPU path: row-blocked fused matmul + softmax with at::parallel_for.
//
// Each task computes a block of rows of x @ w straight into the output (or, for bf16, into
// a block-sized fp32 scratch) and normalises it while it is still in cache, so the full
// x @ w matrix never exists next to the output: peak extra memory is one block per thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_kernel.h"

namespace fedcore {
namespace {

// Clones for AVX-512 / AVX2 / baseline chosen at load time (GCC ifunc).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define FC_CLONES
#endif

// Row softmax kernels on GCC vector extensions: branch-free SIMD that the compiler lowers
// to SSE / AVX2 / AVX-512 per target clone (auto-vectorisation of the exp loop failed: GCC
// turned the clamp and floor into branches).
typedef float fc_v8f __attribute__((vector_size(32)));
typedef int32_t fc_v8i __attribute__((vector_size(32)));

__attribute__((always_inline)) static inline fc_v8f fc_load8(const float* p) {
  fc_v8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) static inline void fc_store8(float* p, fc_v8f v) { __builtin_memcpy(p, &v, sizeof(v)); }

// exp(v) for v <= 0 (~2 ulp on the reduced argument); clamps below -87 so 2^n stays normal.
// n = round(v / ln2) comes from the "magic number" addition (1.5 * 2^23 + 127): the rounded
// value lands in the low mantissa bits, already biased, so shifting the bits left by 23
// gives 2^n without float<->int conversions; e^r on |r| <= ln2/2 is a degree-6 Horner.
__attribute__((always_inline)) static inline fc_v8f fc_exp8(fc_v8f v) {
  const fc_v8f lo = fc_v8f{} - 87.0f;
  v = v < lo ? lo : v;  // this operand order lowers to vmaxps (no compare + blend)
  constexpr float kMagic = 12582912.0f + 127.0f;
  const fc_v8f fx = v * 1.44269504088896341f + kMagic;
  const fc_v8f fn = fx - kMagic;
  fc_v8f r = v - fn * 0.693359375f;  // ln2 split in two for an exact-ish reduction
  r = r + fn * 2.12194440e-4f;
  fc_v8f p = fc_v8f{} + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const fc_v8i bits = __builtin_bit_cast(fc_v8i, fx) << 23;
  return p * __builtin_bit_cast(fc_v8f, bits);
}

__attribute__((always_inline)) static inline float fc_hmax(fc_v8f v) {
  float m = v[0];
  for (int l = 1; l < 8; ++l) m = v[l] > m ? v[l] : m;
  return m;
}
__attribute__((always_inline)) static inline float fc_hsum(fc_v8f v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

FC_CLONES float row_max(const float* z, int64_t n) {
  fc_v8f m0 = fc_v8f{} - INFINITY, m1 = m0;  // two chains: vmaxps latency, not throughput
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const fc_v8f a = fc_load8(z + j), b = fc_load8(z + j + 8);
    m0 = m0 < a ? a : m0;
    m1 = m1 < b ? b : m1;
  }
  for (; j + 8 <= n; j += 8) {
    const fc_v8f a = fc_load8(z + j);
    m0 = m0 < a ? a : m0;
  }
  m0 = m0 < m1 ? m1 : m0;
  float out = fc_hmax(m0);
  for (; j < n; ++j) out = z[j] > out ? z[j] : out;
  return out;
}

// z[j] = exp(z[j] - mx) in place; returns the sum.
FC_CLONES float exp_sub_sum_inplace(float* z, int64_t n, float mx) {
  fc_v8f s0 = fc_v8f{}, s1 = fc_v8f{};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const fc_v8f e0 = fc_exp8(fc_load8(z + j) - mx), e1 = fc_exp8(fc_load8(z + j + 8) - mx);
    fc_store8(z + j, e0);
    fc_store8(z + j + 8, e1);
    s0 += e0;
    s1 += e1;
  }
  for (; j + 8 <= n; j += 8) {
    const fc_v8f e = fc_exp8(fc_load8(z + j) - mx);
    fc_store8(z + j, e);
    s0 += e;
  }
  float out = fc_hsum(s0 + s1);
  for (; j < n; ++j) {
    z[j] = std::exp(z[j] - mx);
    out += z[j];
  }
  return out;
}

FC_CLONES void scale_inplace(float* z, int64_t n, float inv) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) fc_store8(z + j, fc_load8(z + j) * inv);
  for (; j < n; ++j) z[j] *= inv;
}

void scale_to(const float* e, c10::BFloat16* y, int64_t n, float inv) {
  for (int64_t j = 0; j < n; ++j) y[j] = c10::BFloat16(e[j] * inv);
}

// Softmax of one row of fp32 logits z (overwritten with exp) into y; y may be z.
template <typename OutT>
void softmax_row(float* z, OutT* y, int64_t n) {
  const float mx = row_max(z, n);
  const float inv = 1.0f / exp_sub_sum_inplace(z, n, mx);
  if constexpr (std::is_same_v<OutT, float>) {
    scale_inplace(z, n, inv);
    if (y != z) std::memcpy(y, z, n * sizeof(float));
  } else {
    scale_to(z, y, n, inv);
  }
}

void softmax_row(double* z, double* y, int64_t n) {
  double mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, z[j]);
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    z[j] = std::exp(z[j] - mx);
    s += z[j];
  }
  const double inv = 1.0 / s;
  for (int64_t j = 0; j < n; ++j) y[j] = z[j] * inv;
}

int64_t auto_block_rows(int64_t batch, int64_t rows, int64_t cols, int64_t elem) {
  // ~8 MiB of logits per block, 256..1024 rows: MKL re-packs all of w on every call, so
  // small blocks waste time (measured); the softmax then reads the block from L3, which
  // costs little next to the exp itself. At least two blocks per thread over the whole
  // batch, so the dynamic hand-out below can even out a thread that the OS (shared
  // machine) slows down.
  const int64_t target = std::clamp<int64_t>((8 << 20) / std::max<int64_t>(1, cols * elem), 256, 1024);
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  const int64_t splits = (2 * nt + batch - 1) / batch;  // blocks wanted per batch item
  const int64_t per_share = (rows + splits - 1) / splits;
  return std::max<int64_t>(1, std::min(target, per_share));
}

// One row block of one batch item: GEMM straight into the output (or an fp32 scratch for
// bf16) with MKL on this thread, then the row softmax while the block is still cache-warm.
template <typename T, typename Acc>
void block_task(const at::Tensor& x, const at::Tensor& w_acc, const at::Tensor& out,
                at::Tensor& scratch, int64_t r0, int64_t nr) {
  constexpr bool direct = std::is_same_v<T, Acc>;  // logits can live in the output itself
  const int64_t cols = w_acc.size(1);
  at::Tensor xb = x.narrow(0, r0, nr);
  at::Tensor zb = direct ? out.narrow(0, r0, nr) : scratch.narrow(0, 0, nr);
  if (!direct) xb = xb.to(w_acc.scalar_type());
  at::mm_out(zb, xb, w_acc);
  Acc* z = zb.data_ptr<Acc>();
  T* y = out.data_ptr<T>() + r0 * cols;
  for (int64_t r = 0; r < nr; ++r) softmax_row(z + r * cols, y + r * cols, cols);
}

// x [B, n, k], w_acc [B, k, m], out [B, n, m], all contiguous: B * ceil(n / block_rows)
// tasks in one parallel region (one region per batch would pay a thread wake-up each).
template <typename T, typename Acc>
void run(const at::Tensor& x, const at::Tensor& w_acc, const at::Tensor& out, int64_t block_rows) {
  const int64_t batch = x.size(0), rows = x.size(1), cols = w_acc.size(2);
  const int64_t per_item = (rows + block_rows - 1) / block_rows;
  const int64_t tasks = batch * per_item;
  const int64_t workers = std::min<int64_t>(tasks, std::max<int64_t>(1, at::get_num_threads()));
  // Blocks are claimed from a shared counter rather than split statically: on a loaded
  // machine a descheduled thread then delays one block, not half of the work.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    c10::AutoGradMode no_grad(false);
    at::Tensor scratch;
    if (!std::is_same_v<T, Acc>) scratch = at::empty({block_rows, cols}, w_acc.options());
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) {
      const int64_t b = t / per_item, r0 = (t % per_item) * block_rows;
      block_task<T, Acc>(x[b], w_acc[b], out[b], scratch, r0, std::min(block_rows, rows - r0));
    }
  });
}

}  // namespace

at::Tensor matmul_softmax_cpu(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& out_opt, int64_t block_rows) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "matmul_softmax_cpu: tensors must be on CPU");
  TORCH_CHECK((x.dim() == 2 && w.dim() == 2) || (x.dim() == 3 && w.dim() == 3),
              "matmul_softmax_cpu: expects 2-D x and w, or 3-D x [b,n,k] and w [b,k,m]");
  const bool batched = x.dim() == 3;
  TORCH_CHECK(x.size(-1) == w.size(-2) && (!batched || x.size(0) == w.size(0)),
              "matmul_softmax_cpu: shape mismatch ", x.sizes(), " @ ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "matmul_softmax_cpu: x and w dtypes differ");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kDouble,
              "matmul_softmax_cpu: supports float32, bfloat16, float64; got ", dt);
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x3 = batched ? x : x.unsqueeze(0);
  const int64_t batch = x3.size(0), rows = x3.size(1), cols = w.size(-1);
  std::vector<int64_t> shape = {rows, cols};
  if (batched) shape.insert(shape.begin(), batch);
  at::Tensor out;
  if (out_opt.has_value() && out_opt->defined()) {
    out = *out_opt;
    TORCH_CHECK(out.is_contiguous() && out.device().is_cpu() && out.scalar_type() == dt &&
                    out.sizes() == at::IntArrayRef(shape),
                "matmul_softmax_cpu: out must be a contiguous CPU tensor of shape ",
                at::IntArrayRef(shape), " and dtype ", dt);
  } else {
    out = at::empty(shape, x.options());
  }
  if (batch == 0 || rows == 0 || cols == 0) return out;
  const at::Tensor xc = x3.contiguous();
  const at::Tensor wa = (batched ? w : w.unsqueeze(0)).to(acc).contiguous();
  const at::Tensor o3 = batched ? out : out.unsqueeze(0);
  if (block_rows <= 0) block_rows = auto_block_rows(batch, rows, cols, acc == at::kDouble ? 8 : 4);
  block_rows = std::min(block_rows, rows);
  if (dt == at::kFloat) run<float, float>(xc, wa, o3, block_rows);
  else if (dt == at::kDouble) run<double, double>(xc, wa, o3, block_rows);
  else run<c10::BFloat16, float>(xc, wa, o3, block_rows);
  return out;
}

}  // namespace fedcore
