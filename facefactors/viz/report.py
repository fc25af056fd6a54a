"""A self-contained HTML report of one evaluation: tables plus figures embedded as base64 PNGs.

No external resources (no scripts, fonts, stylesheets or image links), so the file can be
mailed, archived or opened offline and still shows everything.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Mapping

from facefactors.io import write_text

SECTIONS = (
    ("reconstruct", "Reconstructions"),
    ("swap", "Swap grids"),
    ("interp", "Interpolations"),
    ("leakage", "Leakage"),
    ("counterfactual", "Counterfactual transfer"),
    ("tsne", "t-SNE per part"),
    ("identity_", "Verification, recognition, Gaussianity, editing"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#1f2937;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em}
th,td{border:1px solid #d1d5db;padding:4px 8px;text-align:right}
th{background:#f3f4f6}td.l,th.l{text-align:left}
td.diag{outline:2px solid #16a34a;outline-offset:-2px;font-weight:600}
.sub{color:#6b7280;font-size:0.8em}.note{color:#4b5563;font-size:0.9em}
figure{margin:12px 0 24px}figcaption{font-size:0.9em;color:#374151;margin-bottom:4px}
img{max-width:100%;image-rendering:pixelated;border:1px solid #e5e7eb}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (int, float)):
        return _e(fmt.format(v))
    return _e(v)


def _table(header: list[str], rows: list[list[str]], first_left: bool = True) -> str:
    """Rows are pre-escaped HTML cells (str) or (html, css class) tuples."""
    out = ["<table><tr>"]
    out += [f'<th class="l">{_e(h)}</th>' if i == 0 and first_left else f"<th>{_e(h)}</th>"
            for i, h in enumerate(header)]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = "l" if i == 0 and first_left else ""
            if isinstance(cell, tuple):
                cell, extra = cell
                cls = (cls + " " + extra).strip()
            out.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _headline_section(metrics: Mapping[str, Any]) -> str:
    from facefactors.eval.evaluate import headline

    h = headline(metrics)
    rows = [["PSNR (dB)", _num(h.get("psnr"), "{:.2f}")], ["MSE", _num(h.get("mse"), "{:.5f}")],
            ["SSIM", _num(h.get("ssim"))]]
    for kind, best in h["max_offdiag_leakage"].items():
        where = f' <span class="sub">({_e(best["part"])} &rarr; {_e(best["attribute"])})</span>' if best else ""
        rows.append([f"max off-diagonal normalized leakage, {_e(kind)}", _num(best and best["value"]) + where])
    for kind, best in (h.get("max_offdiag_leakage_unlinked") or {}).items():
        where = f' <span class="sub">({_e(best["part"])} &rarr; {_e(best["attribute"])})</span>' if best else ""
        rows.append([f"&hellip; excluding identity-linked attributes in identity, {_e(kind)}",
                     _num(best and best["value"]) + where])
    for kind, diag in h["diagonal_accuracy"].items():
        for attr, acc in diag.items():
            rows.append([f"diagonal accuracy {_e(attr)}, {_e(kind)}", _num(acc)])
    for part, r in h["counterfactual"].items():
        rows.append([f"counterfactual {_e(part)}: ratio to reconstruction / to no change",
                     f"{_num(r['ratio_to_reconstruction'])} / {_num(r['ratio_to_no_change'])}"])
        rows.append([f"counterfactual {_e(part)}, changed region: ratio to reconstruction / to no change",
                     f"{_num(r['region_ratio_to_reconstruction'])} / {_num(r['region_ratio_to_no_change'])}"])
    if "mig" in metrics or "dci" in metrics:
        rows.append(["MIG", _num(h.get("mig"))])
        rows.append(["DCI disentanglement", _num(h.get("dci_disentanglement"))])
    return "<h2>Headline</h2>" + _table(["figure", "value"], rows)


def _leakage_section(leakage: Mapping[str, Any]) -> str:
    if not leakage:
        return ""
    from facefactors.viz.plots import leakage_axes

    parts, attrs = leakage_axes(leakage)
    out = ["<h2>Leakage</h2>",
           '<p class="note">Normalized leakage (accuracy &minus; chance) / (1 &minus; chance) of a fresh probe fit '
           "on train-split latents and scored on test-split latents; below it accuracy / chance. "
           "Diagonal cells (the attribute's own part) are outlined: high is good there, 0 is the goal elsewhere.</p>"]
    for kind, by_part in leakage.items():
        rows = []
        for p in parts:
            row: list = [_e(p)]
            for a in attrs:
                entry = by_part.get(p, {}).get(a)
                if entry is None:
                    row.append("&ndash;")
                    continue
                cell = (f"{_num(entry.get('normalized'))}<br><span class=\"sub\">"
                        f"{_num(entry.get('accuracy'))} / {_num(entry.get('chance'))}</span>")
                row.append((cell, "diag") if p == a else cell)
            rows.append(row)
        out.append(f"<h3>{_e(kind)} probe</h3>")
        out.append(_table(["part \\ attribute"] + attrs, rows))
    return "".join(out)


def _counterfactual_section(cf: Mapping[str, Any]) -> str:
    if not cf:
        return ""
    keys = ["mse", "ratio_to_reconstruction", "ratio_to_no_change", "region_mse",
            "region_ratio_to_reconstruction", "region_ratio_to_no_change", "ratio_donor_part_only",
            "ratio_recipient_others_only", "n_pairs"]
    rows = [[_e(p)] + [_num(m.get(k), "{:.5f}" if k.endswith("mse") else ("{}" if k == "n_pairs" else "{:.3f}"))
                       for k in keys] for p, m in cf.items()]
    return ("<h2>Counterfactual transfer</h2>"
            '<p class="note">The swapped decode against the re-rendered truth. Ratio to reconstruction 1 = as good '
            "as reconstructing the truth itself; ratio to no change 1 = no better than leaving the source "
            "unchanged. <i>region</i> figures count only the pixels the true change touches. Why a transfer "
            "fails: <i>donor part only</i> decodes the truth's code with only the part from the donor (above 1: "
            "the part carries more than its attribute); <i>recipient others only</i> decodes the recipient's code "
            "with only the part from the truth (above 1: the other parts carry the attribute too).</p>"
            + _table(["part"] + keys, rows))


def _disentanglement_section(metrics: Mapping[str, Any]) -> str:
    if "mig" not in metrics and "dci" not in metrics and "sap" not in metrics:
        return ""
    dci = metrics.get("dci") or {}
    info = metrics.get("disentanglement_info") or {}
    rows = [["MIG", _num(metrics.get("mig"))], ["DCI disentanglement", _num(dci.get("disentanglement"))],
            ["DCI completeness", _num(dci.get("completeness"))],
            ["DCI informativeness (test accuracy)", _num(dci.get("informativeness"))], ["SAP", _num(metrics.get("sap"))]]
    if dci.get("disentanglement_chance") is not None:
        rows.insert(3, ["DCI disentanglement / completeness of shuffled codes (chance floor)",
                        f"{_num(dci.get('disentanglement_chance'))} / {_num(dci.get('completeness_chance'))}"])
    note = ('<p class="note">Definitions of disentanglement_lib over the dimensions of all parts concatenated '
            f"({_e(info.get('dims'))} dimensions) against the labelled factors "
            f"{_e(', '.join(info.get('factors') or []))}")
    if info.get("binned"):
        note += f"; continuous factors ({_e(', '.join(info['binned']))}) in {_e(info.get('n_bins'))} equal-width bins"
    note += (f". MIG on {_e(info.get('mig_n'))} test codes; DCI: gradient-boosted trees "
             f"({_e(info.get('dci_estimators'))} estimators"
             + (f", {_e(info['dci_max_features'])} candidate dimensions per split" if info.get("dci_max_features") else "")
             + f") fit on {_e(info.get('dci_n_train'))} train codes, scored on {_e(info.get('dci_n_test'))} test codes; "
             f"SAP: 1-D linear SVMs fit on {_e(info.get('sap_n_train'))} train codes, scored on "
             f"{_e(info.get('sap_n_test'))} test codes. 1 is perfectly disentangled, 0 not at all. With many "
             "dimensions DCI disentanglement reads high even for noise (sparse importances); the chance floor "
             "(eval.dci_chance) measures it.</p>")
    out = "<h2>Disentanglement metrics (MIG, DCI, SAP)</h2>" + note + _table(["metric", "value"], rows)
    per = info.get("mig_per_factor") or {}
    if per:
        out += "<h3>MIG per factor</h3>" + _table(["factor"] + list(per), [["MIG"] + [_num(v) for v in per.values()]])
    return out


def _entropy_section(ent: Mapping[str, Any]) -> str:
    parts = ent.get("parts") or {}
    if not parts:
        return ""
    attrs: list[str] = []
    for by_attr in parts.values():
        attrs += [a for a in by_attr if a not in attrs]
    rows = []
    for p, by_attr in parts.items():
        row: list = [f"{_e(p)} <span class=\"sub\">({_e((ent.get('source') or {}).get(p, ''))})</span>"]
        for a in attrs:
            e = by_attr.get(a)
            if e is None:
                row.append("&ndash;")
                continue
            cell = f"{_num(e.get('normalized'))}<br><span class=\"sub\">{_num(e.get('entropy'))} nats</span>"
            row.append((cell, "diag") if p == a else cell)
        rows.append(row)
    return ("<h2>Classifier posterior entropy</h2>"
            '<p class="note">Mean entropy of the posterior over each attribute\'s classes given a part\'s code, '
            "divided by log K (below: in nats). 0 = the code tells the class; 1 = it says nothing about it. "
            "Goal: ~0 on the diagonal (outlined), ~1 elsewhere. Source per part: the method's own classifiers "
            "(model) or a logistic-regression probe fit on train codes (probe; on an empty part it reports the "
            "entropy of the class frequencies).</p>" + _table(["part \\ attribute"] + attrs, rows))


def _hopkins_section(hop: Mapping[str, Any]) -> str:
    if not hop:
        return ""
    out = ["<h2>Hopkins statistic within clusters</h2>",
           '<p class="note">Oldfield et al., Table III: inside each class cluster of a part\'s own attribute, do '
           "the codes still group by another attribute? Per cluster, the mean &plusmn; std over that attribute's "
           "labels of the Hopkins statistic of the label's points against the rest of the cluster. ~0.5: the other "
           "attribute is spread at random through the cluster (disentangled); &rarr; 1: it forms sub-clusters; "
           "above 0.75 reads as a clustering tendency at 90% confidence.</p>"]
    for part, by_b in hop.items():
        if not by_b:
            continue
        classes: list[str] = []
        for r in by_b.values():
            classes += [c for c in r["per_class"] if c not in classes]
        rows = []
        for b, r in by_b.items():
            row = [_e(b), _num(r.get("mean")), _num(r.get("clustered_fraction"), "{:.2f}")]
            for c in classes:
                v = r["per_class"].get(c)
                row.append("&ndash;" if v is None else f"{_num(v['mean'], '{:.2f}')} &plusmn; {_num(v['std'], '{:.2f}')}")
            rows.append(row)
        out.append(f"<h3>clusters of {_e(part)} in part {_e(part)}</h3>")
        out.append(_table(["grouped by", "mean", "share > 0.75"] + classes, rows))
    return "".join(out)


def _fewshot_section(fs: Mapping[str, Any]) -> str:
    parts = fs.get("parts") or {}
    if not parts:
        return ""
    shots: list[str] = []
    for r in parts.values():
        shots += [k for k in r if k not in shots]
    rows = []
    for p, r in parts.items():
        rows.append([_e(p)] + [("&ndash;" if k not in r else
                                f"{_num(r[k]['accuracy'])} &plusmn; {_num(r[k]['std'])}<br><span class=\"sub\">"
                                f"chance {_num(r[k]['chance'])}, {_e(r[k]['n_classes'])} ids</span>") for k in shots])
    return (f"<h2>Few-shot recognition of unseen {_e(fs.get('attribute', 'identity'))}</h2>"
            f'<p class="note">{_e(fs.get("n_images"))} images of held-out identities; k examples per identity, the '
            f"rest classified by {_e(fs.get('method'))} (nearest class mean, cosine, codes standardized with train "
            f"statistics); mean &plusmn; std over {_e(fs.get('draws'))} draws.</p>"
            + _table(["part"] + [f"{k}-shot" for k in shots], rows))


def _frechet_section(fd: Mapping[str, Any], oracle: Mapping[str, Any]) -> str:
    if not fd and not oracle:
        return ""
    labels = {"reconstructions": "reconstructions of test images", "samples": "samples from the prior",
              "samples_fitted": "samples from a Gaussian fitted to training codes (every method)",
              "real_train": "real train images (reference)"}
    rows = []
    for key, label in labels.items():
        r = fd.get(key)
        if r:
            extra = f" <span class=\"sub\">(sampled parts: {_e(', '.join(r['sampled_parts']))})</span>" \
                if r.get("sampled_parts") else ""
            rows.append([_e(label) + extra, _num(r.get("value"), "{:.3f}"), _e(r.get("n_generated")),
                         _e(r.get("n_real")), _e(r.get("extractor"))])
        elif key == "samples" and fd.get("samples_skipped"):
            rows.append([_e(label), "&ndash;", "", "", _e(fd["samples_skipped"])])
    out = ("<h2>Fréchet distance to real test images</h2>"
           '<p class="note">Gaussian fits to image features. The extractor is named: '
           "<code>facefactors-oracle:&hellip;</code> is our evaluation classifier trained on the real training "
           "images (compare only runs that name the same one), <code>inception-v3-pool3</code> the standard FID. "
           "Real train images against the same real test images show the distance of a perfect generator "
           "(sampling noise only); reconstructions are compared with the very images they reconstruct.</p>"
           + _table(["images", "Fréchet distance", "n", "n real", "extractor"], rows))
    test = (oracle or {}).get("test") or {}
    if test.get("accuracy") or test.get("r2"):
        cells = [[_e(a), _num(v)] for a, v in test.get("accuracy", {}).items()]
        cells += [[f"{_e(c)} (R&sup2;)", _num(v)] for c, v in test.get("r2", {}).items()]
        out += ("<h3>Evaluation oracle on real test images</h3>"
                f'<p class="note">Accuracy per attribute, R&sup2; per regressed column, on {_e(test.get("n"))} '
                "test images; it also scores edits and transfers.</p>" + _table(["output", "score"], cells))
    return out


def _identity_section(ident: Mapping[str, Any]) -> str:
    """Verification per feature set, SVM attribute recognition per part, editing success (eval/identity.py)."""
    if not ident:
        return ""
    out = ["<h2>Verification, attribute recognition and editing</h2>"]
    ver = ident.get("verification") or {}
    if ver.get("features"):
        rows = [[_e(name), _num(r.get("accuracy")), _num(r.get("tpr_at_fpr")), _e(f"{r.get('fpr_target', 0):g}")]
                for name, r in ver["features"].items()]
        out.append(f'<p class="note">Cosine similarity on LFW-layout pairs of the {_e(ver.get("split"))} split '
                   "(10-fold accuracy, threshold chosen on the other folds).</p>"
                   + _table(["features", "accuracy", "TPR at FPR", "FPR"], rows))
    rec = (ident.get("recognition") or {}).get("features") or {}
    if rec:
        names = list(rec)
        attrs = list(dict.fromkeys(a for r in rec.values() for a in r))
        rows = [[_e(a)] + [_num((rec[n].get(a) or {}).get("accuracy")) for n in names] for a in attrs]
        out.append('<p class="note">Linear-SVM accuracy on test codes, per attribute and feature set.</p>'
                   + _table(["attribute"] + [_e(n) for n in names], rows))
    edit = (ident.get("editing") or {}).get("by_direction") or {}
    if edit:
        rows = []
        for kind, summary in edit.items():
            for a, r in (summary.get("attributes") or {}).items():
                rows.append([_e(kind), _e(a), _e(r.get("part")), _num(r.get("success_rate")),
                             _num(r.get("unedited_rate")), _num(r.get("identity_verified"))])
        out.append('<p class="note">Edits along linear directions, scored by the evaluation oracle: the share '
                   "of edited test images it reads as the requested class, beside unedited images; identity "
                   "verified = edited image still matches the original by cosine on the identity part.</p>"
                   + _table(["direction", "attribute", "part", "success", "unedited", "identity verified"], rows))
    return "".join(out)


def _complements_section(metrics: Mapping[str, Any]) -> str:
    """Each part against its complement, and train/test RMSE with the memorisation summary."""
    out = []
    comp = metrics.get("complements") or {}
    if comp:
        from facefactors.eval.complements import complement_headline

        lines = complement_headline(comp, "linear") + complement_headline(comp, "mlp")
        out.append("<h2>Parts against their complements</h2>"
                   '<p class="note">f_p is a part, f_not_p everything but it; a part should carry its attribute '
                   "and its complement much less of it (ratio = complement's normalized accuracy / the part's).</p>"
                   "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>")
    mem = metrics.get("memorisation") or {}
    if mem:
        rows = []
        for split, r in (mem.get("rmse") or {}).items():
            if isinstance(r, dict):
                rows.append([f"{_e(split)}: RMSE / PSNR / SSIM",
                             f"{_num(r.get('rmse'), '{:.2f}')} / {_num(r.get('psnr'), '{:.2f}')} / {_num(r.get('ssim'))}"])
            else:
                rows.append([f"{_e(split)} (test - train RMSE)", _num(r, "{:.2f}")])
        rows += [[_e(k), _num(v) if isinstance(v, (int, float)) else _e(v)] for k, v in (mem.get("summary") or {}).items()]
        out.append("<h2>Reconstruction RMSE and memorisation</h2>"
                   '<p class="note">RMSE in 0-255 units; for reconstructions of test images, the nearest training '
                   "images by SSIM (a model that memorises reconstructs test faces as training faces).</p>"
                   + _table(["figure", "value"], rows))
    return "".join(out)


def _switch_sampling_section(metrics: Mapping[str, Any]) -> str:
    """Switch edits (parts that hold attribute values) and sampling / few-shot transfer."""
    out = []
    sw = metrics.get("switch_edits") or {}
    if sw.get("attributes"):
        rows = [[_e(a), _e(t), _num(r.get("success_rate")), _num(r.get("success_rate_all")),
                 _num(r.get("unedited_rate")), _e(r.get("n"))]
                for a, e in sw["attributes"].items() for t, r in (e.get("targets") or {}).items()]
        out.append("<h2>Switch edits</h2>"
                   f'<p class="note">The attribute part set to each value and decoded; the evaluation oracle reads '
                   f"the edit (success: images not already of that value; control: unedited reconstructions). "
                   f"Reconstruction MSE {_num(sw.get('reconstruction_mse'), '{:.5f}')} over {_e(sw.get('n'))} "
                   "test images.</p>"
                   + _table(["attribute", "target", "success", "success (all)", "control", "n"], rows))
    sa = metrics.get("sampling") or {}
    if sa:
        rows = []
        for key in ("transfer", "fewshot"):
            for k, v in (sa.get(key) or {}).items():
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    rows.append([f"{_e(key)}: {_e(k)}", _num(v) if isinstance(v, (int, float)) else _e(v)])
        out.append(f"<h2>Sampling and transfer of {_e(sa.get('part'))}</h2>"
                   '<p class="note">Random rest codes decoded with a fixed attribute part; transfers of the '
                   "attribute part read back by the oracle; few-shot transfer of classes never seen in training.</p>"
                   + _table(["figure", "value"], rows))
    return "".join(out)


def _section_of(title: str, path: Path) -> str:
    key = (title + " " + path.stem).lower()
    for word, name in SECTIONS:
        if word in key:
            return name
    return "Other figures"


def _figure_sections(figures: Mapping[str, str | os.PathLike], run_dir: Path) -> str:
    by_section: dict[str, list[str]] = {name: [] for _, name in SECTIONS}
    by_section["Other figures"] = []
    for title, path in figures.items():
        path = Path(path)
        if not path.is_absolute() and (run_dir / path).exists():
            path = run_dir / path
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        by_section[_section_of(title, path)].append(
            f'<figure><figcaption>{_e(title)}</figcaption>'
            f'<img alt="{_e(title)}" src="data:image/png;base64,{data}"></figure>')
    out = []
    for name, items in by_section.items():
        if items:
            out.append(f"<h2>Figures: {_e(name)}</h2>" + "".join(items))
    return "".join(out)


def _info_section(metrics: Mapping[str, Any]) -> str:
    rows = []
    ds = metrics.get("dataset") or {}
    if ds:
        rows.append(["dataset", _e(f"{ds.get('name')} ({ds.get('size')} images; {ds.get('n_train')} train, "
                                   f"{ds.get('n_test')} test)")])
    if metrics.get("method"):
        rows.append(["method", _e(metrics["method"])])
    parts = metrics.get("parts") or {}
    if parts:
        rows.append(["latent parts", _e(", ".join(f"{p} ({d})" for p, d in parts.items()))])
    cfg = metrics.get("eval_config") or {}
    if cfg:
        rows.append(["evaluation settings", _e(", ".join(f"{k}={v}" for k, v in cfg.items()))])
    return _table(["", ""], rows) if rows else ""


def render_report(metrics: Mapping[str, Any], figures: Mapping[str, str | os.PathLike], title: str,
                  run_dir: str | os.PathLike = ".") -> str:
    """The report as an HTML string (see ``write_report``)."""
    body = [f"<h1>{_e(title)}</h1>", _info_section(metrics), _headline_section(metrics),
            _leakage_section(metrics.get("leakage") or {}),
            _counterfactual_section(metrics.get("counterfactual") or {}),
            _disentanglement_section(metrics), _entropy_section(metrics.get("entropy") or {}),
            _hopkins_section(metrics.get("hopkins") or {}), _fewshot_section(metrics.get("fewshot") or {}),
            _frechet_section(metrics.get("frechet") or {}, metrics.get("oracle") or {}),
            _identity_section(metrics.get("identity") or {}),
            _complements_section(metrics), _switch_sampling_section(metrics), _figure_sections(figures, Path(run_dir))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def write_report(run_dir: str | os.PathLike, metrics: Mapping[str, Any],
                 figures: Mapping[str, str | os.PathLike], title: str) -> Path:
    """Write ``run_dir/report.html`` atomically: headline, leakage and counterfactual tables, the
    suite's tables (MIG/DCI/SAP, entropy, Hopkins, few-shot, Fréchet), then ``figures`` (title -> PNG path, relative paths taken from ``run_dir``) embedded as
    base64 data URIs and grouped by section. Returns the report's path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    write_text(path, render_report(metrics, figures, title, run_dir))
    return path
