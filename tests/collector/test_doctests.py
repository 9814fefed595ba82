"""The collector's doctests (pytest's testpaths cover tests/ and agent/, not collector/)."""

import doctest
import importlib

import pytest

MODULES = ["topics", "check", "chain", "schema", "gaps", "receipts", "report", "cli", "store", "intake"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(f"collector.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
