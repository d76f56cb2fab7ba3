"""Browser test of the static docs site built by tools/build_site.py.

Opens every page in headless Chromium (Debian's `chromium` + `chromium-driver`, driven with selenium) through a
local http.server, and checks: HTTP 200, a title, the sidebar, that links within the site resolve (to a page, and for a
`#fragment` to an element id that exists there), that no two elements share an id, that nothing is clipped on the right at 1280 px (an element wider than
its box with overflow hidden), no console errors, no Python traceback in the page, every figure loaded and visible, and that every public function, class and
method (in a class body or by @patch) of every kvspec module is on its module's page with its docstring (`api_gaps`). Screenshots of the index and the Gemma 3
model page are saved to `<site>/screenshots/`.

    KVSPEC_SITE_DIR=_site pytest tests/test_site.py   # test an already built site (what CI does)
    pytest tests/test_site.py                          # builds the site into _site first (executes notebooks)

Skipped when chromium, chromedriver or selenium are missing (CI installs them).
"""
import functools, html, http.server, json, os, re, shutil, subprocess, sys, tempfile, threading, urllib.parse, urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')
# A developer without a browser gets a skip; CI sets KVSPEC_REQUIRE_BROWSER=1, where a missing browser is a failure.
REQUIRED = os.environ.get('KVSPEC_REQUIRE_BROWSER') == '1'
if not (CHROMIUM and CHROMEDRIVER):
    msg = 'chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)'
    if REQUIRED: raise RuntimeError(msg + ', and KVSPEC_REQUIRE_BROWSER=1')
    pytest.skip(msg, allow_module_level=True)
if REQUIRED: from selenium import webdriver  # noqa: E402  (an ImportError fails the run)
else: webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install "selenium>=4.20,<5")')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--window-size=1280,1000']
TRACEBACK = re.compile(r'Traceback \(most recent call last\)')


@pytest.fixture(scope='module')
def site():
    if os.environ.get('KVSPEC_SITE_DIR'):
        d = Path(os.environ['KVSPEC_SITE_DIR']).resolve()
        assert (d / 'index.html').exists(), f'KVSPEC_SITE_DIR={d} has no index.html: run tools/build_site.py first'
        return d
    d = ROOT / '_site'
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_site.py'), '--out', str(d)], check=True, cwd=ROOT)
    return d


@pytest.fixture(scope='module')
def server(site):
    handler = functools.partial(type('Quiet', (http.server.SimpleHTTPRequestHandler,), {'log_message': lambda *a: None}),
                                directory=str(site))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()


@pytest.fixture(scope='module')
def browser():
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix='kvspec-chromium-')
    for f in FLAGS + [f'--user-data-dir={profile}']: opts.add_argument(f)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def pages(site): return sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html') if 'screenshots' not in p.parts)


IMG_JS = """return [...document.images].map(i => [i.currentSrc.slice(0, 60), i.complete && i.naturalWidth > 0,
  i.getBoundingClientRect().width > 0 && i.getBoundingClientRect().height > 0])"""


class _Ids(HTMLParser):
    def __init__(self): super().__init__(); self.ids, self.repeated = set(), {}
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k == 'id' and v in self.ids: self.repeated[v] = self.repeated.get(v, 1) + 1
            if k in ('id', 'name') and v: self.ids.add(v)


@functools.lru_cache(None)
def _parsed(path):
    p = _Ids(); p.feed(Path(path).read_text(encoding='utf-8'))
    return p


def element_ids(path):
    "Every `id` (and `name`) in the HTML file at `path`"
    return frozenset(_parsed(path).ids)


def duplicate_ids(path):
    "Ids that more than one element of the HTML file at `path` has, with how many (a link to one lands on the first only)"
    return dict(_parsed(path).repeated)


