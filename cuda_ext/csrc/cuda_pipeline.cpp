// CUDA path: host glue around the torch-free kernels in kernels.cu.
//
// Host input runs the chunk schedule of schedule.h on three streams (copy-in, compute =
// the current stream, copy-out) with double-buffered device slots, so that H2D of chunk
// i+1 and D2H of chunk i-1 overlap the matmul + softmax of chunk i. Only c10/cuda headers
// are used (the toolkit here has no cuBLAS headers, which ATen/cuda/CUDAContext.h needs).
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <array>

#include "cpu_kernel.h"
#include "kernels.cuh"
#include "schedule.h"

namespace fedcore {
namespace {

#define FC_CUDA_CHECK(expr)                                                         \
  do {                                                                              \
    const cudaError_t fc_err_ = (expr);                                             \
    TORCH_CHECK(fc_err_ == cudaSuccess, "cuda_ext: ", #expr, " failed: ",           \
                cudaGetErrorString(fc_err_));                                       \
  } while (0)

int fc_dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return FC_FLOAT32;
    case at::kBFloat16: return FC_BFLOAT16;
    case at::kDouble: return FC_FLOAT64;
    default: TORCH_CHECK(false, "cuda_ext: supports float32, bfloat16, float64; got ", t);
  }
  return -1;
}

// Events of the schedule: one per (op kind, slot), destroyed on scope exit.
struct EventTable {
  std::array<std::vector<cudaEvent_t>, 3> ev;
  explicit EventTable(int slots) {
    for (auto& v : ev) {
      v.resize(slots, nullptr);
      for (auto& e : v) FC_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
  }
  ~EventTable() {
    for (auto& v : ev)
      for (auto e : v)
        if (e) cudaEventDestroy(e);
  }
};

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
  TORCH_CHECK(x.is_pinned() && out.is_pinned(),
              "cuda_ext: host x and out must be pinned for async copies (use .pin_memory())");
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
  const int64_t n = x.size(0), k = x.size(1), m = w.size(1);
  const int dt = fc_dtype_of(x.scalar_type());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t elem = x.element_size();
  const bool in_place = acc == x.scalar_type();

  // Streams: compute = current stream (so w's copy and the allocations are ordered on it).
  const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(dev.index());
  const c10::cuda::CUDAStream copy_in = c10::cuda::getStreamFromPool(false, dev.index());
  const c10::cuda::CUDAStream copy_out = c10::cuda::getStreamFromPool(false, dev.index());
  const std::array<cudaStream_t, 3> streams = {copy_in.stream(), compute.stream(), copy_out.stream()};

  const at::Tensor wd = w.contiguous().to(dev, /*non_blocking=*/true);  // on `compute`
  const int64_t cr = fedcore_sched::chunk_rows_for(n, chunks);
  const auto steps = fedcore_sched::plan(n, chunks, n_buffers);
  const int slots = static_cast<int>(std::min<int64_t>(n_buffers, (n + cr - 1) / cr));

  // Double (n_buffers) device slots, allocated on `compute`; tell the caching allocator
  // they are also used on the copy streams so it does not hand them out early.
  at::Tensor xin = at::empty({slots, cr, k}, x.options().device(dev).pinned_memory(false));
  at::Tensor logits = at::empty({slots, cr, m}, xin.options().dtype(acc));
  at::Tensor ybuf = in_place ? logits : at::empty({slots, cr, m}, xin.options());
  c10::cuda::CUDACachingAllocator::recordStream(xin.storage().data_ptr(), copy_in);
  c10::cuda::CUDACachingAllocator::recordStream(ybuf.storage().data_ptr(), copy_out);

  EventTable events(slots);
  // Fork: the side streams start after prior work on `compute` (which may still use the
  // memory the allocator just gave us, and which copies w).
  cudaEvent_t fork = nullptr;
  FC_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  FC_CUDA_CHECK(cudaEventRecord(fork, compute.stream()));
  FC_CUDA_CHECK(cudaStreamWaitEvent(copy_in.stream(), fork, 0));
  FC_CUDA_CHECK(cudaStreamWaitEvent(copy_out.stream(), fork, 0));

  const char* xh = static_cast<const char*>(x.data_ptr());
  char* yh = static_cast<char*>(out.data_ptr());
  for (const auto& st : steps) {
    cudaStream_t s = streams[st.op];
    for (int i = 0; i < st.n_waits; ++i)
      FC_CUDA_CHECK(cudaStreamWaitEvent(s, events.ev[st.waits[i].kind][st.waits[i].slot], 0));
    const int64_t nr = st.row_end - st.row_begin;
    char* xs = static_cast<char*>(xin[st.slot].data_ptr());
    char* ys = static_cast<char*>(ybuf[st.slot].data_ptr());
    switch (st.op) {
      case fedcore_sched::kH2D:
        FC_CUDA_CHECK(cudaMemcpyAsync(xs, xh + st.row_begin * k * elem, nr * k * elem,
                                      cudaMemcpyHostToDevice, s));
        break;
      case fedcore_sched::kCompute:
        compute_rows(xs, wd.data_ptr(), logits[st.slot].data_ptr(), ys, nr, k, m, dt, s);
        break;
      case fedcore_sched::kD2H:
        FC_CUDA_CHECK(cudaMemcpyAsync(yh + st.row_begin * m * elem, ys, nr * m * elem,
                                      cudaMemcpyDeviceToHost, s));
        break;
    }
    FC_CUDA_CHECK(cudaEventRecord(events.ev[st.op][st.slot], s));
  }
  // Join: the result is on the host only once the last D2H is done; the compute stream
  // also waits so later work on it is ordered after the copies.
  FC_CUDA_CHECK(cudaEventRecord(fork, copy_out.stream()));
  FC_CUDA_CHECK(cudaStreamWaitEvent(compute.stream(), fork, 0));
  FC_CUDA_CHECK(cudaEventSynchronize(fork));
  FC_CUDA_CHECK(cudaEventDestroy(fork));
  return out;
}

}  // namespace

at::Tensor matmul_softmax_cuda(const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& out_opt, int64_t chunks,
                               int64_t n_buffers, int64_t device) {
  TORCH_CHECK(c10::cuda::device_count() > 0,
              "cuda_ext: the CUDA path needs a GPU, but no CUDA device is visible");
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

}  // namespace fedcore
