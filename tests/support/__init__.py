"""Helpers shared by the tests (plain functions and classes; fixtures live in the conftest.py files)."""
