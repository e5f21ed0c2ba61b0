"""``python -m streamer.bench latency|compare ...`` is ``cardiostream bench ...``."""

import sys

from streamer.bench import main

sys.exit(main())
