// Chunk schedule of the host->device->host pipeline (no torch, no CUDA headers).
//
// The CUDA launcher executes exactly these steps, and cuda_ext/schedule.py mirrors the
// planner so tests can simulate it on CPU (see tests/test_cuda_ext_schedule.py): rows are
// cut into chunks, chunk i uses buffer slot i % n_buffers, and three streams run
//   copy-in  : H2D(i)      waits COMPUTE(i - n_buffers)   (input slot free again)
//   compute  : COMPUTE(i)  waits H2D(i), D2H(i - n_buffers) (data there, output slot free)
//   copy-out : D2H(i)      waits COMPUTE(i)
// Each step records the event (its op kind, its slot). Events are re-recorded per slot, so
// a wait refers to the latest record enqueued before it; the planner emits steps in host
// enqueue order so that this latest record is always the chunk named in the Wait.
#pragma once

#include <cstdint>
#include <vector>

namespace fedcore_sched {

enum Op : int { kH2D = 0, kCompute = 1, kD2H = 2 };  // also the stream and event kind index

struct Wait {
  int kind;       // event kind (an Op)
  int slot;       // buffer slot whose event is waited on
  int64_t chunk;  // chunk whose record the wait must observe (checked by the simulator)
};

struct Step {
  int op;  // Op; runs on stream `op` and records event (op, slot) when done
  int64_t chunk;
  int slot;
  int64_t row_begin, row_end;
  int n_waits;
  Wait waits[2];
};

inline int64_t chunk_rows_for(int64_t rows, int64_t chunks) {
  if (rows <= 0) return 0;
  if (chunks < 1) chunks = 1;
  if (chunks > rows) chunks = rows;
  return (rows + chunks - 1) / chunks;
}

inline std::vector<Step> plan(int64_t rows, int64_t chunks, int n_buffers) {
  std::vector<Step> steps;
  if (rows <= 0) return steps;
  if (n_buffers < 1) n_buffers = 1;
  const int64_t cr = chunk_rows_for(rows, chunks);
  const int64_t n = (rows + cr - 1) / cr;
  steps.reserve(static_cast<size_t>(3 * n));
  for (int64_t i = 0; i < n; ++i) {
    const int b = static_cast<int>(i % n_buffers);
    const int64_t r0 = i * cr, r1 = (r0 + cr < rows) ? r0 + cr : rows;
    const bool reuse = i >= n_buffers;
    Step h2d{kH2D, i, b, r0, r1, 0, {}};
    if (reuse) h2d.waits[h2d.n_waits++] = Wait{kCompute, b, i - n_buffers};
    Step comp{kCompute, i, b, r0, r1, 0, {}};
    comp.waits[comp.n_waits++] = Wait{kH2D, b, i};
    if (reuse) comp.waits[comp.n_waits++] = Wait{kD2H, b, i - n_buffers};
    Step d2h{kD2H, i, b, r0, r1, 0, {}};
    d2h.waits[d2h.n_waits++] = Wait{kCompute, b, i};
    steps.push_back(h2d);
    steps.push_back(comp);
    steps.push_back(d2h);
  }
  return steps;
}

}  // namespace fedcore_sched
