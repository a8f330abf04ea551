"""The names of the runtimes, importable without torch (the CLI checks names before loading it).

`bench_engine.runtimes.RUNTIMES` contains the runtimes themselves under these names, and a
test keeps the two in step.
"""

RUNTIME_NAMES = (
    "torch-eager",
    "torch-sparse-csr",
    "onnxruntime-cpu",
    "torch-eager-cuda",
    "onnxruntime-cuda",
    "torch-2:4-cuda",
)
# A sparse result counts as faster or slower than dense only beyond this ratio (5 %).
MEASURABLE_CHANGE = 0.05
# Runtimes that only published timings use (imported from timm's benchmark tables).
PUBLISHED_RUNTIMES = ("timm-benchmark",)
