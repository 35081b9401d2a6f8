// Helpers the kernels share for building a sparse gradient: one row per distinct id, found
// through a caller-owned row -> slot scratch (`distinct`: int32 per table row, -1 everywhere
// on entry and on exit) or, for a table too large for that scratch to stay in cache, by
// sorting the batch's ids (`distinct_by_sorting`): the cost is the batch's rows, never the
// table's.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace rows {

// How many rows ahead a loop over scattered table rows requests their memory: one at a time
// each costs a memory latency (a 3M x 16 table's Adagrad step: 1.6 -> 0.5 ms for 6,400 rows)
constexpr int64_t kAhead = 16;

// Non-negative ids below `limit`, sorted: LSD radix sort, a byte a pass, as many passes as
// `limit` has bytes (3 for up to 16.7M rows). A step's ~5,000 distinct rows sort in a third
// of std::sort's time, which was 40% of a classifier batch (perf, BBC News).
inline void radix_sort(std::vector<int64_t>& ids, int64_t limit) {
  std::vector<int64_t> spare(ids.size());
  for (int shift = 0; shift < 64 && (limit - 1) >> shift; shift += 8) {
    size_t count[257] = {0};
    for (int64_t id : ids) ++count[((id >> shift) & 255) + 1];
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (int64_t id : ids) spare[count[(id >> shift) & 255]++] = id;
    ids.swap(spare);
  }
}

// Sorted distinct ids of ids[0:n] (each in [0, slots)); slot[id] = the id's place among them.
// The caller resets slot[id] to -1 for every returned id (`release`) once it has read them.
inline std::vector<int64_t> distinct(const int64_t* ids, int64_t n, int32_t* slot, int64_t slots) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) __builtin_prefetch(slot + ids[i + kAhead], 1);
    if (slot[ids[i]] < 0) { slot[ids[i]] = 0; out.push_back(ids[i]); }
  }
  radix_sort(out, slots);
  for (size_t k = 0; k < out.size(); ++k) slot[out[k]] = (int32_t)k;
  return out;
}

// Sorted distinct ids of ids[0:n] (each in [0, limit), limit <= 2^32), and each position's
// place among them (`place`), by an LSD radix sort of (id, position) pairs: sequential passes
// over the batch, where `distinct` makes four scattered passes over the slot scratch. Every
// digit's counts come from one pass before the scatters, and the buffers stay with the thread:
// a 6,400-id batch of a 2.7M-row table 41-53 -> 34-36 us (microbenchmark, the same output).
inline std::vector<int64_t> distinct_by_sorting(const int64_t* ids, int64_t n, int64_t limit,
                                                std::vector<int32_t>& place) {
  constexpr int kBits = 11, kDigits = 1 << kBits;  // 2 passes up to 4M rows, not 3 of a byte
  thread_local std::vector<uint64_t> pairs, spare;
  thread_local std::vector<uint32_t> count;
  int passes = 0;
  while (passes < 3 && (uint64_t)(limit - 1) >> (kBits * passes)) ++passes;
  pairs.resize(n), spare.resize(n);
  count.assign((size_t)kDigits * passes, 0);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t id = (uint64_t)ids[i];
    pairs[i] = id << 32 | (uint64_t)i;
    for (int d = 0; d < passes; ++d) ++count[d * kDigits + ((id >> (kBits * d)) & (kDigits - 1))];
  }
  for (int d = 0; d < passes; ++d) {
    uint32_t* start = count.data() + d * kDigits;  // each digit's first place
    uint32_t total = 0;
    for (int b = 0; b < kDigits; ++b) {
      const uint32_t k = start[b];
      start[b] = total, total += k;
    }
    const int shift = 32 + kBits * d;
    for (int64_t i = 0; i < n; ++i) spare[start[(pairs[i] >> shift) & (kDigits - 1)]++] = pairs[i];
    pairs.swap(spare);
  }
  std::vector<int64_t> out;
  out.reserve(n);
  place.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = (int64_t)(pairs[i] >> 32);
    if (out.empty() || out.back() != id) out.push_back(id);
    place[pairs[i] & 0xffffffffu] = (int32_t)(out.size() - 1);
  }
  return out;
}

inline void release(const std::vector<int64_t>& ids, int32_t* slot) {
  for (int64_t r : ids) slot[r] = -1;
}

inline torch::Tensor to_tensor(const std::vector<int64_t>& ids) {
  auto out = torch::empty({(int64_t)ids.size()}, torch::kInt64);
  std::copy(ids.begin(), ids.end(), out.data_ptr<int64_t>());
  return out;
}

// result += each extra chunk, in chunk order, the rows split over threads: per-thread partial
// gradients summed in a fixed order, so the bits depend on the chunk count, not on scheduling.
inline void add_chunks(torch::Tensor result, const std::vector<torch::Tensor>& extra) {
  if (extra.empty()) return;
  const int64_t n = result.size(0), width = result.numel() / std::max<int64_t>(n, 1);
  float* out = result.data_ptr<float>();
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)),
                   [&](int64_t begin, int64_t end) {
    for (const auto& chunk : extra) {
      const float* in = chunk.data_ptr<float>();
      for (int64_t i = begin * width; i < end * width; ++i) out[i] += in[i];
    }
  });
}

}  // namespace rows
