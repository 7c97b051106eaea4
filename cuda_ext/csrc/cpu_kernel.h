// Declarations shared by the binding and the CPU / CUDA implementation files.
#pragma once

#include <ATen/ATen.h>
#include <optional>

namespace fedcore {

// softmax(x @ w, -1) for CPU x [n, k], w [k, m], or batched x [b, n, k], w [b, k, m] (one
// parallel region for the whole batch); row blocks of `block_rows` (<= 0: auto).
at::Tensor matmul_softmax_cpu(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& out, int64_t block_rows);

#ifdef FEDCORE_WITH_CUDA
// x on a CUDA device: kernels on the current stream, result on the device.
// x on the host (pinned): chunked, stream-overlapped pipeline to `device`, result on the host.
at::Tensor matmul_softmax_cuda(const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& out, int64_t chunks,
                               int64_t n_buffers, int64_t device);

// Pinned host x [n, k] -> pinned host out [n, m] on the same pipeline, compute = ATen's
// addmm / mm on `device`: y = x @ w (w [k, m]) or, with w_is_out_in, x @ w^T (w [m, k],
// nn.Linear layout), plus bias [m] when given.
at::Tensor linear_host_cuda(const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& bias, bool w_is_out_in,
                            const std::optional<at::Tensor>& out, int64_t chunks,
                            int64_t n_buffers, int64_t device);

// Unified memory (cuda_managed.cpp): a tensor on `device` backed by cudaMallocManaged,
// prefetched to the device on its current stream; freed by cudaFree when the storage dies.
at::Tensor managed_empty_cuda(at::IntArrayRef sizes, at::ScalarType dtype, int64_t device);
// Prefetch a managed tensor's storage to `device` (>= 0) or to the host (-1).
at::Tensor prefetch_managed(const at::Tensor& t, int64_t device);
// Whether t's memory comes from cudaMallocManaged.
bool is_managed(const at::Tensor& t);
#endif

}  // namespace fedcore
