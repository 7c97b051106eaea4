// CUDA ops on the shared host pipeline of cuda_pipeline.h: matmul + softmax (kernels.cu)
// and matmul / linear (ATen's mm / addmm, i.e. cuBLAS, on the compute stream).
//
// A host input runs the chunk schedule of schedule.h (run_host_pipeline): H2D of chunk i+1
// and D2H of chunk i-1 overlap the op's compute on chunk i. A device input runs the op
// directly on the current stream.
#include <ATen/ATen.h>

#include "cpu_kernel.h"
#include "cuda_pipeline.h"
#include "kernels.cuh"
#include "schedule.h"

namespace fedcore {
namespace {

int fc_dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return FC_FLOAT32;
    case at::kBFloat16: return FC_BFLOAT16;
    case at::kDouble: return FC_FLOAT64;
    default: TORCH_CHECK(false, "cuda_ext: supports float32, bfloat16, float64; got ", t);
  }
  return -1;
}

// logits -> softmax for `rows` rows already on the device, on `stream`.
void compute_rows(const void* x, const void* w, void* logits, void* y, int64_t rows, int64_t k,
                  int64_t m, int dt, cudaStream_t stream) {
  FC_CUDA_CHECK(fc_launch_matmul(x, w, logits, rows, k, m, dt, stream));
  FC_CUDA_CHECK(fc_launch_row_softmax(logits, y, rows, m, dt, stream));
}

at::Tensor device_input(const at::Tensor& x, const at::Tensor& w, at::Tensor out, int64_t chunks) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w.to(x.device(), /*non_blocking=*/false).contiguous();
  const int64_t n = x.size(0), k = x.size(1), m = w.size(1);
  const int dt = fc_dtype_of(x.scalar_type());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t elem = x.element_size(), acc_elem = acc == at::kDouble ? 8 : 4;
  if (acc == x.scalar_type()) {  // logits live in the output, softmax in place
    compute_rows(xc.data_ptr(), wc.data_ptr(), out.data_ptr(), out.data_ptr(), n, k, m, dt, stream);
    return out;
  }
  // bf16: bounded fp32 scratch, row chunks on the current stream.
  const int64_t cr = fedcore_sched::chunk_rows_for(n, std::max<int64_t>(chunks, 1));
  at::Tensor logits = at::empty({cr, m}, x.options().dtype(acc));
  for (int64_t r0 = 0; r0 < n; r0 += cr) {
    const int64_t nr = std::min(cr, n - r0);
    compute_rows(static_cast<const char*>(xc.data_ptr()) + r0 * k * elem, wc.data_ptr(),
                 logits.data_ptr(), static_cast<char*>(out.data_ptr()) + r0 * m * elem, nr, k, m,
                 dt, stream);
  }
  (void)acc_elem;
  return out;
}

at::Tensor host_input(const at::Tensor& x, const at::Tensor& w, at::Tensor out, int64_t chunks,
                      int n_buffers, int64_t device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
  const int64_t k = x.size(1), m = w.size(1);
  const int dt = fc_dtype_of(x.scalar_type());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool in_place = acc == x.scalar_type();  // logits live in the output slot
  const at::Tensor wd = w.contiguous().to(dev, /*non_blocking=*/true);  // on the compute stream
  std::vector<at::Tensor> scratch(static_cast<size_t>(std::max(n_buffers, 1)));  // bf16 logits
  return run_host_pipeline(
      x, std::move(out), chunks, n_buffers, device,
      [&](int slot, const at::Tensor& xs, const at::Tensor& ys, cudaStream_t s) {
        void* logits = ys.data_ptr();
        if (!in_place) {
          if (!scratch[slot].defined() || scratch[slot].size(0) < xs.size(0))
            scratch[slot] = at::empty({xs.size(0), m}, ys.options().dtype(acc));  // compute stream
          logits = scratch[slot].data_ptr();
        }
        compute_rows(xs.data_ptr(), wd.data_ptr(), logits, ys.data_ptr(), xs.size(0), k, m, dt, s);
      });
}

}  // namespace

