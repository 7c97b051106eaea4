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
#include <cmath>
#include <cstring>

#include "cpu_kernel.h"

namespace fedcore {
namespace {

// Clones for AVX-512 / AVX2 / baseline chosen at load time (GCC ifunc); the loops below
// are written so that GCC auto-vectorises them (no branches, no calls, int tricks for 2^n).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FC_CLONES
#endif

// exp(v) for v <= 0 (Cephes-style: 2^n * poly(r)), ~2 ulp; clamps below -87.
static inline float exp_nonpos(float v) {
  v = v < -87.0f ? -87.0f : v;
  float fx = v * 1.44269504088896341f + 0.5f;
  int n = static_cast<int>(fx);
  n -= (fx < static_cast<float>(n)) ? 1 : 0;  // floor
  const float fn = static_cast<float>(n);
  float r = v - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

FC_CLONES float row_max(const float* z, int64_t n) {
  float m[8];
  for (int l = 0; l < 8; ++l) m[l] = -INFINITY;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) m[l] = z[j + l] > m[l] ? z[j + l] : m[l];
  float out = -INFINITY;
  for (int l = 0; l < 8; ++l) out = m[l] > out ? m[l] : out;
  for (; j < n; ++j) out = z[j] > out ? z[j] : out;
  return out;
}

// e[j] = exp(z[j] - mx) (e may alias z); returns the sum.
FC_CLONES float exp_sub_sum(const float* z, float* e, int64_t n, float mx) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) {
      const float v = exp_nonpos(z[j + l] - mx);
      e[j + l] = v;
      s[l] += v;
    }
  float out = 0.f;
  for (int l = 0; l < 8; ++l) out += s[l];
  for (; j < n; ++j) {
    const float v = exp_nonpos(z[j] - mx);
    e[j] = v;
    out += v;
  }
  return out;
}

FC_CLONES void scale_to(const float* e, float* y, int64_t n, float inv) {
  for (int64_t j = 0; j < n; ++j) y[j] = e[j] * inv;
}

void scale_to(const float* e, c10::BFloat16* y, int64_t n, float inv) {
  for (int64_t j = 0; j < n; ++j) y[j] = c10::BFloat16(e[j] * inv);
}

// Softmax of one row of fp32 logits z (overwritten with exp) into y.
template <typename OutT>
void softmax_row(float* z, OutT* y, int64_t n) {
  const float mx = row_max(z, n);
  const float s = exp_sub_sum(z, z, n, mx);
  scale_to(z, y, n, 1.0f / s);
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

int64_t auto_block_rows(int64_t rows, int64_t cols, int64_t elem) {
  // ~512 KiB of logits per block (L2-resident), at least one block per thread.
  const int64_t target = std::max<int64_t>(16, (512 << 10) / std::max<int64_t>(1, cols * elem));
  const int64_t per_thread = (rows + at::get_num_threads() - 1) / at::get_num_threads();
  return std::max<int64_t>(1, std::min(target, per_thread));
}

template <typename T, typename Acc>
void run(const at::Tensor& x, const at::Tensor& w_acc, at::Tensor& out, int64_t block_rows) {
  const int64_t rows = x.size(0), cols = w_acc.size(1);
  const int64_t nblocks = (rows + block_rows - 1) / block_rows;
  constexpr bool direct = std::is_same_v<T, Acc>;  // logits can live in the output itself
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    c10::AutoGradMode no_grad(false);
    at::Tensor scratch;
    if (!direct) scratch = at::empty({block_rows, cols}, w_acc.options());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block_rows, nr = std::min(block_rows, rows - r0);
      at::Tensor xb = x.narrow(0, r0, nr);
      at::Tensor zb = direct ? out.narrow(0, r0, nr) : scratch.narrow(0, 0, nr);
      if (!direct) xb = xb.to(w_acc.scalar_type());
      at::mm_out(zb, xb, w_acc);
      Acc* z = zb.data_ptr<Acc>();
      T* y = out.data_ptr<T>() + r0 * cols;
      for (int64_t r = 0; r < nr; ++r) softmax_row(z + r * cols, y + r * cols, cols);
    }
  });
}

}  // namespace

at::Tensor matmul_softmax_cpu(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& out_opt, int64_t block_rows) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "matmul_softmax_cpu: tensors must be on CPU");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "matmul_softmax_cpu: expects 2-D x and w");
  TORCH_CHECK(x.size(1) == w.size(0), "matmul_softmax_cpu: shape mismatch ", x.sizes(), " @ ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "matmul_softmax_cpu: x and w dtypes differ");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kDouble,
              "matmul_softmax_cpu: supports float32, bfloat16, float64; got ", dt);
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t rows = x.size(0), cols = w.size(1);
  at::Tensor out;
  if (out_opt.has_value() && out_opt->defined()) {
    out = *out_opt;
    TORCH_CHECK(out.is_contiguous() && out.device().is_cpu() && out.scalar_type() == dt &&
                    out.dim() == 2 && out.size(0) == rows && out.size(1) == cols,
                "matmul_softmax_cpu: out must be a contiguous CPU tensor of shape [", rows, ", ",
                cols, "] and dtype ", dt);
  } else {
    out = at::empty({rows, cols}, x.options());
  }
  if (rows == 0 || cols == 0) return out;
  const at::Tensor xc = x.contiguous();
  const at::Tensor wa = w.to(acc).contiguous();
  if (block_rows <= 0) block_rows = auto_block_rows(rows, cols, acc == at::kDouble ? 8 : 4);
  block_rows = std::min(block_rows, rows);
  if (dt == at::kFloat) run<float, float>(xc, wa, out, block_rows);
  else if (dt == at::kDouble) run<double, double>(xc, wa, out, block_rows);
  else run<c10::BFloat16, float>(xc, wa, out, block_rows);
  return out;
}

}  // namespace fedcore
