"""Reading a study's trial states while a driver in another process runs it, every few tenths
of a second, through autoopt's own storage for the URL (``open_storage`` keeps one per URL and
process). ``optuna.load_study(storage=url)`` makes a new engine and checks the schema on every
call: 47 ms of CPU against 6 ms (SQLite, 2 cores, 2026-12-07), about a sixth of a core at 0.3 s
a poll, taken from the driver being waited for."""

from __future__ import annotations

import optuna

from autoopt.storage import open_storage


def trial_states(url: str, name: str) -> list[str]:
    """The state names of study ``name``'s trials; [] while the study or its database does not
    exist yet."""
    try:
        return [t.state.name for t in optuna.load_study(study_name=name, storage=open_storage(url)).trials]
    except Exception:  # noqa: BLE001 - not created yet (or being created by the driver)
        return []
