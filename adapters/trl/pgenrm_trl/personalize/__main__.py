import sys

from pgenrm_trl.personalize.run import main

sys.exit(main())
