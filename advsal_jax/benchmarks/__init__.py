"""Benchmarks of the library: throughput, compile time and memory of every workload.

Not imported by the library itself. ``config`` holds the settings (``BenchmarkConfig``,
``WORKLOADS``), ``workloads`` what each workload compiles, ``runner`` the timing loop and the
written results (``run``, ``benchmark``), ``report`` the markdown and ``torch_peers`` the
optional PyTorch comparison. ``experiments/benchmark.py`` is the binary.
"""
