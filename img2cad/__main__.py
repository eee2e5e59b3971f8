"""``python -m img2cad predict ...`` / ``serve``: the same as the ``img2cad`` command."""
import sys

from img2cad.cli import main

sys.exit(main())
