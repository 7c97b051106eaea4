// Unified memory for cuda_ext: cudaMallocManaged tensors, prefetched on the current stream.
//
// The allocation bypasses torch's caching allocator: the tensor owns it through a deleter
// (cudaFree), so record_stream does not apply; the caller orders uses with streams/events.
// Before allocating we compare the request with cudaMemGetInfo's free bytes, so a request
// the card cannot hold fails with a clear message instead of oversubscribing silently.
#include <ATen/ATen.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "cpu_kernel.h"
#include "cuda_pipeline.h"

namespace fedcore {
namespace {

cudaError_t prefetch_range(const void* p, size_t bytes, int64_t device, cudaStream_t stream) {
#if CUDART_VERSION >= 13000
  cudaMemLocation loc{};
  loc.type = device < 0 ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  loc.id = device < 0 ? 0 : static_cast<int>(device);
  return cudaMemPrefetchAsync(p, bytes, loc, 0, stream);
#else
  return cudaMemPrefetchAsync(p, bytes, device < 0 ? cudaCpuDeviceId : static_cast<int>(device),
                              stream);
#endif
}

bool concurrent_managed_access(int64_t device) {
  int v = 0;
  FC_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrConcurrentManagedAccess,
                                       static_cast<int>(device)));
  return v != 0;
}

}  // namespace

at::Tensor managed_empty_cuda(at::IntArrayRef sizes, at::ScalarType dtype, int64_t device) {
  check_device_index(device);
  int64_t numel = 1;
  for (const int64_t s : sizes) {
    TORCH_CHECK(s >= 0, "cuda_ext.managed_empty: negative dimension in ", sizes);
    TORCH_CHECK(s == 0 || numel <= INT64_MAX / s, "cuda_ext.managed_empty: size overflows");
    numel *= s;
  }
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  int supported = 0;
  FC_CUDA_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrManagedMemory, static_cast<int>(device)));
  TORCH_CHECK(supported, "cuda_ext.managed_empty: CUDA device ", device,
              " does not support managed memory");
  size_t free_b = 0, total_b = 0;
  FC_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  TORCH_CHECK(bytes <= free_b, "cuda_ext.managed_empty: requested ", bytes >> 20,
              " MiB of managed memory but CUDA device ", device, " has only ", free_b >> 20,
              " MiB free (of ", total_b >> 20, " MiB); ask for less");
  void* p = nullptr;
  FC_CUDA_CHECK(cudaMallocManaged(&p, std::max<size_t>(bytes, 1), cudaMemAttachGlobal));
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCUDA, static_cast<c10::DeviceIndex>(device));
  at::Tensor t = at::from_blob(p, sizes, [](void* q) { cudaFree(q); }, options);  // owns p now
  if (bytes > 0 && concurrent_managed_access(device))
    FC_CUDA_CHECK(prefetch_range(p, bytes, device, c10::cuda::getCurrentCUDAStream(device).stream()));
  return t;
}

bool is_managed(const at::Tensor& t) {
  if (!t.defined() || t.storage().data() == nullptr) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, t.storage().data()) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error of a non-CUDA pointer
    return false;
  }
  return attr.type == cudaMemoryTypeManaged;
}

at::Tensor prefetch_managed(const at::Tensor& t, int64_t device) {
  TORCH_CHECK(t.device().is_cuda(), "cuda_ext.prefetch: expects a tensor from managed_empty");
  check_device_index(t.device().index());
  if (device >= 0) check_device_index(device);
  TORCH_CHECK(is_managed(t), "cuda_ext.prefetch: tensor memory is not managed (cudaMallocManaged); "
              "allocate it with cuda_ext.managed_empty");
  const size_t bytes = t.storage().nbytes();
  if (bytes == 0) return t;
  const int64_t stream_dev = device >= 0 ? device : t.device().index();
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(stream_dev));
  TORCH_CHECK(concurrent_managed_access(stream_dev), "cuda_ext.prefetch: CUDA device ", stream_dev,
              " cannot prefetch managed memory (no concurrentManagedAccess)");
  FC_CUDA_CHECK(prefetch_range(t.storage().data(), bytes, device,
                               c10::cuda::getCurrentCUDAStream(stream_dev).stream()));
  return t;
}

}  // namespace fedcore
