"""Run every notebook in nbs/ through nbdev's own runner: one pytest test per notebook.

Notebooks and folders whose names start with `_` are scratch work and are skipped, as nbdev does.
Cells flagged with a `tst_flags` flag from settings.ini (`#| notest`, `#| slow`) are skipped too.
"""
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

NBS = Path(__file__).resolve().parent.parent / "nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb")
                   if not any(part.startswith(("_", ".")) for part in p.relative_to(NBS).parts))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(notebook):
    ok, seconds = run_notebook(notebook, skip_flags=get_config().tst_flags.split(), showerr=True)
    assert ok, f"{notebook.relative_to(NBS)} failed (see the traceback above)"
