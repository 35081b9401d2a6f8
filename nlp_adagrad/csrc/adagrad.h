// Adagrad's row step, the per-row counters and telemetry's read of the rates on raw rows
// (adagrad.cpp): what the Python bindings `adagrad_rows_` / `count_rows_` / `adagrad_rates`
// run, and what classify_steps.cpp runs per step.
#pragma once

#include <cstdint>

namespace adagrad {

// For each rows[i] (sorted; a repeat of the previous id is skipped) with gradient row
// values[i]: G[r] += g * g; w[r] += alpha * g / (sqrt(G[r]) + eps). Split over torch's threads.
// With `updates` and `last_step` (else null) it also counts the rows, as `count_rows`, in the
// same pass over them: one wait for each scattered row's memory instead of two; and with
// `fresh`, adds to *fresh the rows below `fresh_limit` updated for the first time.
void step_rows(float* weight, float* sum, const int64_t* rows, int64_t n, int64_t dim,
               const float* values, float alpha, float eps, int32_t* updates = nullptr,
               int32_t* last_step = nullptr, int64_t step = 0, int64_t* fresh = nullptr,
               int64_t fresh_limit = 0);

// updates[r] += 1 and last_step[r] = step, once per distinct row of the sorted `rows`; returns
// how many rows below `fresh_limit` that updated for the first time.
int64_t count_rows(int32_t* updates, int32_t* last_step, const int64_t* rows, int64_t n,
                   int64_t step, int64_t fresh_limit = 0);

// Telemetry's effective rates of the n `rows` (adagrad.cpp: adagrad_rates, the formula): into
// rate[i], or rate[i * dim + j] with `per_coordinate`, and each row's update count into count[i]
// (`count` may be null). With an earlier read of the same rows (`before_rate`, `before_count`,
// not per coordinate), a row whose count has not moved since keeps that read's rate.
void read_rates(const float* sum, const int32_t* updates, const int32_t* last_step,
                int64_t num_rows, int64_t dim, const int64_t* rows, int64_t n, double lr,
                double lr_decay, double eps, bool per_coordinate, double* rate, int32_t* count,
                const double* before_rate = nullptr, const int32_t* before_count = nullptr);

}  // namespace adagrad
