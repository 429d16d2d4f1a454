"""``python -m alluxiofuse`` is the ``alluxiofuse`` command."""

import sys

from alluxiofuse.cli.main import main

sys.exit(main())
