// The medians, binned log-log fits and histogram counts of a snapshot's rates
// (nlp_adagrad/rate_stats.py): a pass or two over each group's values where NumPy made ~30
// calls. Plain C ABI for ctypes, no
// torch and no Python: the telemetry process, which never imports torch, loads it too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace {

constexpr int64_t kLanes = 8;  // a loop's independent lanes, for the compiler to vectorize
constexpr int64_t kBlock = 1024;  // values whose bins a vector loop finds before they count
constexpr int64_t kSelectBins = 256;  // bins a selection counts many values into (kth_smallest)
constexpr size_t kSelectDirectly = 64;  // values few enough for nth_element alone
constexpr int64_t kHistogramHeader = 7;  // the numbers before a histogram's counts

struct Range {
  double low = INFINITY, high = -INFINITY;
  int64_t count = 0;
};

// take(l, i) for every i < n, i in lane l = i % kLanes until the last whole kLanes: kLanes
// interleaved accumulators, which the compiler turns into vector instructions (in one lane
// each add, min or max waited for the last: ~1.5 ns a value).
template <typename Take>
void in_lanes(int64_t n, Take take) {
  const int64_t whole = n - n % kLanes;
  for (int64_t i = 0; i < whole; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) take(l, i + l);
  }
  for (int64_t i = whole; i < n; ++i) take(i - whole, i);
}

// The least and greatest value(i) over the i < n where counts(i), and how many, without
// branches.
template <typename Counts, typename Value>
Range range_of(int64_t n, Counts counts, Value value) {
  double low[kLanes], high[kLanes];
  int64_t number[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) low[l] = INFINITY, high[l] = -INFINITY, number[l] = 0;
  in_lanes(n, [&](int64_t l, int64_t i) {
    const bool counted = counts(i);
    const double v = value(i);
    low[l] = counted & (v < low[l]) ? v : low[l];
    high[l] = counted & (v > high[l]) ? v : high[l];
    number[l] += counted;
  });
  Range out;
  out.low = *std::min_element(low, low + kLanes);
  out.high = *std::max_element(high, high + kLanes);
  out.count = std::accumulate(number, number + kLanes, int64_t{0});
  return out;
}

struct Sums {
  double sum = 0.0, squares = 0.0;
};

// The sum of value(i) and of its squares over the i < n where counts(i), the lanes added up
// in lane order at the end.
template <typename Counts, typename Value>
Sums sums_of(int64_t n, Counts counts, Value value) {
  double sum[kLanes] = {}, squares[kLanes] = {};
  in_lanes(n, [&](int64_t l, int64_t i) {
    const double v = counts(i) ? value(i) : 0.0;
    sum[l] += v;
    squares[l] += v * v;
  });
  Sums out;
  for (int64_t l = 0; l < kLanes; ++l) out.sum += sum[l], out.squares += squares[l];
  return out;
}

// The k-th smallest of the finite values v (0-based: what std::nth_element leaves at v[k])
// and, where `below` is not null (k >= 1), the (k-1)-th in *below; v is reordered and
// replaced. While there are many, the values are first counted into kSelectBins equal bins
// of their range and only the k-th's bin is kept: a bin's index never falls as the value
// grows, so every bin below holds smaller values only, and nth_element gets the last few
// dozen (on ~1,300 values it alone took ~4.6 ns a value, ~30 of a snapshot's ~40 us).
double kth_smallest(std::vector<double>& v, size_t k, double* below, std::vector<double>& kept,
                    std::vector<int32_t>& bin) {
  int64_t count[kSelectBins];
  while (v.size() > kSelectDirectly) {
    const int64_t n = static_cast<int64_t>(v.size());
    const Range range = range_of(n, [](int64_t) { return true; }, [&](int64_t i) { return v[i]; });
    if (!(range.low < range.high)) {  // all the same
      if (below != nullptr) *below = range.low;
      return range.low;
    }
    const double scale = static_cast<double>(kSelectBins) / (range.high - range.low);
    // a range too narrow to divide or too wide to subtract in: select among them all
    if (!(scale > 0.0 && std::isfinite(scale))) break;
    bin.resize(n);
    for (int64_t i = 0; i < n; ++i) {  // in vector instructions
      const double b = std::min((v[i] - range.low) * scale, kSelectBins - 1.0);
      bin[i] = static_cast<int32_t>(b);
    }
    std::fill(count, count + kSelectBins, 0);
    for (int64_t i = 0; i < n; ++i) ++count[bin[i]];
    int64_t chosen = 0, smaller = 0;
    while (smaller + count[chosen] <= static_cast<int64_t>(k)) smaller += count[chosen++];
    k -= smaller;
    if (below != nullptr && k == 0) {  // the (k-1)-th is the greatest of the bins below
      double greatest = -INFINITY;
      for (int64_t i = 0; i < n; ++i) {
        greatest = bin[i] < chosen ? std::max(greatest, v[i]) : greatest;
      }
      *below = greatest;
      below = nullptr;
    }
    kept.clear();
    for (int64_t i = 0; i < n; ++i) {
      if (bin[i] == chosen) kept.push_back(v[i]);
    }
    v.swap(kept);
  }
  std::nth_element(v.begin(), v.begin() + k, v.end());
  if (below != nullptr) *below = *std::max_element(v.begin(), v.begin() + k);
  return v[k];
}

