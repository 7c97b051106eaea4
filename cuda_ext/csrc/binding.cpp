// Python binding of cuda_ext._C: the CPU op, the CUDA ops and unified memory (when built
// with CUDA) and the chunk planner, plus build facts that the tests use to catch a silent fallback.
#include <torch/extension.h>

#include "cpu_kernel.h"
#include "schedule.h"

#ifndef FEDCORE_SRC_HASH
#define FEDCORE_SRC_HASH "unknown"
#endif
#ifndef FEDCORE_BUILD_MODE
#define FEDCORE_BUILD_MODE "unknown"
#endif
#ifndef FEDCORE_CUDA_ARCHS
#define FEDCORE_CUDA_ARCHS ""
#endif

namespace py = pybind11;

static py::list plan_schedule(int64_t rows, int64_t chunks, int64_t n_buffers) {
  py::list out;
  for (const auto& s : fedcore_sched::plan(rows, chunks, static_cast<int>(n_buffers))) {
    py::list waits;
    for (int i = 0; i < s.n_waits; ++i)
      waits.append(py::make_tuple(s.waits[i].kind, s.waits[i].slot, s.waits[i].chunk));
    out.append(py::make_tuple(s.op, s.chunk, s.slot, s.row_begin, s.row_end, py::tuple(waits)));
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fedcore fused matmul + softmax (CPU, and CUDA when built with the toolkit)";
  m.def("matmul_softmax_cpu", &fedcore::matmul_softmax_cpu, py::arg("x"), py::arg("w"),
        py::arg("out") = py::none(), py::arg("block_rows") = 0,
        "softmax(x @ w, -1) on CPU, row-blocked and fused (2-D, or 3-D batched; float32/bfloat16/float64)");
  m.def("plan_schedule", &plan_schedule, py::arg("rows"), py::arg("chunks"),
        py::arg("n_buffers") = 2, "The chunk schedule the CUDA launcher follows, as tuples");
#ifdef FEDCORE_WITH_CUDA
  m.def("matmul_softmax_cuda", &fedcore::matmul_softmax_cuda, py::arg("x"), py::arg("w"),
        py::arg("out") = py::none(), py::arg("chunks") = 1, py::arg("n_buffers") = 2,
        py::arg("device") = 0,
        "CUDA op: device x -> device result; pinned host x -> overlapped pipeline, host result");
  m.def("linear_host_cuda", &fedcore::linear_host_cuda, py::arg("x"), py::arg("w"),
        py::arg("bias") = py::none(), py::arg("w_is_out_in") = false, py::arg("out") = py::none(),
        py::arg("chunks") = 1, py::arg("n_buffers") = 2, py::arg("device") = 0,
        "Pinned host x -> overlapped pipeline of x @ w (or x @ w^T) + bias on a GPU, host result");
  m.def("managed_empty_cuda", &fedcore::managed_empty_cuda, py::arg("sizes"), py::arg("dtype"),
        py::arg("device"), "cudaMallocManaged tensor on `device`, prefetched on its current stream");
  m.def("prefetch_managed", &fedcore::prefetch_managed, py::arg("t"), py::arg("device"),
        "cudaMemPrefetchAsync of a managed tensor to a device (>= 0) or the host (-1)");
  m.def("is_managed", &fedcore::is_managed, py::arg("t"), "whether t's memory is managed");
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
  m.attr("SOURCE_HASH") = FEDCORE_SRC_HASH;
  m.attr("BUILD_MODE") = FEDCORE_BUILD_MODE;
  m.attr("CUDA_ARCHS") = FEDCORE_CUDA_ARCHS;
}
