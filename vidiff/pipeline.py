"""Old path of `vidiff.pipelines.pipeline`, kept for one release: importing it warns once and gives that module."""

import importlib
import sys
import warnings

warnings.warn("vidiff.pipeline moved to vidiff.pipelines.pipeline; the old path goes in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vidiff.pipelines.pipeline")
