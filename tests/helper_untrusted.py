"""A module whose import has a visible effect: it writes the file $AUTOOPT_TEST_IMPORT_MARKER.

Stands in for code an attacker put behind a task path in a shared storage: tests check that
autoopt does not import it unless the user trusts it."""

import os
from pathlib import Path

if os.environ.get("AUTOOPT_TEST_IMPORT_MARKER"):
    Path(os.environ["AUTOOPT_TEST_IMPORT_MARKER"]).write_text("imported")


def payload(**kw):
    """Not a Task factory: even when trusted, autoopt must not call it."""
    Path(kw["marker"]).write_text("called")
