"""The trainer (`edge-train`); needs the `train` extra: TensorFlow, matplotlib, Pillow.

TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when its C++ library loads, so it is set
here, before any trainer module imports TensorFlow: its INFO and WARNING start-up lines
would otherwise bury the trainer's own log. A value the user set is kept, and then
`edge-train` filters nothing (see trainer.cli).
"""

from __future__ import annotations

import os

TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
