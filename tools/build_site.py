#!/usr/bin/env python
"""Build the kvspec docs as a static HTML site without Quarto.

    python tools/build_site.py [--out _site] [--nbs nbs] [--no-exec] [--flags slow] [--workers N]

Each notebook under `nbs/` (skipping `_`/`.`-prefixed files and folders) goes through nbdev's own docs
processors (`FilterDefaults`: frontmatter, `#| hide`, `#| export`, auto `show_doc`, ...), with nbdev's
`exec_show_docs` swapped for a run of *every* code cell in one execnb `CaptureShell` whose working directory
is the notebook's folder (like `nbdev_test`: cells flagged with settings.ini `tst_flags` are skipped unless
passed with `--flags`, `#| eval: false` cells never run; skipped cells keep their stored outputs). The
Quarto cell options nbdev leaves behind (`echo`, `output`, `include`) are applied, and nbconvert's
JupyterLab HTML template renders each page with a sidebar. Every page is self-contained (inline CSS,
figures as data: URIs). `--no-exec` renders stored outputs (only `show_doc` cells run, as in `nbdev_docs`).
A notebook that fails to execute fails the build, naming the notebook and the cell.
"""
import argparse, html, json, os, re, shutil, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {'': '', 'models': 'Models', 'experiments': 'Experiments'}  # sidebar order; other folders follow


class NotebookError(Exception): pass


def find_notebooks(nbs):
    "Notebooks under `nbs`, skipping `_`/`.`-prefixed files and folders (as nbdev and Quarto do)"
    return sorted(p for p in Path(nbs).rglob('*.ipynb')
                  if not any(o.startswith(('_', '.')) for o in p.relative_to(nbs).parts))


def page_path(nb, nbs):
    "nbs/00_config.ipynb -> config.html, nbs/models/gemma3.ipynb -> models/gemma3.html (nbdev's naming)"
    rel = Path(nb).relative_to(nbs)
    return rel.with_name(re.sub(r'^\d+[a-zA-Z0-9]*_', '', rel.name.lower())).with_suffix('.html')


def process_notebook(path, execute=True, flags=()):
    "nbdev docs processing of notebook `path`, executing it if `execute`; returns (nb, frontmatter)"
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell, format_exc
    from fastcore.basics import str2bool
    from nbdev.config import get_config
    from nbdev.process import NBProcessor, Processor
    from nbdev.processors import FilterDefaults, exec_show_docs, _do_eval
    path = Path(path).resolve()
    skip = set(get_config().get('tst_flags', '').split()) - set(flags)

    class exec_all(Processor):
        "Run every code cell in one shell, in the notebook's folder (replaces nbdev's `exec_show_docs`)"
        def begin(self):
            self.k = CaptureShell(path)
            self.k.run_cell('from nbdev.showdoc import show_doc')
            self.only_docs = str2bool(getattr(self.nb, 'frontmatter_', {}).get('skip_exec', False))
        def __call__(self, cell):
            if cell.cell_type != 'code' or not cell.source.strip() or 'nbdev_export(' in cell.source: return
            d = cell.directives_ or {}
            if d.get('eval:', [''])[0].lower() == 'false' or skip & d.keys(): return
            if self.only_docs and not _do_eval(cell): return
            cell.outputs = []
            cwd = os.getcwd()
            os.chdir(path.parent)
            try: self.k.cell(cell)
            finally: os.chdir(cwd)
            if self.k.exc:
                tb = ''.join(format_exc(self.k.exc))
                raise NotebookError(f'{path}: cell {cell.get("n_", "?")} raised {self.k.exc!r}\n{tb}\nCell source:\n{cell.source}')

    nb = read_nb(path)
    for i, c in enumerate(nb.cells): c['n_'] = i + 1  # 1-based cell number in the .ipynb, for error messages
    os.environ['IN_TEST'] = '1'  # as nbdev_test and nbdev's docs processing do
    procs = FilterDefaults().procs()
    if execute: procs = [exec_all if p is exec_show_docs else p for p in procs]
    NBProcessor(nb=nb, procs=procs).process()
    return nb, dict(getattr(nb, 'frontmatter_', {}) or {})


