"""Measurements of aperio's state operations (DESIGN §11). Speed is measured here, never asserted in tests."""
