"""`python -m service.batch`: see cli.py."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter; set before it is imported

from .cli import main  # noqa: E402

sys.exit(main())
