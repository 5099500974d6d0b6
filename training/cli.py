"""What every training command shares: user mistakes end with a clear line, not a traceback."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

# TensorFlow's C++ start-up chatter (CUDA probing on a CPU machine, oneDNN notices) buries
# the progress bars; keep warnings and errors only. Set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras warns that fit() ignores shuffle=True for a tf.data pipeline: ours shuffle themselves.
warnings.filterwarnings("ignore", message="`shuffle=True` was passed")


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, unknown backbone): say what to do."""


def run_cli(main: Callable[[], None]) -> int:
    """Run `main`; report a UserError as `error: ...` with exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