// np.median of v unweighted (the mean of the two middle values when there is an even number);
// weighted, the lower middle when every weight is the same, else the first value in sorted
// order whose cumulative weight reaches half the total (ties in position order). v, w: the
// finite values that count and their weights, not empty; v reordered; kept and bin: room.
double median_of(std::vector<double>& v, const std::vector<double>& w, bool weighted,
                 std::vector<double>& kept, std::vector<int32_t>& bin) {
  const size_t n = v.size();
  if (!weighted) {
    if (n % 2 == 1) return kth_smallest(v, n / 2, nullptr, kept, bin);
    double low = 0.0;
    const double high = kth_smallest(v, n / 2, &low, kept, bin);
    return (low + high) / 2.0;
  }
  // whether every weight is the first, counted in vector compares (minmax_element's chain
  // of compares was half the medians' time)
  const double first = w[0];
  int64_t same = 0;
  for (size_t i = 0; i < n; ++i) same += w[i] == first;
  if (same == static_cast<int64_t>(n)) return kth_smallest(v, (n - 1) / 2, nullptr, kept, bin);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  double total = 0.0;
  for (const size_t i : order) total += w[i];
  double cumulative = 0.0;
  for (const size_t i : order) {
    cumulative += w[i];
    if (cumulative >= total / 2.0) return v[i];
  }
  return v[order.back()];
}

// rate_stats_binned_fit's work, weighted or not: apart, so that no loop tests for the weights
// (the test kept the range's loop from vector instructions, ~40% of a fit's time)
template <bool kWeighted>
int64_t fit_bins(const double* log_x, const double* log_y, const double* weights, int64_t n,
                 int64_t num_bins, double* bin_x, double* bin_y, double* line) {
  // & where && would branch: a branch keeps a loop from vector instructions
  auto kept = [&](int64_t i) -> bool {
    const bool point = (log_x[i] >= 0.0) & std::isfinite(log_y[i]);
    if constexpr (kWeighted) return point & (weights[i] > 0.0);
    return point;
  };
  const Range range = range_of(n, kept, [&](int64_t i) { return log_x[i]; });
  if (!(range.low < range.high)) return 0;
  const double low = range.low, span = range.high - range.low;
  const double bins = static_cast<double>(num_bins);
  std::vector<double> count(num_bins, 0.0), sum_x(num_bins, 0.0), sum_y(num_bins, 0.0);
  int64_t bin[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t size = std::min(kBlock, n - start);
    for (int64_t i = 0; i < size; ++i) {  // the block's bins in vector divisions
      const double b = std::min((log_x[start + i] - low) / span * bins, bins - 1.0);
      bin[i] = kept(start + i) ? static_cast<int64_t>(b) : -1;
    }
    // then added up in point order, a run of points in one bin in registers: through memory
    // each add waited for the last one's store (points come sorted by count, so runs are long)
    int64_t i = 0;
    while (i < size && bin[i] < 0) ++i;
    while (i < size) {
      const int64_t b = bin[i];
      double c = count[b], x = sum_x[b], y = sum_y[b];
      for (; i < size && (bin[i] == b || bin[i] < 0); ++i) {
        if (bin[i] < 0) continue;
        const int64_t p = start + i;
        if constexpr (kWeighted) {
          c += weights[p];
          x += log_x[p] * weights[p];
          y += log_y[p] * weights[p];
        } else {
          c += 1.0;
          x += log_x[p];
          y += log_y[p];
        }
      }
      count[b] = c, sum_x[b] = x, sum_y[b] = y;
      while (i < size && bin[i] < 0) ++i;
    }
  }
  int64_t full = 0;
  for (int64_t b = 0; b < num_bins; ++b) {
    if (count[b] > 0.0) {
      bin_x[full] = sum_x[b] / count[b];
      bin_y[full] = sum_y[b] / count[b];
      ++full;
    }
  }
  if (full < 2) return 0;
  double mean_x = 0.0, mean_y = 0.0;
  for (int64_t b = 0; b < full; ++b) {
    mean_x += bin_x[b];
    mean_y += bin_y[b];
  }
  mean_x /= static_cast<double>(full);
  mean_y /= static_cast<double>(full);
  double xy = 0.0, xx = 0.0;
  for (int64_t b = 0; b < full; ++b) {
    const double dx = bin_x[b] - mean_x;
    xy += dx * (bin_y[b] - mean_y);
    xx += dx * dx;
  }
  line[0] = xy / xx;
  line[1] = mean_y - line[0] * mean_x;
  return full;
}

}  // namespace

