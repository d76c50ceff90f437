"""The examples in the docstrings of the main entry points run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["hybridcert.certificate.gaussian", "hybridcert.certificate.hybrid",
           "hybridcert.certificate.frontier", "hybridcert.smoothing", "hybridcert.decision",
           "hybridcert.config", "hybridcert.runner", "hybridcert.calculator",
           "hybridcert._format", "hybridcert.denoisers", "hybridcert.spec"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
