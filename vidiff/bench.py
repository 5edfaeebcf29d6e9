"""Old path of `vidiff.evaluation.bench`, kept for one release: importing it warns once and gives that module."""

import importlib
import sys
import warnings

warnings.warn("vidiff.bench moved to vidiff.evaluation.bench; the old path goes in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vidiff.evaluation.bench")
