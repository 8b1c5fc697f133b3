"""The Python API behind the CLI: everything a command does, as a function.

:mod:`cnnzip.api.files` trains, loads, evaluates, inspects and times model files;
:mod:`cnnzip.api.deploy` exports them (ONNX, C, hls4ml) and measures them as deployed.
"""

from cnnzip.api.deploy import (bench_c_files, c_latency_us, compress_within, export_file,
                               fpga_resources)
from cnnzip.api.files import (bench_files, evaluate_file, folded_copy, input_record,
                              inspect_file, inspect_model, inspect_name, load_model,
                              train_baseline)
from cnnzip.budget import Budget
from cnnzip.metrics import bench_models, runtime_name
from cnnzip.pipeline import compress
from cnnzip.search import SearchConfig, run_search

__all__ = ["Budget", "SearchConfig", "bench_c_files", "bench_files", "bench_models",
           "c_latency_us", "compress", "compress_within", "evaluate_file", "export_file",
           "folded_copy", "fpga_resources", "input_record", "inspect_file", "inspect_model", "inspect_name",
           "load_model", "run_search", "runtime_name", "train_baseline"]
