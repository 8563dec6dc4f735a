"""The model comparison behind ``python -m interest_migration compare``.

* :mod:`~interest_migration.benchmark.protocols`: the ``repeats`` and ``novel`` protocols and
  the data each one reads;
* :mod:`~interest_migration.benchmark.runner`: one model run in its own process, its result
  file, and reuse of finished runs;
* :mod:`~interest_migration.benchmark.per_user`: confidence intervals, paired tests and drift
  buckets from per-user metrics;
* :mod:`~interest_migration.benchmark.report`: ``results.csv``, ``results.md``,
  ``results.json`` and the plots.
"""
