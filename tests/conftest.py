"""Shared fixtures: the Ductape emulator on loopback (tests/emulator_fixture.py)."""

pytest_plugins = ["tests.emulator_fixture"]
