"""metagrad's benchmark suite, installed as ``metagrad_bench``: asv benchmarks,
pytest-benchmark suites, the sweep runner (``metagrad sweep``) and adapters for peer
libraries (``python -m metagrad_bench.peers``).

Shared pieces, one job each:

* :mod:`metagrad_bench.variants`: method names (and variants such as
  ``maml-trajectory``) → configured methods;
* :mod:`metagrad_bench.measure`: time, peak memory and the cost-model prediction.

The workloads are ``metagrad.problems``; the exact targets of the error columns come
from the oracle through ``metagrad.verify.exact_target``. See ``bench/README.md``.
"""
