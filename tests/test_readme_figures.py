"""The README's figure check (tools/make_readme.py --check) compares what figures show, not their bytes.

It must pass a figure whose pixels differ only by rendering noise (anti-aliasing differs between machines: a fresh
machine's re-render of index_files/output_13_0.png differed from the committed one in 2 of 970,816 pixels by 3 levels of
255) and fail one that really changed: another bar height, a changed label, a moved point, another figure. Nothing here
depends on how this machine renders: the committed figure is compared with perturbed copies of itself, and re-renders
with re-renders made in this same process.
"""
import io, sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from make_readme import PIXEL_LEVELS, decode_png, figure_difference, stale_figures  # noqa: E402

FIGURES = sorted((ROOT / 'index_files').glob('*.png'))


def encode(pixels) -> bytes:
    "PNG bytes of an RGBA pixel array"
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), 'RGBA').save(buf, format='png')
    return buf.getvalue()


@pytest.fixture(scope='module')
def committed():
    assert FIGURES, 'the README has no committed figure in index_files/'
    data = FIGURES[0].read_bytes()
    return data, decode_png(data)


def perturbed(pixels, n, levels, seed=0):
    "A copy of `pixels` with `n` random pixels' colour channels moved by `levels` (up or down)"
    rng, out = np.random.default_rng(seed), pixels.copy()
    flat = out.reshape(-1, 4)
    idx = rng.choice(len(flat), n, replace=False)
    flat[idx, :3] += np.where(flat[idx, :3] >= 128, -levels, levels)
    return out


def test_noise_passes(committed):
    data, px = committed
    assert figure_difference(data, data) is None
    assert figure_difference(data, encode(px)) is None                          # re-encoded: other bytes, same pixels
    assert figure_difference(data, encode(perturbed(px, 2, 3))) is None         # the fresh machine's difference
    assert figure_difference(data, encode(perturbed(px, 20_000, PIXEL_LEVELS))) is None  # any number of faint ones
    assert figure_difference(data, encode(perturbed(px, 9, 255))) is None       # and a few isolated outliers


def test_real_changes_fail(committed):
    data, px = committed
    h, w = px.shape[:2]
    block = px.copy(); block[h // 2: h // 2 + 6, w // 2: w // 2 + 6, :3] = 0   # a 6 x 6 mark, 36 pixels
    assert 'pixels differ' in figure_difference(data, encode(block))
    assert 'pixels differ' in figure_difference(data, encode(perturbed(px, 40, 40)))
    assert 'pixels differ' in figure_difference(data, encode(np.roll(px, 1, axis=1)))  # everything moved by one pixel
    assert 'pixels differ' in figure_difference(data, encode(np.full_like(px, 255)))   # another figure (a blank one)
    assert figure_difference(data, encode(px[:-1])) == f'size {w}x{h} -> {w}x{h - 1}'
    assert 'not a decodable image' in figure_difference(data, b'not a png')


def render(draw, dpi=176, **rc) -> bytes:
    "PNG bytes of a 7 x 4 inch figure drawn by `draw(ax)` (no pyplot: no global figure state)"
    with rc_context(rc):
        fig = Figure(figsize=(7, 4))
        draw(fig.subplots())
        buf = io.BytesIO()
        fig.savefig(buf, format='png', dpi=dpi)
    return buf.getvalue()


@pytest.fixture(scope='module')
def capacity():
    "The README's figure (kvspec.plot.plot_capacity of four presets), redrawn with an edit `edit(ax)`"
    from kvspec import from_pretrained
    from kvspec.plot import plot_capacity
    specs = {n: from_pretrained(n) for n in
             ("gemma-3-12b-it-4bit", "gpt-oss-20b", "Meta-Llama-3.1-8B-Instruct-4bit", "Qwen3-Next-80B-A3B-Instruct")}
    def draw(edit=lambda ax: None, **rc):
        return render(lambda ax: edit(plot_capacity(specs, "16GiB", [2**k for k in range(10, 18)], ax=ax)), **rc)
    return draw


def shift_lines(by):
    "Every line's x scaled by 1 + `by`: the sub-pixel geometry differences that anti-aliasing turns into noise"
    def edit(ax):
        for line in ax.lines: line.set_xdata(np.asarray(line.get_xdata(), dtype=float) * (1 + by))
    return edit


def test_rerender(capacity):
    base = capacity()
    assert figure_difference(base, capacity()) is None
    jittered = capacity(shift_lines(1e-5))
    assert jittered != base and figure_difference(base, jittered) is None  # a real re-render, pixels differ: passes
    def legend_letter(ax): t = ax.get_legend().get_texts()[0]; t.set_text(t.get_text().replace('-it-', '-It-'))
    def title_digit(ax): ax.set_title(ax.get_title().replace('16.00', '16.01'))
    def moved_point(ax): y = list(ax.lines[0].get_ydata()); y[2] += 1; ax.lines[0].set_ydata(y)
    for edit in (legend_letter, title_digit, moved_point, shift_lines(3e-3)):
        assert 'pixels differ' in figure_difference(base, capacity(edit)), edit
    # anti-aliasing off is not noise: every line's edges are drawn differently (jagged), visibly
    assert 'pixels differ' in figure_difference(base, capacity(**{'lines.antialiased': False}))
    assert figure_difference(base, capacity(dpi=100)).startswith('size ')


def test_bar_height():
    def bars(heights): return lambda ax: ax.bar(['a', 'b', 'c'], heights, color='C0')
    base = render(bars([3, 5, 4]))
    assert figure_difference(base, render(bars([3, 5, 4]))) is None
    assert 'pixels differ' in figure_difference(base, render(bars([3, 5.1, 4])))  # one bar 2% taller


def test_stale_figures(tmp_path, committed):
    "The check's verdict per file: missing, changed, or the same picture in other bytes"
    data, px = committed
    (tmp_path / 'index_files').mkdir()
    (tmp_path / 'index_files' / 'a.png').write_bytes(data)
    (tmp_path / 'index_files' / 'b.png').write_bytes(data)
    files = {'index_files/a.png': encode(perturbed(px, 2, 3)), 'index_files/b.png': encode(np.full_like(px, 255)),
             'index_files/c.png': data}
    stale = stale_figures(files, tmp_path)
    assert list(stale) == ['index_files/b.png', 'index_files/c.png'] and stale['index_files/c.png'] == 'missing'
