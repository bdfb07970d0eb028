"""``python -m data_pipeline`` = ``ringmoe-data``."""

import sys

from data_pipeline.cli import main

sys.exit(main())
