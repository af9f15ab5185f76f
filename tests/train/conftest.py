"""Makes `tiny_config` (the pipeline tests' experiment config) importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
