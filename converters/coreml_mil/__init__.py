"""Reference executor for saved Core ML ML Programs (.mlpackage), in NumPy, that runs on Linux.

`MLModel.predict` needs macOS; this reads the package with coremltools' own readers and
evaluates the main function op by op, so an export's numerics can be checked anywhere:

    executor = MilExecutor.from_mlpackage("model.mlpackage")
    outputs = executor.run({executor.input_names[0]: image})

Importing this package imports neither coremltools nor torch.
"""
from .errors import BadInputError, CorruptModelError, MilExecutorError, UnsupportedOpError
from .executor import MilExecutor
from .loader import import_coremltools
from .ops import OP_TABLE

SUPPORTED_OPS = frozenset(OP_TABLE) | {"const"}

__all__ = [
    "BadInputError",
    "CorruptModelError",
    "MilExecutor",
    "MilExecutorError",
    "OP_TABLE",
    "SUPPORTED_OPS",
    "UnsupportedOpError",
    "import_coremltools",
]
