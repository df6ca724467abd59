"""Benchmarks of the library: throughput, compile time and memory of every workload.

Not imported by the library itself. ``config`` holds the settings (``BenchmarkConfig``,
``WORKLOADS``), ``workloads`` what each workload compiles (``study_pipeline`` study 000's
whole pipeline, ``training_steps`` the training steps), ``runner`` the timing loop and the
written results (``run``, ``benchmark``), ``report`` the markdown, ``overlap`` a study stage's
wall time against its compiled and host work alone, ``torch_peers`` the optional PyTorch
comparison (``torch_pipeline`` study 000's pipeline with the PyTorch stack,
``torch_training`` the PyTorch training steps) and ``lime_peer`` the optional comparison with
the lime package.
``experiments/benchmark.py`` is the binary.
"""
