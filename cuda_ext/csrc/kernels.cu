// Tiled matmul and online row softmax (plain CUDA C++, no torch headers).
#include "kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

namespace {

constexpr int kTile = 32;          // C tile is kTile x kTile, K is walked in kTile steps
constexpr int kRowsPerThread = 4;  // each thread owns 4 rows of one column of the tile
constexpr int kThreadsY = kTile / kRowsPerThread;
constexpr int kSoftmaxThreads = 256;
constexpr int64_t kMaxGridY = 65535;

template <typename T, typename Acc>
__device__ __forceinline__ Acc to_acc(T v) { return static_cast<Acc>(v); }
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16, float>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename Acc>
__device__ __forceinline__ T from_acc(Acc v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}

__device__ __forceinline__ float fc_exp(float v) { return __expf(v); }
__device__ __forceinline__ double fc_exp(double v) { return exp(v); }

// C[m, n] = A[m, k] @ B[k, n]; block (kTile, kThreadsY), one kTile x kTile tile of C.
// Shared tiles are converted to the accumulator type once, so bf16 accumulates in fp32.
template <typename T, typename Acc>
__global__ void matmul_tiled_kernel(const T* __restrict__ A, const T* __restrict__ B,
                                    Acc* __restrict__ C, int64_t m, int64_t k, int64_t n) {
  __shared__ Acc As[kTile][kTile + 1];
  __shared__ Acc Bs[kTile][kTile + 1];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;

  Acc acc[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) acc[i] = Acc(0);

  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int r = ty + i * kThreadsY;
      const int64_t ar = row0 + r, ac = k0 + tx;
      As[r][tx] = (ar < m && ac < k) ? to_acc<T, Acc>(A[ar * k + ac]) : Acc(0);
      const int64_t br = k0 + r;
      Bs[r][tx] = (br < k && col < n) ? to_acc<T, Acc>(B[br * n + col]) : Acc(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) {
      const Acc b = Bs[kk][tx];
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) acc[i] += As[ty + i * kThreadsY][kk] * b;
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t r = row0 + ty + i * kThreadsY;
    if (r < m && col < n) C[r * n + col] = acc[i];
  }
}

// Merge two partial (max, sum-of-exp) pairs of an online softmax.
template <typename Acc>
__device__ __forceinline__ void merge(Acc& m, Acc& s, Acc m2, Acc s2) {
  const Acc mx = m > m2 ? m : m2;
  if (mx == -CUDART_INF_F) return;  // both empty
  s = s * fc_exp(m - mx) + s2 * fc_exp(m2 - mx);
  m = mx;
}

// One block per row: pass 1 computes (max, sum) online in one read, pass 2 writes.
// Each element is read and written by the same thread, so out may alias logits.
template <typename T, typename Acc>
__global__ void row_softmax_kernel(const Acc* logits, T* out, int64_t n) {
  __shared__ Acc sm[kSoftmaxThreads / 32];
  __shared__ Acc ss[kSoftmaxThreads / 32];
  const int64_t row = blockIdx.x;
  const Acc* z = logits + row * n;
  T* y = out + row * n;

  Acc m = -CUDART_INF_F, s = Acc(0);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const Acc v = z[j];
    if (v > m) {
      s = s * fc_exp(m - v) + Acc(1);
      m = v;
    } else {
      s += fc_exp(v - m);
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const Acc m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const Acc s2 = __shfl_xor_sync(0xffffffffu, s, off);
    merge(m, s, m2, s2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < kSoftmaxThreads / 32 ? sm[lane] : Acc(-CUDART_INF_F);
    s = lane < kSoftmaxThreads / 32 ? ss[lane] : Acc(0);
    for (int off = 16; off > 0; off >>= 1) {
      const Acc m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const Acc s2 = __shfl_xor_sync(0xffffffffu, s, off);
      merge(m, s, m2, s2);
    }
    if (lane == 0) {
      sm[0] = m;
      ss[0] = s;
    }
  }
  __syncthreads();
  const Acc row_max = sm[0];
  const Acc inv = Acc(1) / ss[0];
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    y[j] = from_acc<T, Acc>(fc_exp(z[j] - row_max) * inv);
  }
}

template <typename T, typename Acc>
cudaError_t matmul_impl(const void* x, const void* w, void* logits, int64_t m, int64_t k,
                        int64_t n, cudaStream_t stream) {
  const dim3 block(kTile, kThreadsY);
  const int64_t grid_x = (n + kTile - 1) / kTile;
  const int64_t rows_per_launch = kMaxGridY * kTile;  // gridDim.y is limited to 65535
  for (int64_t r0 = 0; r0 < m; r0 += rows_per_launch) {
    const int64_t rows = m - r0 < rows_per_launch ? m - r0 : rows_per_launch;
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>((rows + kTile - 1) / kTile));
    matmul_tiled_kernel<T, Acc><<<grid, block, 0, stream>>>(
        static_cast<const T*>(x) + r0 * k, static_cast<const T*>(w),
        static_cast<Acc*>(logits) + r0 * n, rows, k, n);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T, typename Acc>
cudaError_t softmax_impl(const void* logits, void* out, int64_t m, int64_t n,
                         cudaStream_t stream) {
  const int64_t max_grid_x = 2147483647;
  for (int64_t r0 = 0; r0 < m; r0 += max_grid_x) {
    const int64_t rows = m - r0 < max_grid_x ? m - r0 : max_grid_x;
    row_softmax_kernel<T, Acc><<<static_cast<unsigned>(rows), kSoftmaxThreads, 0, stream>>>(
        static_cast<const Acc*>(logits) + r0 * n, static_cast<T*>(out) + r0 * n, n);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

extern "C" cudaError_t fc_launch_matmul(const void* x, const void* w, void* logits, int64_t m,
                                        int64_t k, int64_t n, int dtype, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  switch (dtype) {
    case FC_FLOAT32: return matmul_impl<float, float>(x, w, logits, m, k, n, stream);
    case FC_BFLOAT16: return matmul_impl<__nv_bfloat16, float>(x, w, logits, m, k, n, stream);
    case FC_FLOAT64: return matmul_impl<double, double>(x, w, logits, m, k, n, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t fc_launch_row_softmax(const void* logits, void* out, int64_t m,
                                             int64_t n, int dtype, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  switch (dtype) {
    case FC_FLOAT32: return softmax_impl<float, float>(logits, out, m, n, stream);
    case FC_BFLOAT16: return softmax_impl<__nv_bfloat16, float>(logits, out, m, n, stream);
    case FC_FLOAT64: return softmax_impl<double, double>(logits, out, m, n, stream);
    default: return cudaErrorInvalidValue;
  }
}
