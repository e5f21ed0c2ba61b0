"""``python -m streamer`` is the ``cardiostream`` command."""

import sys

from streamer.cli import main

sys.exit(main())
