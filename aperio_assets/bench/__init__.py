"""Measurements of aperio's state operations (SPEC §11). Speed is measured here, never asserted in tests."""
