"""The BLAS thread limits: threadpoolctl's, with the libraries looked for once."""

from __future__ import annotations

import sys

from threadpoolctl import threadpool_info

from paragrad.core import blas


def test_blas_limits_find_the_libraries_again_only_after_an_import(monkeypatch):
    # Prepare
    monkeypatch.setattr(blas, "_controller", None)
    # Execute
    with blas.blas_threads(1):
        inside = {info["num_threads"] for info in threadpool_info()}
    first = blas._controller
    blas.blas_threads(1).restore_original_limits()
    again = blas._controller
    monkeypatch.setitem(sys.modules, "paragrad_test_new_module", object())
    blas.blas_threads(1).restore_original_limits()
    # Assert: the limit held; the libraries looked up once until a module was imported
    assert inside == {1}
    assert again is first and blas._controller is not first
