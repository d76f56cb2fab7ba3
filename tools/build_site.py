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
A notebook that fails to execute fails the build, naming the notebook and the cell. `<out>/executed.json` records
which notebooks ran without error and a fingerprint of the tree they ran in (`tree_fingerprint`): tests/test_notebooks.py
does not run them a second time in that same tree (CI builds the site, then runs the tests).
"""
import argparse, html, itertools, json, os, re, shutil, sys, time, urllib.parse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {'': '', 'models': 'Models', 'experiments': 'Experiments'}  # sidebar order; other folders follow


class NotebookError(Exception): pass


def tree_fingerprint(root=ROOT):
    """sha256 of everything a notebook run could read: each tracked or untracked-but-not-ignored file's path and content
    (git ls-files), and the Python, mlx, mlx-lm, nbdev and execnb versions; None outside a git checkout"""
    import hashlib, platform, subprocess
    from importlib.metadata import PackageNotFoundError, version
    try: files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError): return None
    h = hashlib.sha256(f'{sys.version} {platform.platform()}'.encode())
    for pkg in ('mlx', 'mlx-lm', 'nbdev', 'execnb', 'fastcore'):
        try: h.update(f'{pkg}={version(pkg)}'.encode())
        except PackageNotFoundError: h.update(f'{pkg}=none'.encode())
    for f in sorted(set(files.decode().split('\0')) - {''}):
        p = Path(root) / f
        h.update(f.encode() + b'\0')
        if p.is_file(): h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


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
/* Code cells and text outputs: nbconvert's lab CSS clips the editor (overflow: hidden) and breaks output lines inside words
   (break-all); long lines wrap at spaces instead, a word wider than the column breaks, wide HTML (tables) scrolls */
#content .jp-OutputArea-output pre { white-space: pre-wrap; word-break: normal; overflow-wrap: anywhere; }
.jp-InputArea-editor { overflow-x: auto; min-width: 0; }
.jp-InputArea-editor .highlight pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.jp-Cell-inputWrapper, .jp-Cell-outputWrapper, .jp-InputArea, .jp-OutputArea { min-width: 0; }
.source .highlight pre { white-space: pre; overflow-x: auto; font-size: 13px; } .source .linenos { color: #999; }
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


def render_site(pages, out, site_title, site_url='', git_url='', branch='main', source_links='site'):
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
        p['html'] = unique_ids(exp.from_notebook_node(nbformat.reads(p['nb'], 4), resources=res)[0])
        p['toc'] = [(i, re.sub('<[^>]+>', '', t)) for i, t in re.findall(r'<h2 id="([^"]+)">(.*?)<a class="anchor-link"', p['html'])]
    sources = source_pages(pages, css, site_title) if source_links == 'site' else []
    git = urllib.parse.urljoin(git_url + '/', f'blob/{branch}/')  # as nbdev joins them: `/blob/main/` when git_url is empty
    bodies = {}
    for p in pages + sources:
        prefix = '../' * (len(Path(p['page']).parts) - 1)
        body = p['html'].replace('<!--NAV-->', nav_html(pages, p), 1)
        if site_url: body = body.replace(f'href="{site_url}/', 'href="' + prefix)
        body = re.sub(r'href="([^":#]+)\.ipynb', lambda m: 'href="' + str(page_path(Path('/' + m[1] + '.ipynb'), '/')), body)
        if sources:  # nbdev's [source] links: to this site's copy of the module, same line anchor
            body = re.sub(r'href="' + re.escape(git) + r'([^"#]+\.py)(#L\d+)?"', lambda m: f'href="{prefix}src/{m[1]}.html{m[2] or ""}"', body)
        elif not git_url:  # --source-links git without a repository to link to: no [source] link rather than a broken one
            body = re.sub(r'<p><a href="' + re.escape(git) + r'[^"]*"[^>]*>source</a></p>', '', body)
        bodies[p['page']] = add_lowercase_ids(body)  # links nbdev made to the published docs now stay on this site
    ids = {page: set(_re_id.findall(b)) for page, b in bodies.items()}
    for page, body in bodies.items():
        dest = out / page
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(fix_anchors(body, page, ids), encoding='utf-8')


_re_id = re.compile(r'\sid="([^"]+)"')
_re_href = re.compile(r'href="([^":"#]*)#([^"]+)"')

_re_heading = re.compile(r'(<h[1-6] id="([^"]+)">)')
_re_heading_whole = re.compile(r'<h([1-6]) id="([^"]+)">(.*?)</h\1>', re.DOTALL)

def unique_ids(body):
    """Every heading id once: a repeat (a `## CacheSpec` section above show_doc's `### CacheSpec`) is numbered `CacheSpec-1`,
    `-2`, … as pandoc numbers Quarto's, and its ¶ link with it; the first keeps the id, so links to it still land"""
    taken, seen = set(_re_id.findall(body)), set()
    def renumber(m):
        level, old, inner = m.groups()
        if old not in seen: seen.add(old); return m[0]
        new = next(f'{old}-{n}' for n in itertools.count(1) if f'{old}-{n}' not in taken)
        taken.add(new)
        return f'<h{level} id="{new}">' + inner.replace(f'href="#{old}"', f'href="#{new}"', 1) + f'</h{level}>'
    return _re_heading_whole.sub(renumber, body)

def add_lowercase_ids(body):
    "Each heading whose id has capitals also answers to its lowercase id (Quarto's and nbdev's form: `#cachespec.nbytes`)"
    have = set(_re_id.findall(body))
    def alias(m):
        low = m[2].lower()
        if low in have: return m[0]
        have.add(low)
        return f'{m[1]}<span id="{low}" class="anchor-alias"></span>'
    return _re_heading.sub(alias, body)

def resolve_anchor(frag, ids):
    "The id in `ids` that link fragment `frag` means: itself, else the one id equal ignoring case, else the one `Class.frag`"
    if frag in ids: return frag
    for match in (lambda i: i.lower() == frag.lower(), lambda i: i.lower().endswith('.' + frag.lower())):
        found = [i for i in ids if match(i)]
        if len(found) == 1: return found[0]
    return frag

def fix_anchors(body, page, ids):
    """In-site links `page.html#frag` point at an id that exists: nbdev writes lowercase anchors (`spec.html#cachespec`,
    Quarto's ids) while nbconvert keeps the heading's case (`CacheSpec`); a link that resolves to no id is left as it is
    (the browser test reports it)"""
    def fix(m):
        path, frag = m.groups()
        target = (Path(page).parent / path).as_posix() if path else page
        target = os.path.normpath(target).replace(os.sep, '/')
        if target not in ids: return m[0]
        return f'href="{path}#{resolve_anchor(html.unescape(frag), ids[target])}"'
    def private(m):  # nbdev links every name in _modidx, `_private` ones too, but documents none of them: plain code
        path, frag, inner = m.groups()
        target = os.path.normpath((Path(page).parent / path).as_posix() if path else page).replace(os.sep, '/')
        return inner if target in ids and resolve_anchor(html.unescape(frag), ids[target]) not in ids[target] else m[0]
    return _re_href.sub(fix, _re_private.sub(private, body))

_re_private = re.compile(r'<a href="([^":"#]*)#(_[^"]*)">(<code>[^<]*</code>)</a>')


SOURCE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title} – {site}</title>
<link rel="icon" href="data:,"><style>{css}</style></head><body class="jp-Notebook"><nav id="sidebar">
<a class="site-title" href="{prefix}index.html">{site}</a><!--NAV--></nav><div id="content"><header id="title-block">
<h1 class="title">{title}</h1><p class="description">Exported from <a href="{prefix}{nbpage}">nbs/{nb}</a> by nbdev: edit the notebook, not this file.</p>
</header><div class="source">{code}</div></div></body></html>"""

def source_pages(pages, css, site_title):
    "One highlighted page per exported module (`src/kvspec/spec.py.html`, line anchors `#L12` as on GitHub)"
    from nbdev.config import get_config
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    cfg, out = get_config(), []
    fmt = HtmlFormatter(linenos='inline', lineanchors='L', anchorlinenos=True)
    css = css + fmt.get_style_defs('.source .highlight')
    for py in sorted(Path(cfg.lib_path).rglob('*.py')):
        rel = py.relative_to(cfg.lib_path.parent).as_posix()
        page = f'src/{rel}.html'
        prefix = '../' * (len(Path(page).parts) - 1)
        nb = re.search(r'^# AUTOGENERATED FROM (\S+)|^# %% (\S+\.ipynb)', py.read_text(), re.MULTILINE)
        if not nb: continue  # _modidx.py and other files no notebook exports
        nbname = Path(nb[1] or nb[2]).name
        code = highlight(py.read_text(), PythonLexer(), fmt)
        code = re.sub(r'id="L-(\d+)" name="L-\d+"', r'id="L\1"', code).replace('href="#L-', 'href="#L')
        out.append(dict(page=page, title=rel, html=SOURCE.format(title=html.escape(rel), site=site_title, css=css, prefix=prefix,
                                                                 nbpage=page_path(Path('/' + nbname), '/').as_posix().lstrip('/'), nb=nbname, code=code)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default=str(ROOT / '_site'), help='output folder (default: _site)')
    ap.add_argument('--nbs', default=str(ROOT / 'nbs'), help='notebook folder (default: nbs)')
    ap.add_argument('--no-exec', action='store_true', help='render stored outputs instead of executing')
    ap.add_argument('--flags', default='', help='space separated tst_flags whose cells should run too (e.g. "slow")')
    ap.add_argument('--only', nargs='*', default=None, metavar='GLOB',
                    help='build only the notebooks matching these globs relative to --nbs (e.g. "01_*" "models/*"): a partial site, for iterating')
    ap.add_argument('--source-links', choices=('site', 'git'), default='site',
                    help="where show_doc's [source] links go: 'site' (default) renders each exported module as src/kvspec/<module>.py.html "
                         "with GitHub-style #L<n> line anchors; 'git' keeps nbdev's links to settings.ini git_url/blob/branch (none while git_url is empty)")
    ap.add_argument('--workers', type=int, default=min(os.cpu_count() or 1, 4), help='notebooks executed in parallel')
    a = ap.parse_args(argv)
    nbs, out, t0 = Path(a.nbs).resolve(), Path(a.out).resolve(), time.time()
    fingerprint = tree_fingerprint() if not a.no_exec and nbs == ROOT / 'nbs' else None  # the tree before anything ran
    files = find_notebooks(nbs)
    if a.only is not None: files = [f for f in files if any(f.relative_to(nbs).match(g) for g in a.only)]
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
    render_site(pages, out, cfg.get('title', cfg.lib_name), cfg.get('doc_host', '') + cfg.get('doc_baseurl', ''),
                cfg.get('git_url', ''), cfg.get('branch', 'main'), a.source_links)
    (out / '.nojekyll').touch()
    if fingerprint:  # tests/test_notebooks.py skips what ran here without error, if the tree is still the same
        skipped = sorted(set(cfg.get('tst_flags', '').split()) - set(a.flags.split()))
        (out / 'executed.json').write_text(json.dumps(dict(tree=fingerprint, skipped_flags=skipped, notebooks={
            Path(p['path']).relative_to(nbs).as_posix(): round(p['secs'], 1) for p in pages}), indent=1))
    print(f'Built {len(pages)} pages in {out} in {time.time() - t0:.1f}s')


if __name__ == '__main__': main()
