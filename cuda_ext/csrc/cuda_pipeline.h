// The host -> device -> host row pipeline shared by every CUDA op of cuda_ext.
//
// A pinned host input x [n, k] is cut into row chunks that follow the plan of schedule.h on
// three streams: H2D of chunk i+1 (copy-in stream), the op's compute on chunk i (the current
// stream), D2H of chunk i-1 (copy-out stream), with n_buffers device slots per side and one
// event per (op kind, slot). The op only supplies `compute(slot, x_rows, y_rows)`, which must
// enqueue its work on the current stream (ATen ops do; raw launches take `stream`).
// Only c10/cuda headers are used (the toolkit here has no cuBLAS headers, which
// ATen/cuda/CUDAContext.h needs); ATen ops called from `compute` still reach cuBLAS.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <array>
#include <vector>

#include "schedule.h"

#define FC_CUDA_CHECK(expr)                                                         \
  do {                                                                              \
    const cudaError_t fc_err_ = (expr);                                             \
    TORCH_CHECK(fc_err_ == cudaSuccess, "cuda_ext: ", #expr, " failed: ",           \
                cudaGetErrorString(fc_err_));                                       \
  } while (0)

namespace fedcore {

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
  EventTable(const EventTable&) = delete;
  EventTable& operator=(const EventTable&) = delete;
};

// One event owned for a scope (the fork / join of the side streams).
struct OwnedEvent {
  cudaEvent_t e = nullptr;
  OwnedEvent() { FC_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~OwnedEvent() {
    if (e) cudaEventDestroy(e);
  }
  OwnedEvent(const OwnedEvent&) = delete;
  OwnedEvent& operator=(const OwnedEvent&) = delete;
};

inline void check_device_index(int64_t device) {
  const int64_t count = c10::cuda::device_count();
  TORCH_CHECK(count > 0, "cuda_ext: the CUDA path needs a GPU, but no CUDA device is visible");
  TORCH_CHECK(device >= 0 && device < count, "cuda_ext: CUDA device ", device,
              " does not exist (", count, " visible)");
}

// Runs `compute` over x (pinned host, [n, k], contiguous) in `chunks` row chunks on `device`
// and writes the rows of the result into `out` (pinned host, [n, m], contiguous).
// compute(int slot, const at::Tensor& x_rows, const at::Tensor& y_rows, cudaStream_t stream):
// x_rows [r, k] and y_rows [r, m] are device views of the slot; it must fill y_rows.
template <typename Compute>
at::Tensor run_host_pipeline(const at::Tensor& x, at::Tensor out, int64_t chunks, int n_buffers,
                             int64_t device, Compute&& compute) {
  TORCH_CHECK(x.is_pinned() && out.is_pinned(),
              "cuda_ext: host x and out must be pinned for async copies (use .pin_memory())");
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous() && x.dim() == 2 && out.dim() == 2 &&
                  x.size(0) == out.size(0),
              "cuda_ext: pipeline expects contiguous x [n, k] and out [n, m]");
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
  const int64_t n = x.size(0), k = x.size(1), m = out.size(1);
  if (n == 0 || m == 0) return out;
  chunks = std::max<int64_t>(chunks, 1);
  n_buffers = std::max(n_buffers, 1);
  const int64_t in_elem = x.element_size(), out_elem = out.element_size();

  // Streams: compute = current stream (so earlier work such as w's copy is ordered on it).
  const c10::cuda::CUDAStream compute_s = c10::cuda::getCurrentCUDAStream(dev.index());
  const c10::cuda::CUDAStream copy_in = c10::cuda::getStreamFromPool(false, dev.index());
  const c10::cuda::CUDAStream copy_out = c10::cuda::getStreamFromPool(false, dev.index());
  const std::array<cudaStream_t, 3> streams = {copy_in.stream(), compute_s.stream(),
                                               copy_out.stream()};

  const int64_t cr = fedcore_sched::chunk_rows_for(n, chunks);
  const auto steps = fedcore_sched::plan(n, chunks, n_buffers);
  const int slots = static_cast<int>(std::min<int64_t>(n_buffers, (n + cr - 1) / cr));

  // n_buffers device slots per side, allocated on `compute`; the caching allocator is told
  // they are also used on the copy streams so it does not hand them out early.
  const at::Tensor xin = at::empty({slots, cr, k}, x.options().device(dev).pinned_memory(false));
  const at::Tensor ybuf = at::empty({slots, cr, m}, out.options().device(dev).pinned_memory(false));
  c10::cuda::CUDACachingAllocator::recordStream(xin.storage().data_ptr(), copy_in);
  c10::cuda::CUDACachingAllocator::recordStream(ybuf.storage().data_ptr(), copy_out);

  EventTable events(slots);
  // Fork: the side streams start after prior work on `compute` (which may still use the
  // memory the allocator just gave us, and which copies w).
  const OwnedEvent fork, join;
  FC_CUDA_CHECK(cudaEventRecord(fork.e, compute_s.stream()));
  FC_CUDA_CHECK(cudaStreamWaitEvent(copy_in.stream(), fork.e, 0));
  FC_CUDA_CHECK(cudaStreamWaitEvent(copy_out.stream(), fork.e, 0));

  const char* xh = static_cast<const char*>(x.data_ptr());
  char* yh = static_cast<char*>(out.data_ptr());
  for (const auto& st : steps) {
    cudaStream_t s = streams[st.op];
    for (int i = 0; i < st.n_waits; ++i)
      FC_CUDA_CHECK(cudaStreamWaitEvent(s, events.ev[st.waits[i].kind][st.waits[i].slot], 0));
    const int64_t nr = st.row_end - st.row_begin;
    const at::Tensor xs = xin[st.slot].narrow(0, 0, nr);
    const at::Tensor ys = ybuf[st.slot].narrow(0, 0, nr);
    switch (st.op) {
      case fedcore_sched::kH2D:
        FC_CUDA_CHECK(cudaMemcpyAsync(xs.data_ptr(), xh + st.row_begin * k * in_elem,
                                      nr * k * in_elem, cudaMemcpyHostToDevice, s));
        break;
      case fedcore_sched::kCompute: {
        const c10::cuda::CUDAStreamGuard on_compute(compute_s);
        compute(st.slot, xs, ys, s);
        break;
      }
      case fedcore_sched::kD2H:
        FC_CUDA_CHECK(cudaMemcpyAsync(yh + st.row_begin * m * out_elem, ys.data_ptr(),
                                      nr * m * out_elem, cudaMemcpyDeviceToHost, s));
        break;
    }
    FC_CUDA_CHECK(cudaEventRecord(events.ev[st.op][st.slot], s));
  }
  // Join: the result is on the host only once the last D2H is done; the compute stream
  // also waits so later work on it is ordered after the copies.
  FC_CUDA_CHECK(cudaEventRecord(join.e, copy_out.stream()));
  FC_CUDA_CHECK(cudaStreamWaitEvent(compute_s.stream(), join.e, 0));
  FC_CUDA_CHECK(cudaEventSynchronize(join.e));
  return out;
}

}  // namespace fedcore
