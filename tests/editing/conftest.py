"""Fixtures shared by this folder's tests."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("cv2")
from suite.pipeline import InDomainPipeline


@pytest.fixture(scope="module")
def parts(tiny_parts):
    return tiny_parts


@pytest.fixture(scope="module")
def pipe(parts):
    return InDomainPipeline(**{**parts, "scheduler": copy.deepcopy(parts["scheduler"])})  # own scheduler state
