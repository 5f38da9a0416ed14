"""`python -m supervisor` is the `corral` command."""

import sys

from .cli import main

sys.exit(main())