at::Tensor matmul_softmax_cuda(const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& out_opt, int64_t chunks,
                               int64_t n_buffers, int64_t device) {
  check_device_index(x.device().is_cuda() ? x.device().index() : device);
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(0),
              "cuda_ext: expects x [n, k] and w [k, m]; got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "cuda_ext: x and w dtypes differ");
  fc_dtype_of(x.scalar_type());
  const bool on_host = x.device().is_cpu();
  const int64_t n = x.size(0), m = w.size(1);
  const at::Device out_dev = on_host ? at::Device(at::kCPU) : x.device();
  at::Tensor out;
  if (out_opt.has_value() && out_opt->defined()) {
    out = *out_opt;
    TORCH_CHECK(out.is_contiguous() && out.device() == out_dev && out.scalar_type() == x.scalar_type() &&
                    out.dim() == 2 && out.size(0) == n && out.size(1) == m,
                "cuda_ext: out must be contiguous [", n, ", ", m, "] ", x.scalar_type(), " on ", out_dev);
  } else {
    out = at::empty({n, m}, x.options().device(out_dev).pinned_memory(on_host));
  }
  if (n == 0 || m == 0) return out;
  if (!on_host) return device_input(x, w, out, chunks);
  return host_input(x.contiguous(), w, out, std::max<int64_t>(chunks, 1),
                    static_cast<int>(std::max<int64_t>(n_buffers, 1)), device);
}

at::Tensor linear_host_cuda(const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& bias, bool w_is_out_in,
                            const std::optional<at::Tensor>& out_opt, int64_t chunks,
                            int64_t n_buffers, int64_t device) {
  check_device_index(device);
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && w.dim() == 2,
              "cuda_ext: linear pipeline expects a 2-D host x and a 2-D w; got ", x.sizes(), " on ",
              x.device(), " and ", w.sizes());
  const int64_t n = x.size(0), k = x.size(1);
  const int64_t wk = w_is_out_in ? w.size(1) : w.size(0), m = w_is_out_in ? w.size(0) : w.size(1);
  TORCH_CHECK(wk == k, "cuda_ext: shapes ", x.sizes(), " and ", w.sizes(), " mismatch");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "cuda_ext: x and w dtypes differ");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == m &&
                            bias->scalar_type() == x.scalar_type()),
              "cuda_ext: bias must be 1-D of size ", m, " and dtype ", x.scalar_type());
  at::Tensor out;
  if (out_opt.has_value() && out_opt->defined()) {
    out = *out_opt;
    TORCH_CHECK(out.is_contiguous() && out.is_pinned() && out.scalar_type() == x.scalar_type() &&
                    out.dim() == 2 && out.size(0) == n && out.size(1) == m,
                "cuda_ext: out must be pinned, contiguous [", n, ", ", m, "] ", x.scalar_type());
  } else {
    out = at::empty({n, m}, x.options().pinned_memory(true));
  }
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
  // w (and bias) go to the device once, on the compute stream, before the pipeline forks.
  const at::Tensor wd = w.to(dev, /*non_blocking=*/true);
  const at::Tensor wkm = w_is_out_in ? wd.t() : wd;  // cuBLAS reads the transpose in place
  const at::Tensor bd = has_bias ? bias->to(dev, /*non_blocking=*/true) : at::Tensor();
  return run_host_pipeline(
      x.contiguous(), std::move(out), chunks, static_cast<int>(n_buffers), device,
      [&](int, const at::Tensor& xs, const at::Tensor& ys, cudaStream_t) {
        at::Tensor y = ys;  // at::*_out take a non-const reference
        if (has_bias) at::addmm_out(y, bd, xs, wkm);
        else at::mm_out(y, xs, wkm);
      });
}

}  // namespace fedcore
