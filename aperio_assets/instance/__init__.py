"""Dagster instance plumbing for deployments (what ``dagster.yaml`` names by module and class), apart
from the definitions: nothing in the library or the code location imports it."""
