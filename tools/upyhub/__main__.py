import sys

from upyhub.cli import main

sys.exit(main())
