"""`python -m saelign ...`: the command line, also as torchrun's module (`torchrun -m saelign ...`)."""

import sys

from saelign.cli import main

sys.exit(main())
