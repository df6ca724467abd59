"""Benchmarks of the library: throughput, compile time and memory of every workload.

Not imported by the library itself. ``config`` holds the settings (``BenchmarkConfig``,
``WORKLOADS``), ``workloads`` what each workload compiles, ``runner`` the timing loop and the
written results (``run``, ``benchmark``), ``report`` the markdown, ``overlap`` a study stage's
wall time against its compiled and host work alone, ``torch_peers`` the optional PyTorch
comparison and ``lime_peer`` the optional comparison with the lime package.
``experiments/benchmark.py`` is the binary.
"""
