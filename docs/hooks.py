"""MkDocs hooks: the docstrings' Sphinx roles (``:func:`name```) shown as the code they name.

The docstrings are read in the terminal (``help()``) as often as on the site, so they keep
the roles Python's own documentation uses; here only the role's name is dropped.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(<code>)~?")


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(r"\1", html)