def link_problems(site, page, href):
    "A link within the site (sidebar, nbdev's doc and [source] links, .ipynb links) must reach a page, and an element with its #fragment"
    path, _, frag = href.partition('#')
    if ':' in path or href.startswith('//'): return []  # another site (https:, mailto:, data:)
    target = ((site / page).parent / path).resolve() if path else (site / page)
    if not target.is_file(): return [f'broken link {href}']
    ids = element_ids(target)  # as browsers look it up (HTML spec): the fragment as written, then percent-decoded
    if frag and frag not in ids and urllib.parse.unquote(frag) not in ids: return [f'dangling anchor {href}: {target.relative_to(site)} has no id "{frag}"']
    return []


# Elements whose content is wider than their box and that hide the rest (overflow hidden/clip): e.g. code cut off on the right.
CLIP_JS = """const out = [];
if (document.documentElement.scrollWidth > window.innerWidth + 1) out.push(['the page (wider than the window)', 'page']);
for (const el of document.querySelectorAll('#content *')) {
  const cs = getComputedStyle(el);
  if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1 && ['hidden', 'clip'].includes(cs.overflowX))
    out.push([el.tagName.toLowerCase() + (el.className ? '.' + String(el.className).trim().split(/\\s+/).join('.') : '') + ': '
              + el.innerText.slice(0, 60).replace(/\\s+/g, ' '), cs.overflowX]);
}
return out.slice(0, 10);"""


def check_page(drv, base, site, page):
    "Problems found on `page` (empty if it renders fine), and its number of figures"
    url, errs = base + page, []
    with urllib.request.urlopen(url) as r: status, raw = r.status, r.read().decode('utf-8')
    if status != 200: return [f'HTTP {status}'], 0
    drv.get(url)
    if not drv.title.strip(): errs.append('no <title>')
    if not drv.find_elements('css selector', '#sidebar a'): errs.append('no sidebar navigation')
    for href in drv.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))"):
        errs += link_problems(site, page, href)
    if not drv.find_elements('css selector', 'h1.title'): errs.append('no page heading')
    errs += [f'duplicate id "{i}" ({n} elements)' for i, n in duplicate_ids(site / page).items()]
    text = drv.execute_script('return document.body.innerText')
    if TRACEBACK.search(text): errs.append('Python traceback in page: ' + text[TRACEBACK.search(text).start():][:300])
    if drv.find_elements('css selector', '[data-mime-type="application/vnd.jupyter.error"]'): errs.append('error output in page')
    imgs = drv.execute_script(IMG_JS)
    if len(imgs) < raw.count('<img'): errs.append(f'{raw.count("<img")} <img> in the HTML but {len(imgs)} in the page')
    errs += [f'figure not loaded: {src}' for src, ok, _ in imgs if not ok]
    errs += [f'figure not visible: {src}' for src, ok, vis in imgs if ok and not vis]
    errs += [f'clipped (wider than its box, overflow {o}): {what}' for what, o in drv.execute_script(CLIP_JS)]
    errs += [f"console {e['level']}: {e['message']}" for e in drv.get_log('browser') if e['level'] in ('SEVERE', 'WARNING')]
    return errs, len(imgs)


def test_every_page_renders(site, server, browser):
    ps = pages(site)
    assert 'index.html' in ps, 'the site has no index.html'
    results = {p: check_page(browser, server, site, p) for p in ps}
    print(f'{len(ps)} pages, {sum(n for _, n in results.values())} figures checked')
    problems = {p: e for p, (e, _) in results.items() if e}
    assert not problems, '\n'.join(f'{p}:\n  ' + '\n  '.join(e) for p, e in problems.items())


def screenshot(drv, url, dest):
    "Full-page screenshot of `url` (capped at 12000px high)"
    drv.set_window_size(1280, 1000)
    drv.get(url)
    h = drv.execute_script('return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)')
    drv.set_window_size(1280, min(max(h, 800), 12000) + 100)  # + browser chrome in headless window size
    dest.parent.mkdir(exist_ok=True)
    assert drv.save_screenshot(str(dest)), f'could not save {dest}'
    assert dest.stat().st_size > 5000, f'{dest} looks blank'
    print(f'saved {dest}')


