"""``python -m dfm_data``."""

import sys

from dfm_data.cli import main

sys.exit(main())
