"""Self-contained HTML pages for ``facefactors compare`` and ``facefactors ablate``.

Like the per-run report, every image is embedded as a base64 PNG data URI and nothing
is linked (no scripts, fonts, stylesheets or image URLs), so a page can be mailed,
archived or opened offline. Tables mark the best value of each figure.
"""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from facefactors.io import write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;
color:#1f2937;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em}
th,td{border:1px solid #d1d5db;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f4f6}td.l,th.l{text-align:left}
td.best{background:#dcfce7;font-weight:700}
.sub{color:#6b7280;font-size:0.8em}.note{color:#4b5563;font-size:0.9em}.warn{color:#b45309}
.runs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:8px 0 16px}figcaption{font-size:0.9em;color:#374151;margin-bottom:4px;font-weight:600}
img{max-width:100%;image-rendering:pixelated;border:1px solid #e5e7eb}
"""

BEST_NOTE = ("Best value per figure highlighted (&uarr; higher is better, &darr; lower is better); "
             "nothing is highlighted where all runs tie.")


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _upscale(grid: np.ndarray, cell: int, min_cell: int = 48) -> np.ndarray:
    """Nearest-neighbour enlarge grids of tiny images so they stay legible."""
    k = max(1, -(-min_cell // max(int(cell), 1)))
    return grid if k == 1 else np.repeat(np.repeat(grid, k, axis=0), k, axis=1)


def array_png(image: np.ndarray, cell: int | None = None) -> bytes:
    """PNG bytes of a uint8 (H, W[, C]) array; with ``cell`` (image size) small grids are enlarged."""
    from PIL import Image

    arr = np.asarray(image)
    if cell:
        arr = _upscale(arr, cell)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def leakage_png(leakage: Mapping, title: str | None = None) -> bytes:
    """The leakage heatmap of ``viz.plots`` as PNG bytes."""
    from facefactors.viz.plots import leakage_figure

    return figure_png(leakage_figure(leakage, title))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="{data_uri(png)}">'


def _cell(row, i: int) -> str:
    v, note = row.values[i], row.notes[i]
    text = _e(row.figure.format(v))
    if note:
        text += f' <span class="sub">({_e(note)})</span>'
    cls = ' class="best"' if i in row.best else ""
    return f"<td{cls}>{text}</td>"


def figures_table(names: Sequence[str], rows: Sequence, first: str = "figure") -> str:
    """Rows = figures (``compare.Row``), columns = runs; best cells highlighted."""
    out = [f'<table><tr><th class="l">{_e(first)}</th>' + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"]
    for row in rows:
        label = _e(row.figure.label) + (f" {row.figure.arrow}" if row.figure.arrow else "")
        out.append(f'<tr><td class="l">{label}</td>' + "".join(_cell(row, i) for i in range(len(names))) + "</tr>")
    out.append("</table>")
    return "".join(out)


def variants_table(names: Sequence[str], columns: Sequence, status: Sequence[str | None] = (),
                   first: str = "variant") -> str:
    """Transposed: rows = variants, columns = figures (``compare.Row``), best per column highlighted;
    ``status[i]`` (e.g. "pending") replaces the cells of an unfinished variant."""
    head = "".join(f"<th>{_e(c.figure.label)}{(' ' + c.figure.arrow) if c.figure.arrow else ''}</th>"
                   for c in columns)
    out = [f'<table><tr><th class="l">{_e(first)}</th>{head}</tr>']
    for i, name in enumerate(names):
        st = status[i] if i < len(status) else None
        cells = (f'<td colspan="{len(columns)}" class="l sub">{_e(st)}</td>' if st and columns else
                 "".join(_cell(c, i) for c in columns))
        out.append(f'<tr><td class="l">{_e(name)}</td>{cells}</tr>')
    out.append("</table>")
    return "".join(out)


def _plain_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table><tr>" + "".join(f'<th class="l">{_e(h)}</th>' for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="l">{_e(c)}</td>' for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


# ------------------------------------------------------------------------------ compare
def render_comparison(names: Sequence[str], info: Sequence[Mapping[str, str]], dataset: Mapping[str, Any],
                      headline_rows: Sequence, cf_rows: Sequence, leakage: Mapping[str, bytes | None],
                      swaps: Mapping[str, Mapping[str, bytes | None]], warnings: Sequence[str] = (),
                      n_images: tuple[int, int] = (0, 0)) -> str:
    """The comparison page as an HTML string (see ``write_comparison``)."""
    title = "Comparison: " + ", ".join(names)
    ds = (f"{dataset.get('name')} ({dataset.get('size')} images; {dataset.get('n_train')} train, "
          f"{dataset.get('n_test')} test)" if dataset.get("size") else str(dataset.get("name")))
    body = [f"<h1>{_e(title)}</h1>", f'<p class="note">Dataset: {_e(ds)}. Every run is measured on the same test '
            "split; the swap grids use the same seeded test images and donors for every run.</p>"]
    body += [f'<p class="warn">Warning: {_e(w)}</p>' for w in warnings]
    body.append(_plain_table(["run", "path", "method", "latent parts", "steps", "evaluation sample"],
                             [[i["run"], i["path"], i["method"], i["parts"], i["steps"], i["eval"]] for i in info]))
    body.append("<h2>Headline figures</h2>" + f'<p class="note">{BEST_NOTE} Leakage is the normalized '
                "accuracy of a fresh probe, (acc &minus; chance) / (1 &minus; chance), off the diagonal "
                "(a part read for another attribute); the counterfactual means are over each run's parts.</p>"
                + figures_table(names, headline_rows))
    if cf_rows:
        body.append("<h2>Counterfactual transfer</h2>" + '<p class="note">Swapped decode against the re-rendered '
                    "truth. Ratio to reconstruction 1 = as good as reconstructing the truth; ratio to no change "
                    "1 = no better than leaving the source unchanged; <i>region</i> counts only the pixels the "
                    "true change touches.</p>" + figures_table(names, cf_rows, "part: figure"))
    shown = {n: png for n, png in leakage.items() if png}
    if shown:
        body.append("<h2>Leakage</h2>" + '<div class="runs">' + "".join(
            f"<figure><figcaption>{_e(n)}</figcaption>{_img(png, 'leakage of ' + n)}</figure>"
            for n, png in shown.items()) + "</div>")
    for part, by_run in swaps.items():
        items = []
        for n in names:
            png = by_run.get(n)
            items.append(f"<figure><figcaption>{_e(n)}</figcaption>"
                         + (_img(png, f"swap {part} of {n}") if png else
                            f'<p class="note">{_e(n)} has no part {_e(part)!s}</p>') + "</figure>")
        body.append(f"<h2>Swap {_e(part)}</h2>" + f'<p class="note">Rows: {n_images[0]} sources; columns: '
                    f"{n_images[1]} donors of {_e(part)}; the first row and column are the originals.</p>"
                    + '<div class="runs">' + "".join(items) + "</div>")
    return _page(title, body)


def write_comparison(path: str | os.PathLike, *args, **kwargs) -> Path:
    """Render the comparison (arguments of ``render_comparison``) and write it atomically."""
    path = Path(path)
    write_text(path, render_comparison(*args, **kwargs))
    return path


# ------------------------------------------------------------------------------ ablate
def render_ablation(title: str, names: Sequence[str], columns: Sequence, status: Sequence[str | None],
                    details: Sequence[Sequence[str]], legend: Sequence[tuple[str, str]],
                    meta: Sequence[tuple[str, str]]) -> str:
    """The ablation page: the variants table (best per column highlighted), what each column
    means, and one line per variant (its overrides and run directory)."""
    body = [f"<h1>{_e(title)}</h1>",
            _plain_table(["", ""], meta) if meta else "",
            "<h2>Results</h2>", f'<p class="note">{BEST_NOTE}</p>', variants_table(names, columns, status),
            "<h2>Columns</h2>" + _plain_table(["column", "meaning"], legend) if legend else "",
            "<h2>Variants</h2>" + _plain_table(["variant", "overrides", "run directory", "state"], details)]
    return _page(title, body)


def write_ablation_html(path: str | os.PathLike, *args, **kwargs) -> Path:
    path = Path(path)
    write_text(path, render_ablation(*args, **kwargs))
    return path
