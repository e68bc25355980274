"""Preference data sets: what the benchmarks, the training stages and the prototype builder read.

- `bench`: the PersonalRewardBench row format (`BenchRow`, `BenchData`, `load_bench`, `read_bench_rows`).
- `synthetic`: synthetic users with known latent preferences, written as PersonalRewardBench rows
  (and the `pgenrm data synth` command).
- `answer_bank`: the real answer content the synthetic answers are built from.
"""