extern "C" {

// out[g] = the median (median_of) of values[positions[offsets[g]] .. positions[offsets[g+1]-1]]
// that are finite and, where weights is not null and weighted[g], of weight > 0; NaN when
// none is. One call for every group of a snapshot.
void rate_stats_medians(const double* values, const double* weights, const int64_t* positions,
                        const int64_t* offsets, const uint8_t* weighted, int64_t groups,
                        double* out) {
  std::vector<double> v, w, kept;
  std::vector<int32_t> bin;
  for (int64_t g = 0; g < groups; ++g) {
    const bool by_weight = weights != nullptr && weighted[g] != 0;
    // gathered and counted in vector loops, then compacted where some do not count (a
    // branch a value on whether it counts took ~2 ns a value, more than the selection)
    const int64_t* group = positions + offsets[g];
    const int64_t size = offsets[g + 1] - offsets[g];
    v.resize(size);
    w.resize(size);
    int64_t counted = 0;
    for (int64_t j = 0; j < size; ++j) {
      v[j] = values[group[j]];
      w[j] = by_weight ? weights[group[j]] : 1.0;
      counted += std::isfinite(v[j]) & (w[j] > 0.0);
    }
    if (counted < size) {
      int64_t kept = 0;
      for (int64_t j = 0; j < size; ++j) {
        v[kept] = v[j];
        w[kept] = w[j];
        kept += std::isfinite(v[j]) & (w[j] > 0.0);
      }
    }
    v.resize(counted);
    w.resize(counted);
    out[g] = v.empty() ? NAN : median_of(v, w, by_weight, kept, bin);
  }
}

// The least-squares line through the means of log_y in num_bins equal bins of log_x, over the
// points with log_x >= 0 (x >= 1), a finite log_y (a finite, positive rate) and, where weights
// is not null, weight > 0 (sums weighted). Writes the bins that hold points, in order, to
// bin_x and bin_y (num_bins each) and slope, intercept to line; returns how many bins, or 0
// when the line is undefined (no points, one value of log_x, fewer than two bins). Bin sums
// add up in point order, as np.bincount does.
int64_t rate_stats_binned_fit(const double* log_x, const double* log_y, const double* weights,
                              int64_t n, int64_t num_bins, double* bin_x, double* bin_y,
                              double* line) {
  auto fit = weights == nullptr ? fit_bins<false> : fit_bins<true>;
  return fit(log_x, log_y, weights, n, num_bins, bin_x, bin_y, line);
}

// The summary numbers of `count` snapshots of one view in one call (telemetry.summarize_all;
// each call from Python cost more than the C++ of a fit): for snapshot k, out[k * (groups +
// 2) + g] the medians of the groups (rate_stats_medians) of rates[k], then the slopes of
// log_rates[k] against log_updates[k] and against log_counts (rate_stats_binned_fit in
// num_bins, weighted where weights is not null; NaN where a line is undefined). Snapshots are
// shared out over `threads` OpenMP threads: the loop's sink passes the training threads, whose
// team waits spinning right after a chunk of steps (each snapshot's numbers are its own, so
// any split gives the same bits).
void rate_stats_summaries(int64_t count, const double* const* rates,
                          const double* const* log_rates, const double* const* log_updates,
                          const double* log_counts, const double* weights, int64_t n,
                          const int64_t* positions, const int64_t* offsets, const uint8_t* weighted,
                          int64_t groups, int64_t num_bins, int64_t threads, double* out) {
  auto summarize = [&](int64_t k) {
    double* numbers = out + k * (groups + 2);
    rate_stats_medians(rates[k], weights, positions, offsets, weighted, groups, numbers);
    std::vector<double> bins(2 * num_bins);
    double line[2];
    int64_t slot = groups;
    for (const double* log_x : {log_updates[k], log_counts}) {
      const int64_t full = rate_stats_binned_fit(log_x, log_rates[k], weights, n, num_bins,
                                                 bins.data(), bins.data() + num_bins, line);
      numbers[slot++] = full > 0 ? line[0] : NAN;
    }
  };
  if (threads <= 1 || count <= 1) {  // no team at all: the telemetry process never starts one
    for (int64_t k = 0; k < count; ++k) summarize(k);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t k = 0; k < count; ++k) summarize(k);
}

// Histograms of `count` arrays (values[t]: sizes[t] values), each of its finite values in bins
// `width` wide on the multiples of width, each (limit - width, limit] (writer.histograms_summary),
// in one call (one a tag cost more in Python than in C++). Row t of out, kHistogramHeader +
// capacity doubles: min, max, how many finite values, first (= ceil(min / width)), bins, their
// sum, the sum of their squares; then at kHistogramHeader + k how many values v have
// ceil(v / width) == first + k. bins is 0 where no value is finite. Returns the most bins of
// any row; where that is more than `capacity`, no counts are written (the caller asks again
// with room for them).
int64_t rate_stats_histograms(int64_t count, const double* const* values, const int64_t* sizes,
                              double width, int64_t capacity, double* out) {
  const int64_t row = kHistogramHeader + capacity;
  int64_t most = 0;
  for (int64_t t = 0; t < count; ++t) {
    const double* v = values[t];
    const int64_t n = sizes[t];
    auto finite = [&](int64_t i) { return std::isfinite(v[i]); };
    const Range range = range_of(n, finite, [&](int64_t i) { return v[i]; });
    double* header = out + t * row;
    std::fill(header, header + kHistogramHeader, 0.0);
    if (range.count == 0) continue;
    const double first = std::ceil(range.low / width);
    const double last = std::ceil(range.high / width) - first + 1.0;
    const int64_t bins = last < 0x1p62 ? static_cast<int64_t>(last) : INT64_MAX;
    const Sums sums = sums_of(n, finite, [&](int64_t i) { return v[i]; });
    header[0] = range.low, header[1] = range.high, header[2] = static_cast<double>(range.count);
    header[3] = first, header[4] = static_cast<double>(bins);
    header[5] = sums.sum, header[6] = sums.squares;
    most = std::max(most, bins);
  }
  if (most > capacity) return most;
  // a block's bins first, in a loop of vector divisions (a division a value, one at a time,
  // was most of the cost), then counted in kLanes interleaved tallies (neighbouring values
  // mostly share a bin, and with one tally each count waited for the last)
  int64_t bin[kBlock];
  std::vector<int64_t> tally;
  for (int64_t t = 0; t < count; ++t) {
    double* header = out + t * row;
    const int64_t bins = static_cast<int64_t>(header[4]);
    if (bins == 0) continue;
    const double first = header[3], last = static_cast<double>(bins);
    tally.assign(bins * kLanes, 0);
    for (int64_t start = 0; start < sizes[t]; start += kBlock) {
      const int64_t size = std::min(kBlock, sizes[t] - start);
      const double* block = values[t] + start;
      for (int64_t i = 0; i < size; ++i) {
        // & where && would branch: a branch in the loop keeps it from vector instructions
        const double k = std::ceil(block[i] / width) - first;
        const bool counted = std::isfinite(block[i]) & (k >= 0.0) & (k < last);
        bin[i] = counted ? static_cast<int64_t>(k) * kLanes + i % kLanes : -1;
      }
      for (int64_t i = 0; i < size; ++i) {
        if (bin[i] >= 0) ++tally[bin[i]];
      }
    }
    double* counts = header + kHistogramHeader;
    for (int64_t k = 0; k < bins; ++k) {
      const auto lanes = tally.begin() + k * kLanes;
      counts[k] = static_cast<double>(std::accumulate(lanes, lanes + kLanes, int64_t{0}));
    }
  }
  return most;
}

}  // extern "C"
