"""Test suite set-up: fixtures live in tests/support/ modules, registered here."""

pytest_plugins: list[str] = [
    "tests.support.moto",
    "tests.support.proxy",
    "tests.support.packs",
    "tests.support.rgw",
    "tests.support.postgres",
]

#: The export lane needs torch; it runs in .venv-export through tests/test_export_lane.py.
collect_ignore = ["export"]
