// Declarations shared by the binding and the CPU / CUDA implementation files.
#pragma once

#include <ATen/ATen.h>
#include <optional>

namespace fedcore {

// softmax(x @ w, -1) for 2-D CPU x [n, k], w [k, m]; row blocks of `block_rows` (<= 0: auto).
at::Tensor matmul_softmax_cpu(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& out, int64_t block_rows);

#ifdef FEDCORE_WITH_CUDA
// x on a CUDA device: kernels on the current stream, result on the device.
// x on the host (pinned): chunked, stream-overlapped pipeline to `device`, result on the host.
at::Tensor matmul_softmax_cuda(const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& out, int64_t chunks,
                               int64_t n_buffers, int64_t device);
#endif

}  // namespace fedcore
