"""`python -m lungcls.cli`: the same as the `lungcls` command."""

import sys

from lungcls.cli import main

sys.exit(main())
