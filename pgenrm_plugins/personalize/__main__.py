import sys

from pgenrm_plugins.personalize.run import main

sys.exit(main())
