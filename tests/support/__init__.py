"""Helpers shared by the test suites: real emulator and server processes."""