def test_screenshot_index(site, server, browser):
    screenshot(browser, server + 'index.html', site / 'screenshots' / 'index.png')


def test_screenshot_gemma3(site, server, browser):
    gemma = [p for p in pages(site) if p.startswith('models/') and re.search(r'gemma[-_]?3', p)]
    if not gemma: pytest.skip('no Gemma 3 page yet (nbs/models/*gemma3*.ipynb): screenshot not taken')
    screenshot(browser, server + gemma[0], site / 'screenshots' / 'gemma3.png')


def test_dangling_anchor_fails(site):
    "The link check itself: a #fragment naming no element on its page is reported, one naming a heading is not"
    assert link_problems(site, 'index.html', 'index.html#no-such-section-anywhere')
    assert link_problems(site, 'index.html', '#no-such-section-anywhere')
    ids = element_ids(site / 'index.html')
    heading = next(i for i in ids if i not in ('sidebar', 'content', 'title-block') and not i.startswith('cell-id'))
    assert not link_problems(site, 'index.html', f'index.html#{heading}'), heading


def test_duplicate_ids_fail(site, tmp_path):
    "The id check itself: an id two elements share is reported, and no page of the built site has one"
    (tmp_path / 'p.html').write_text('<h2 id="CacheSpec">A</h2><h3 id="CacheSpec">B</h3><h3 id="CacheSpec-1">C</h3>')
    assert duplicate_ids(tmp_path / 'p.html') == {'CacheSpec': 2}
    sys.path.insert(0, str(ROOT / 'tools'))
    from build_site import unique_ids
    fixed = tmp_path / 'fixed.html'
    fixed.write_text(unique_ids((tmp_path / 'p.html').read_text()))
    assert not duplicate_ids(fixed) and element_ids(fixed) >= {'CacheSpec', 'CacheSpec-1', 'CacheSpec-2'}
    repeated = {p: duplicate_ids(site / p) for p in pages(site)}
    assert not any(repeated.values()), {p: d for p, d in repeated.items() if d}


def _text(s): return ' '.join(html.unescape(re.sub(r'<[^>]+>', '', s)).split())


def test_hidden_cells_are_hidden(site):
    "No `#| hide` cell's code appears on its page (nbdev's hide_ processor drops them after they ran)"
    sys.path.insert(0, str(ROOT / 'tools'))
    from build_site import find_notebooks, page_path
    leaks, checked = [], 0
    for nb in find_notebooks(ROOT / 'nbs'):
        page = site / page_path(nb, ROOT / 'nbs')
        if not page.exists(): continue
        text = _text(page.read_text(encoding='utf-8'))
        for c in json.loads(nb.read_text(encoding='utf-8'))['cells']:
            src = ''.join(c['source']).splitlines()
            if c['cell_type'] != 'code' or not src or not re.match(r'#\|\s*hide\s*$', src[0]): continue
            body = _text(html.escape('\n'.join(l for l in src if not l.startswith('#|'))))
            if len(body) < 20: continue
            checked += 1
            if body in text: leaks.append(f'{page.relative_to(site)}: {body[:80]}')
    print(f'{checked} hidden cells checked')
    assert not leaks, 'hidden cells rendered:\n' + '\n'.join(leaks)


def public_api(py):
    """Every public function and class defined at the top of kvspec module `py`, and every public method or property of
    a public class, in its body or by `@patch` (as `Class.method`), with its docstring's first line ('' if it has none):
    what the API docs must show"""
    import ast
    tree, out = ast.parse(Path(py).read_text(encoding='utf-8')), {}
    def public(name): return not name.startswith('_') or name == '__call__'
    def doc(node): return (ast.get_docstring(node) or '').strip().split('\n')[0]
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): continue
        patched = [d for d in node.decorator_list if 'patch' in ast.unparse(d)]
        if patched and node.args.args and node.args.args[0].annotation is not None:
            cls = ast.unparse(node.args.args[0].annotation).strip('"\'')
            if public(node.name) and not cls.startswith('_'): out[f'{cls}.{node.name}'] = doc(node)
        elif not patched and public(node.name):
            out[node.name] = doc(node)
            if isinstance(node, ast.ClassDef):
                out.update({f'{node.name}.{m.name}': doc(m) for m in node.body
                            if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and public(m.name)})
    return out


