"""The app moved into the package (`personalize.app`) so that an installed copy carries it; `python -m app.main`
from a checkout still starts it."""
