"""metagrad's benchmark suite: asv benchmarks, pytest-benchmark suites, the sweep
runner (``metagrad sweep``) and adapters for peer libraries (``python -m bench.peers``).

Shared pieces, one job each:

* :mod:`bench.problems` — the benchmark workloads (sinusoid MLP, 5-way 1-shot conv net);
* :mod:`bench.variants` — method names (and variants such as ``maml-trajectory``) → methods;
* :mod:`bench.exact` — dense float64 exact targets for the error columns;
* :mod:`bench.measure` — time, peak memory and the cost-model prediction.

See ``bench/README.md`` for how to run each part.
"""
