#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb as GitHub markdown, without Quarto (what `nbdev_readme` does with it).

    python tools/make_readme.py            # execute nbs/index.ipynb and (re)write README.md
    python tools/make_readme.py --check    # exit 1 if README.md is not what would be written
    python tools/make_readme.py --no-exec  # use the notebook's stored outputs

The notebook goes through the same nbdev processing as the docs site (tools/build_site.py: hidden and
exported cells dropped, show_doc rendered, Quarto cell options applied), then nbconvert's markdown
exporter. Figures, if any, are written to `index_files/` next to README.md (as nbdev does).

Figures are compared by what they show, not by their bytes (`figure_difference`): matplotlib's anti-aliasing differs
between machines in a few edge pixels by a few levels, so `--check` decodes both PNGs and passes them when they have the
same size and at most a tiny fraction of their pixels differ by more than a few levels; a figure that still shows the
same thing is not rewritten either, so a re-render on another machine does not churn the committed one.
"""
import argparse, difflib, io, os, re, sys
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


# Measured on the README's figure (1232 x 788 = 970,816 pixels, matplotlib 3.11, Agg), as the largest channel difference
# of a pixel, in levels of 255. Rendering noise: another machine's re-render, 2 pixels by 3 levels; this machine's, 2 by 1;
# the lines moved by a relative 1e-5 of their x (far beyond float rounding), 1,705 pixels by at most 2; by 1e-4 (about
# 0.02 pixel), at most 6. Real changes, pixels off by more than 8 levels: one letter of a 7-point legend label ("-it-" ->
# "-It-") 28, one digit of the title 228, one data point moved 1,732, line width 1.5 -> 1.6 1,920, anti-aliasing off 13,283.
PIXEL_LEVELS = 8         # a pixel differs when a channel is off by more than this (of 255): above all rendering noise seen
PIXEL_FRACTION = 1e-5    # the figure differs when more than this fraction of its pixels do (9 of the README's): below one letter


def decode_png(data: bytes):
    "The pixels of image `data` as an int16 (height, width, 4) RGBA array (Pillow, which matplotlib depends on)"
    import numpy as np
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im: return np.asarray(im.convert('RGBA'), dtype=np.int16)


def figure_difference(old: bytes, new: bytes, levels: int = PIXEL_LEVELS, fraction: float = PIXEL_FRACTION) -> str | None:
    "Why image `new` does not show what `old` shows, or None when it does (same size, at most `fraction` of pixels off by more than `levels`)"
    if old == new: return None
    from PIL import UnidentifiedImageError
    try: a, b = decode_png(old), decode_png(new)
    except (UnidentifiedImageError, OSError, ValueError) as e: return f'not a decodable image, bytes differ ({type(e).__name__})'
    if a.shape != b.shape: return f'size {a.shape[1]}x{a.shape[0]} -> {b.shape[1]}x{b.shape[0]}'
    off, total = int((abs(a - b).max(axis=-1) > levels).sum()), a.shape[0] * a.shape[1]
    allowed = int(fraction * total)
    return None if off <= allowed else f'{off:,} of {total:,} pixels differ by more than {levels}/255 (allowed: {allowed:,})'


def stale_figures(files: dict, out_dir) -> dict:
    "{file name: why} for each figure in `files` ({relative name: bytes}) that `out_dir` lacks or holds showing something else"
    stale = {}
    for f, b in files.items():
        p = Path(out_dir) / f
        why = figure_difference(p.read_bytes(), b) if p.exists() else 'missing'
        if why: stale[f] = why
    return stale


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
        stale = stale_figures(files, out.parent)
        if old == text and not stale: return print(f'{out.name} is up to date.')
        sys.stdout.writelines(list(difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(out), 'generated'))[:200])
        if stale: print('Figures out of date: ' + ', '.join(f'{f} ({why})' for f, why in stale.items()))
        sys.exit(f'{out.name} is out of date: run `python tools/make_readme.py` and commit the result.')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding='utf-8')
    stale = stale_figures(files, out.parent)
    for f, b in files.items():
        if f not in stale: continue  # it shows what the file there shows: keep that file's bytes
        (out.parent / f).parent.mkdir(parents=True, exist_ok=True)
        (out.parent / f).write_bytes(b)
    print(f'Wrote {out}' + (f' and {len(stale)} of {len(files)} figure(s) in {out.parent / next(iter(files)).split("/")[0]} '
                            f'(the others show what the committed files show)' if files else ''))


if __name__ == '__main__': main()
