"""Old path of `vidiff.data.io`, kept for one release: importing it warns once and gives that module."""

import importlib
import sys
import warnings

warnings.warn("vidiff.io moved to vidiff.data.io; the old path goes in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vidiff.data.io")
