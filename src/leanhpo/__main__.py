import sys

from leanhpo.cli import main

sys.exit(main())
