import sys

from personalize.app.main import main

sys.exit(main())