_re_opt = re.compile(r'^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')
_re_div = re.compile(r'^:::+\s*(\{[^}]*\}|[\w-]+)?\s*$', re.MULTILINE)

def _md(s):
    "Quarto-only markdown to plain HTML/markdown: `::: {.cls}` fenced divs, `{target=...}` link attributes"
    def div(m):
        if not m.group(1): return '\n</div>\n'
        cls = re.findall(r'\.([\w-]+)', m.group(1)) if m.group(1).startswith('{') else [m.group(1)]
        return '\n<div class="%s">\n' % ' '.join(['callout'] * any(c.startswith('callout') for c in cls) + cls)
    s = re.sub(r'\[([^\]]*)\]\(([^)\s]*)\)\{((?:\s*[\w-]+="[^"]*")+)\s*\}', r'<a href="\2" \3>\1</a>', _re_div.sub(div, s))
    return re.sub(r'(\]\([^)\s]*\))\{[^}]*\}', r'\1', s)  # other pandoc attributes: dropped


def to_nbformat(nb):
    "Processed nbdev notebook -> nbformat node, applying the Quarto cell options nbdev leaves in the source"
    import nbformat
    nb = json.loads(json.dumps({k: v for k, v in nb.items() if not k.endswith('_')}, default=lambda o: None))
    nb['metadata'].pop('widgets', None)
    cells = []
    for c in nb['cells']:
        c = {k: v for k, v in c.items() if not k.endswith('_')}
        if c['cell_type'] == 'raw': continue  # the frontmatter
        if c['cell_type'] == 'markdown': c['source'] = _md(c['source'])
        if c['cell_type'] == 'code':
            lines, opts = c['source'].splitlines(), {}
            while lines and _re_opt.match(lines[0]):
                k, v = _re_opt.match(lines.pop(0)).groups()
                opts[k] = v.strip('"\'').lower()
            c['source'] = '\n'.join(lines).strip()
            if opts.get('include') == 'false': continue
            tags = c.setdefault('metadata', {}).setdefault('tags', [])
            if opts.get('echo') == 'false' or not c['source']: tags.append('remove_input')
            if opts.get('output') == 'false': tags.append('remove_output')
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md: o['data']['text/markdown'] = _md(''.join(md))
            c.setdefault('outputs', []); c.setdefault('execution_count', None); c.pop('attachments', None)
        cells.append(c)
    nb['cells'] = cells
    nb.setdefault('nbformat', 4); nb.setdefault('nbformat_minor', 5)
    return nbformat.reads(json.dumps(nb), as_version=4)  # also joins multiline lists


def build_one(args):
    "Worker: process (and execute) one notebook; returns its page info and the nbformat JSON"
    path, nbs, execute, flags = args
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)  # nbdev finds settings.ini from here
    t = time.time()
    try: nb, fm = process_notebook(path, execute, flags)
    except NotebookError as e: return dict(error=str(e), path=str(path))
    except Exception as e:
        cause = f'\nCaused by {e.__cause__!r}' if e.__cause__ else ''
        return dict(error=f'{path} failed in nbdev docs processing: {type(e).__name__}: {e}{cause}', path=str(path))
    import nbformat
    return dict(path=str(path), page=str(page_path(path, nbs)), secs=time.time() - t,
                title=str(fm.get('title') or Path(path).stem), description=str(fm.get('description') or ''),
                nb=nbformat.writes(to_nbformat(nb)))


TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock %}{% block html_head_js_mathjax %}{% endblock %}
{% block html_head_js_mermaidjs %}{% endblock %}{% block jupyter_widgets %}{% endblock %}
{% block extra_css %}<link rel="icon" href="data:,"><style>{{ resources.site_css }}</style>{% endblock %}
{%- block body_header -%}{{ super() }}<nav id="sidebar"><a class="site-title" href="{{ resources.prefix }}index.html">
{{ resources.site_title }}</a>{{ resources.nav }}</nav><div id="content"><header id="title-block">
<h1 class="title">{{ resources.page_title }}</h1><p class="description">{{ resources.description }}</p></header>
{%- endblock body_header -%}
{% block body_footer %}</div>{{ super() }}{% endblock body_footer %}
"""

CSS = """body.jp-Notebook { padding: 0; margin: 0; }
#sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 15rem; overflow-y: auto; padding: 1rem;
  box-sizing: border-box; background: #f7f7f9; border-right: 1px solid #e3e3e8; font: 14px system-ui, sans-serif; }
#sidebar .site-title { display: block; font-size: 1.3rem; font-weight: 600; margin-bottom: 1rem; color: #222; }
#sidebar h2 { font-size: .75rem; text-transform: uppercase; letter-spacing: .05em; color: #777; margin: 1rem 0 .3rem; }
#sidebar ul { list-style: none; padding-left: 0; margin: 0; } #sidebar ul ul { padding-left: .8rem; font-size: 13px; }
#sidebar a { color: #2a5db0; text-decoration: none; display: block; padding: .15rem .3rem; border-radius: 4px; }
#sidebar a:hover { background: #e8edf6; } #sidebar a.active { background: #dfe7f5; font-weight: 600; }
#content { margin-left: 15rem; max-width: 62rem; padding: 1.5rem 2.5rem 4rem; }
#title-block .title { margin-bottom: .3rem; } #title-block .description { color: #666; font-size: 1.1rem; }
.jp-Cell { padding: .2rem 0; } .jp-InputPrompt, .jp-OutputPrompt { display: none; }
.jp-RenderedHTMLCommon table { font-size: 13px; margin-left: 0; }
.jp-RenderedMarkdown .highlight, .jp-RenderedMarkdown > pre { background: #f5f5f5; padding: .3rem .8rem; border-radius: 4px; }
.jp-RenderedMarkdown .highlight pre { background: transparent; }
.callout { border-left: 4px solid #2a76dd; background: #f3f7fd; padding: .2rem 1rem; margin: .8rem 0; }
.callout-warning { border-color: #e8a33d; background: #fdf8ee; } .callout-important { border-color: #cc3333; }
.jp-OutputArea-output img { max-width: 100%; height: auto; }
.jp-RenderedText pre { white-space: pre; overflow-x: auto; word-break: normal; }
@media (max-width: 800px) { #sidebar { position: static; width: auto; } #content { margin-left: 0; } }
"""


def nav_html(pages, current):
    "Sidebar: pages grouped by top folder; the current page lists its `##` sections (e.g. Findings)"
    prefix, groups = '../' * (len(Path(current['page']).parts) - 1), {}
    for p in pages: groups.setdefault(Path(p['page']).parts[0] if len(Path(p['page']).parts) > 1 else '', []).append(p)
    out = []
    for g in sorted(groups, key=lambda g: (list(GROUPS).index(g) if g in GROUPS else len(GROUPS), g)):
        label = GROUPS.get(g, g.replace('_', ' ').title())
        out.append((f'<h2>{html.escape(label)}</h2>' if label else '') + '<ul>')
        for p in groups[g]:
            active = ' class="active"' if p is current else ''
            out.append(f'<li><a{active} href="{prefix}{p["page"]}">{html.escape(p["title"])}</a>')
            if p is current and p.get('toc'):
                out.append('<ul>' + ''.join(f'<li><a href="#{i}">{t}</a></li>' for i, t in p['toc']) + '</ul>')
            out.append('</li>')
        out.append('</ul>')
    return '\n'.join(out)


def render_site(pages, out, site_title, site_url=''):
    "Render processed notebooks (from `build_one`) to `out` with nbconvert's lab template and a sidebar"
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    cfg = Config()
    cfg.TagRemovePreprocessor.update(enabled=True, remove_input_tags={'remove_input'}, remove_all_outputs_tags={'remove_output'})
    exp = HTMLExporter(config=cfg, template_file='kvspec.html.j2', extra_loaders=[DictLoader({'kvspec.html.j2': TEMPLATE})],
                       exclude_input_prompt=True, exclude_output_prompt=True)
    styles = ROOT / 'nbs' / 'styles.css'  # shared with the Quarto route
    css = CSS + (styles.read_text() if styles.exists() else '')
    pages.sort(key=lambda p: (Path(p['page']).name != 'index.html', p['path']))
    for p in pages:  # `##` headings (with nbconvert's anchors) go in the sidebar; the nav itself is filled in below
        res = dict(nav='<!--NAV-->', site_css=css, site_title=html.escape(site_title), page_title=html.escape(p['title']),
                   description=re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(p['description'])),
                   prefix='../' * (len(Path(p['page']).parts) - 1), metadata=dict(name=f"{p['title']} – {site_title}"))
        p['html'] = exp.from_notebook_node(nbformat.reads(p['nb'], 4), resources=res)[0]
        p['toc'] = [(i, re.sub('<[^>]+>', '', t)) for i, t in re.findall(r'<h2 id="([^"]+)">(.*?)<a class="anchor-link"', p['html'])]
    for p in pages:
        dest = out / p['page']
        dest.parent.mkdir(parents=True, exist_ok=True)
        body = p['html'].replace('<!--NAV-->', nav_html(pages, p), 1)
        if site_url: body = body.replace(f'href="{site_url}/', 'href="' + '../' * (len(Path(p['page']).parts) - 1))
        body = re.sub(r'href="([^":#]+)\.ipynb', lambda m: 'href="' + str(page_path(Path('/' + m[1] + '.ipynb'), '/')), body)
        dest.write_text(body, encoding='utf-8')  # links nbdev made to the published docs now stay on this site


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default=str(ROOT / '_site'), help='output folder (default: _site)')
    ap.add_argument('--nbs', default=str(ROOT / 'nbs'), help='notebook folder (default: nbs)')
    ap.add_argument('--no-exec', action='store_true', help='render stored outputs instead of executing')
    ap.add_argument('--flags', default='', help='space separated tst_flags whose cells should run too (e.g. "slow")')
    ap.add_argument('--workers', type=int, default=min(os.cpu_count() or 1, 4), help='notebooks executed in parallel')
    a = ap.parse_args(argv)
    nbs, out, t0 = Path(a.nbs).resolve(), Path(a.out).resolve(), time.time()
    files = find_notebooks(nbs)
    if not files: sys.exit(f'No notebooks found in {nbs}')
    print(f"{'Rendering' if a.no_exec else 'Executing and rendering'} {len(files)} notebooks from {nbs} ...", flush=True)
    jobs = [(f, nbs, not a.no_exec, a.flags.split()) for f in files]
    import multiprocessing as mp  # a fresh process per notebook: clean cwd, sys.modules, matplotlib state
    with ProcessPoolExecutor(a.workers, mp_context=mp.get_context('spawn'), max_tasks_per_child=1) as ex:
        pages = []
        for r in ex.map(build_one, jobs):
            pages.append(r)
            print(f"  {'FAILED' if 'error' in r else '%5.1fs' % r['secs']}  {Path(r['path']).relative_to(nbs)}", flush=True)
    failed = [p for p in pages if 'error' in p]
    if failed:
        for p in failed: print(f"\n{'=' * 70}\n{p['error']}", file=sys.stderr)
        sys.exit(f"\nSite build failed: {len(failed)} notebook(s) failed: " + ', '.join(str(Path(p['path']).relative_to(nbs)) for p in failed))
    from nbdev.config import get_config
    os.chdir(ROOT)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = get_config()
    render_site(pages, out, cfg.get('title', cfg.lib_name), cfg.get('doc_host', '') + cfg.get('doc_baseurl', ''))
    (out / '.nojekyll').touch()
    print(f'Built {len(pages)} pages in {out} in {time.time() - t0:.1f}s')


if __name__ == '__main__': main()
