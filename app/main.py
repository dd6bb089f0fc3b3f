"""`python -m app.main ...` from a checkout: the same as `personalize app ...` (the code is personalize.app.main)."""

import sys

from personalize.app.main import build_parser, main, make_app  # noqa: F401  (the names tests and users import)

if __name__ == "__main__":
    sys.exit(main())
