"""Services used only by the benchmarks (``SVC_PACKAGES=bench.svc_bench``)."""