_re_showdoc = re.compile(r'<hr/>\s*(?:<p><a [^>]*>source</a></p>\s*)?<h[2-5] id="([^"]+)">(.*?)(?=<hr/>|<div class="jp-Cell |\Z)', re.DOTALL)

def documented(page_html):
    "show_doc's entries on a page: {heading id: the text under it}"
    return {re.sub(r'-\d+$', '', i): _text(body) for i, body in _re_showdoc.findall(page_html)}  # CacheSpec-1: unique_ids


def api_gaps(site):
    "{module: [name: what is missing]} for every kvspec module whose notebook's page is in `site`"
    sys.path.insert(0, str(ROOT / 'tools'))
    from build_site import page_path
    gaps = {}
    for py in sorted((ROOT / 'kvspec').glob('*.py')):
        nb = re.search(r'^# AUTOGENERATED! DO NOT EDIT! File to edit: \.\./nbs/(\S+\.ipynb)', py.read_text(encoding='utf-8'), re.MULTILINE)
        page = site / page_path(Path('/nbs') / nb[1], '/nbs') if nb else None
        if not page or not page.exists(): continue
        docs = documented(page.read_text(encoding='utf-8'))
        lower = {k.lower(): v for k, v in docs.items()}  # ids as written first: `Fit` the class and `fit` the function
        for name, doc in public_api(py).items():
            shown = re.sub(r'__(\w+)__', r'\1', name)  # markdown makes show_doc's `### Guard.__call__` a bold `call`
            entry = docs.get(name, docs.get(shown, lower.get(shown.lower())))
            clean = ' '.join(html.unescape(doc.replace('`', '')).split())
            if entry is None: problem = f'not on {page.relative_to(site)}'
            elif not clean: problem = 'has no docstring'
            elif clean not in entry: problem = f'docstring not shown ({clean[:50]!r})'
            else: continue
            gaps.setdefault(py.stem, []).append(f'{name}: {problem}')
    return gaps


def test_every_public_name_documented(site):
    "Every public function, class and method (class body or @patch) of every kvspec module is on its page, with its docstring"
    gaps = api_gaps(site)
    assert not gaps, 'undocumented:\n' + '\n'.join(f'{m}: ' + '\n  '.join(g) for m, g in gaps.items())


def test_api_check_catches_a_gap(site, tmp_path):
    "The API check itself: a show_doc entry is found with its docstring, a name without one is not"
    page = ('<hr/>\n<p><a href="x">source</a></p>\n<h3 id="CacheSpec.nbytes">CacheSpec.nbytes</h3><p><em>Bytes this cache '
            'holds after the model is called on <code>chunks</code>.</em></p></div>')
    test = documented(page)
    assert list(test) == ['CacheSpec.nbytes'] and 'Bytes this cache holds after the model is called on chunks.' in test['CacheSpec.nbytes']
    py = tmp_path / 'm.py'
    py.write_text('from fastcore.basics import patch\nclass A:\n    "An A."\n    def inner(self): pass\n    @property\n    def p(self):\n'
                  '        "The p."\n    def _hidden(self): pass\nclass _Seq:\n    def copy(self): pass\n@patch\ndef f(self: A):\n    "F it."\n'
                  '@patch(as_prop=True)\ndef _g(self: A): pass\ndef h(): pass\ndef _i(): pass\n')
    assert public_api(py) == {'A': 'An A.', 'A.inner': '', 'A.p': 'The p.', 'A.f': 'F it.', 'h': ''}
