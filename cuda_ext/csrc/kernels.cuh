// Launcher API of the CUDA kernels. Deliberately free of torch headers so that
// `nvcc -c kernels.cu` compile-checks the device code in seconds; the torch binding
// (cuda_pipeline.cpp) only sees these plain C declarations.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types understood by the launchers (x, w and out share one type).
enum fc_dtype { FC_FLOAT32 = 0, FC_BFLOAT16 = 1, FC_FLOAT64 = 2 };

// logits[m, n] = x[m, k] @ w[k, n]; all row-major and contiguous. The accumulator and
// `logits` are float for FC_FLOAT32 / FC_BFLOAT16 and double for FC_FLOAT64.
// Returns the cudaError_t of the launch (checked with cudaGetLastError).
cudaError_t fc_launch_matmul(const void* x, const void* w, void* logits, int64_t m,
                             int64_t k, int64_t n, int dtype, cudaStream_t stream);

// out[r, :] = softmax(logits[r, :]) for r < m, online (single read for max and sum),
// row max subtracted. `out` may alias `logits` when the element types agree.
cudaError_t fc_launch_row_softmax(const void* logits, void* out, int64_t m, int64_t n,
                                  int dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
