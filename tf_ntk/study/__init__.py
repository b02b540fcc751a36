"""The reproduction study: the paper's three claims (C1 as C1a and C1b, C2, C3) tested end to end by one command
(`tf-ntk-reproduce`).

Modules, in dependency order:
  presets    the study's configurations (`PRESETS`: smoke, quick, digits, digits-resnet, cifar10, …)
  sweep      jobs, dependency order, the executors (local pool, print-commands) and resume by outputs
  ray_sweep  the Ray executor: one Ray task per job, retries on worker loss
  plan       a preset as the sweep's job graph, family by family, and its cost model
  collect    the sweep's outputs read back, keyed by run (`Collected`)
  stats      seed statistics: t intervals, the two-level bootstrap, Holm, power
  claims     the pre-registered primary endpoints and the descriptive rows, decided
  figures    the report's figures (matplotlib)
  board      the study's TensorBoard log directory
  report     report.md and results.csv from the collected outputs and the claims' verdicts
"""
