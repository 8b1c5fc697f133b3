"""The Python API behind the CLI: everything a command does, as a function, and the names
(choices, option types, errors) the CLI offers. The CLI imports nothing else.

:mod:`cnnzip.api.compress` compresses (within a budget or not: budgets are routed there
only); :mod:`cnnzip.api.files` trains, loads, evaluates, inspects and times model files;
:mod:`cnnzip.api.deploy` exports them (ONNX, C, hls4ml) and measures them as deployed.
"""

from cnnzip import __version__
from cnnzip.api.compress import compress, compress_within
from cnnzip.api.deploy import (FORMATS as EXPORT_FORMATS, bench_c_files, c_latency_us,
                               export_file, fpga_resources)
from cnnzip.api.environment import environment
from cnnzip.api.files import (bench_files, evaluate_file, folded_copy, import_model,
                              input_record, inspect_file, inspect_model, inspect_name, load_model,
                              train_baseline)
from cnnzip.budget import Budget
from cnnzip.data import DATASET_NAMES, dataset_info
from cnnzip.distributed import init_from_env as init_distributed
from cnnzip.distributed import rank
from cnnzip.errors import ArgumentError, CnnzipError
from cnnzip.export.c.costmodel import POLICIES as KERNEL_POLICIES
from cnnzip.export.hls.project import IO_TYPES as HLS_IO_TYPES
from cnnzip.export.hls.project import STRATEGIES as HLS_STRATEGIES
from cnnzip.export.hls.project import HlsOptions
from cnnzip.export.measure.toolchain import TARGETS as C_TARGETS
from cnnzip.metrics import bench_models, runtime_name
from cnnzip.models import ZOO
from cnnzip.recipes import builtin_names as recipe_names
from cnnzip.search import SearchConfig, run_search
from cnnzip.train import TrainConfig

__all__ = ["C_TARGETS", "DATASET_NAMES", "EXPORT_FORMATS", "HLS_IO_TYPES", "HLS_STRATEGIES",
           "KERNEL_POLICIES", "ZOO", "ArgumentError", "Budget", "CnnzipError", "HlsOptions",
           "SearchConfig", "TrainConfig", "__version__", "bench_c_files", "bench_files",
           "bench_models", "c_latency_us", "compress", "compress_within", "dataset_info",
           "environment", "evaluate_file", "export_file", "folded_copy", "fpga_resources",
           "import_model", "init_distributed", "input_record", "inspect_file", "inspect_model",
           "inspect_name", "load_model", "rank", "recipe_names", "run_search", "runtime_name",
           "train_baseline"]
