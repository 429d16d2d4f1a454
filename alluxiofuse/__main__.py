"""``python -m alluxiofuse`` is the ``alluxiofuse`` command."""

import sys

from alluxiofuse.cli import main

sys.exit(main())
