"""Packaging for mvector (metadata lives in pyproject.toml; this file keeps `pip install -e .` working on old pips)."""

from setuptools import setup

setup()
