"""Run every notebook in nbs/ through nbdev's own runner: one pytest test per notebook.

Notebooks and folders whose names start with `_` are scratch work and are skipped, as nbdev does.
Cells flagged with a `tst_flags` flag from settings.ini (`#| notest`, `#| slow`) are skipped too.

CI (.ci/run) builds the docs site first, which executes every notebook the same way (every cell but flagged ones, the
notebook's folder as working directory; a failing cell fails the build). When `KVSPEC_SITE_DIR` points at that build and its
`executed.json` records the same tree (every tracked and untracked file's content, the Python and package versions) and the
same skipped flags, a notebook it executed is reported as skipped with that reason instead of being run a second time.
Set `KVSPEC_RERUN_NOTEBOOKS=1` (or leave `KVSPEC_SITE_DIR` unset, as on a developer's machine) to run them all regardless.
"""
import json, os, sys
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb")
                   if not any(part.startswith(("_", ".")) for part in p.relative_to(NBS).parts))
SKIP_FLAGS = get_config().tst_flags.split()


def executed_by_site_build():
    "Notebooks (relative to nbs/) the site build at KVSPEC_SITE_DIR executed without error in exactly this tree"
    site = os.environ.get("KVSPEC_SITE_DIR")
    if not site or os.environ.get("KVSPEC_RERUN_NOTEBOOKS") == "1": return {}
    try: record = json.loads((Path(site) / "executed.json").read_text())
    except (OSError, ValueError): return {}
    sys.path.insert(0, str(ROOT / "tools"))
    from build_site import tree_fingerprint
    if record.get("tree") != tree_fingerprint() or sorted(record.get("skipped_flags", [])) != sorted(SKIP_FLAGS): return {}
    return record.get("notebooks", {})


EXECUTED = executed_by_site_build()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(notebook):
    rel = notebook.relative_to(NBS).as_posix()
    if rel in EXECUTED:
        pytest.skip(f"executed without error by tools/build_site.py in this same tree ({EXECUTED[rel]:.0f}s; "
                    f"KVSPEC_RERUN_NOTEBOOKS=1 runs it again)")
    ok, seconds = run_notebook(notebook, skip_flags=SKIP_FLAGS, showerr=True)
    assert ok, f"{rel} failed (see the traceback above)"
