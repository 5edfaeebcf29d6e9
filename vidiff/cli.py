"""Old path of `vidiff.app.cli`, kept for one release (`python -m vidiff.cli` still runs the command line)."""

import importlib
import sys
import warnings

if __name__ == "__main__":
    from vidiff.app.cli import main

    sys.exit(main())
warnings.warn("vidiff.cli moved to vidiff.app.cli; the old path goes in the next release", DeprecationWarning,
              stacklevel=2)
sys.modules[__name__] = importlib.import_module("vidiff.app.cli")
