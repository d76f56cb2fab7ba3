#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb as GitHub markdown, without Quarto (what `nbdev_readme` does with it).

    python tools/make_readme.py            # execute nbs/index.ipynb and (re)write README.md
    python tools/make_readme.py --check    # exit 1 if README.md is not what would be written
    python tools/make_readme.py --no-exec  # use the notebook's stored outputs

The notebook goes through the same nbdev processing as the docs site (tools/build_site.py: hidden and
exported cells dropped, show_doc rendered, Quarto cell options applied), then nbconvert's markdown
exporter. Figures, if any, are written to `index_files/` next to README.md (as nbdev does).
"""
import argparse, difflib, os, re, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_site import ROOT, find_notebooks, page_path, process_notebook, to_nbformat  # noqa: E402


def render_readme(nb_path, execute=True, flags=(), out_dir=ROOT):
    "Returns (markdown text, {relative file name: bytes}) for `nb_path`, its relative links made relative to `out_dir`"
    from nbconvert import MarkdownExporter
    from traitlets.config import Config
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    nb, fm = process_notebook(nb_path, execute, flags)
    node = to_nbformat(nb)
    node.metadata.setdefault('language_info', {}).setdefault('name', 'python')
    cfg = Config()
    cfg.TagRemovePreprocessor.update(enabled=True, remove_input_tags={'remove_input'}, remove_all_outputs_tags={'remove_output'})
    files_dir = f'{Path(nb_path).stem}_files'
    body, res = MarkdownExporter(config=cfg).from_notebook_node(node, resources=dict(output_files_dir=files_dir))
    body = re.sub(r'<style[^>]*>.*?</style>\s*', '', body, flags=re.DOTALL)  # GitHub drops styles (pandas tables)
    head = f"# {fm.get('title', Path(nb_path).stem)}\n\n" + (f"> {fm['description']}\n\n" if fm.get('description') else '')
    text = head + body
    from nbdev.config import get_config
    cfg, nbs = get_config(), ROOT / 'nbs'
    pages = {page_path(f, nbs).as_posix(): f.relative_to(nbs).as_posix() for f in find_notebooks(nbs)}
    site = (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/')
    if site:  # nbdev's links to the published docs (not published yet): to the notebook, which GitHub renders
        text = re.sub(r'\]\(' + re.escape(site) + r'/([^)#\s]+)(#[^)\s]*)?\)', lambda m: f'](' + pages[m[1]] + ')' if m[1] in pages else m[0], text)
    rel = os.path.relpath(Path(nb_path).resolve().parent, Path(out_dir).resolve()).replace(os.sep, '/')
    if rel != '.':  # [spec](01_spec.ipynb) in nbs/index.ipynb is nbs/01_spec.ipynb from README.md (GitHub renders notebooks)
        text = re.sub(r'\]\((?![\w+.-]+:|#|/|' + re.escape(files_dir) + r'/)([^)\s]+)\)', lambda m: f'](' + rel + '/' + m[1] + ')', text)
    text = '\n'.join(l.rstrip() for l in text.splitlines())
    text = re.sub(r'\n{3,}', '\n\n', text).strip() + '\n'
    return text, dict(res.get('outputs', {}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--check', action='store_true', help='exit 1 if README.md (or its figures) would change')
    ap.add_argument('--no-exec', action='store_true', help="render the notebook's stored outputs")
    ap.add_argument('--nb', default=str(ROOT / 'nbs' / 'index.ipynb'), help='notebook to render (default nbs/index.ipynb)')
    ap.add_argument('--out', default=str(ROOT / 'README.md'), help='markdown file to write (default README.md)')
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    text, files = render_readme(Path(a.nb).resolve(), execute=not a.no_exec, out_dir=out.parent)
    if a.check:
        old = out.read_text(encoding='utf-8') if out.exists() else ''
        stale = [f for f, b in files.items() if not (out.parent / f).exists() or (out.parent / f).read_bytes() != b]
        if old == text and not stale: return print(f'{out.name} is up to date.')
        sys.stdout.writelines(list(difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(out), 'generated'))[:200])
        if stale: print('Figures out of date: ' + ', '.join(stale))
        sys.exit(f'{out.name} is out of date: run `python tools/make_readme.py` and commit the result.')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding='utf-8')
    for f, b in files.items():
        (out.parent / f).parent.mkdir(parents=True, exist_ok=True)
        (out.parent / f).write_bytes(b)
    print(f'Wrote {out}' + (f' and {len(files)} figure(s) in {out.parent / next(iter(files)).split("/")[0]}' if files else ''))


if __name__ == '__main__': main()
