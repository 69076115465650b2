"""`python -m gaudi_train` is `gaudi3-train`."""

import sys

from gaudi_train.cli import main

sys.exit(main())
