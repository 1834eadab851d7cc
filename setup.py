"""Packaging entry point. Metadata lives in pyproject.toml; this file keeps `python setup.py ...` and
legacy editable installs working."""

from setuptools import setup

setup()
