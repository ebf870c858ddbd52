"""`python -m vocabprune`: the same command as `vocabprune`."""

import sys

from vocabprune.cli.main import main

sys.exit(main())
