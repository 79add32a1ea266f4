"""The batch QC report: OUTDIR/report.html, one self-contained page (styles, script and the
thumbnails inline; no external URL), so it opens offline and can be mailed as one file.

The volumes table with each scan's overlay in three planes, QC flags highlighted, sortable by any
column (click its header; flags first by default), a "flagged only" filter and a summary. Rows
are plain HTML; 400 rows with thumbnails render in well under 2 s (bench/batch_bench.py)."""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from engine.core.atomic import atomic_write
from engine.io.space import ETIV_LABEL

SHOWN = [("scan", "Scan"), ("subject", "Subject"), ("session", "Session"), ("status", "Status"),
         ("model_version", "Model version"),
         ("qc_flags", "QC flags"), ("csf_ml", "CSF mL"), ("gm_ml", "GM mL"), ("wm_ml", "WM mL"), ("brain_ml", "Brain mL"), ("tiv_ml", "TIV mL"),
         ("csf_fraction", "CSF/TIV"), ("gm_fraction", "GM/TIV"), ("wm_fraction", "WM/TIV"),
         ("mean_entropy", "Unsure (nats)"), ("voxel_mm", "Voxel mm"), ("seconds", "s")]
DECIMALS = {"csf_ml": 1, "gm_ml": 1, "wm_ml": 1, "brain_ml": 1, "tiv_ml": 1, "csf_fraction": 3, "gm_fraction": 3,
            "wm_fraction": 3, "mean_entropy": 3, "seconds": 1}
NUMERIC = {"csf_ml", "gm_ml", "wm_ml", "brain_ml", "tiv_ml", "csf_fraction", "gm_fraction", "wm_fraction",
           "mean_entropy", "seconds"}
# native vs atlas space (engine/io/space.py): a Space column when any row is atlas-space, and the
# native volumes and OASIS's eTIV when any has an ASF
ML_KEYS = ("csf_ml", "gm_ml", "wm_ml", "brain_ml", "tiv_ml")
NATIVE_SHOWN = [("asf", "ASF"), ("native_brain_ml", "Native brain mL"), ("native_tiv_ml", "Native TIV mL"),
                ("etiv_oasis_ml", ETIV_LABEL)]
DECIMALS.update({"asf": 3, "native_brain_ml": 1, "native_tiv_ml": 1, "etiv_oasis_ml": 1})
NUMERIC |= {"asf", "native_brain_ml", "native_tiv_ml", "etiv_oasis_ml"}


def _atlas_without_asf(row: dict) -> bool:
    return row.get("status") == "ok" and row.get("space") == "atlas" and row.get("asf") in (None, "")


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    """SHOWN, with the mL headers saying which space they are in, and the space columns when needed."""
    ok = [r for r in rows if r.get("status") == "ok"]
    spaces = {r.get("space") or "native" for r in ok}
    unit = ("mL" if "atlas" not in spaces else "atlas-space mL" if spaces == {"atlas"}
            else "mL (atlas-space on atlas rows)")
    out = []
    for k, t in SHOWN:
        out.append((k, t.replace("mL", unit) if k in ML_KEYS else t))
        if k == "tiv_ml" and "atlas" in spaces:
            out.append(("space", "Space"))
            if any(r.get("asf") not in (None, "") for r in ok):
                out += NATIVE_SHOWN
    return out


def _space_text(row: dict) -> str:
    if row.get("space") != "atlas":
        return row.get("space") or ""
    text = f"atlas: {row.get('space_reason') or 'registered to an atlas'}"
    return text + ("; TIV range not checked (no ASF)" if _atlas_without_asf(row) else "")

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 4px} .sum{margin:6px 0 12px;color:#444}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0;user-select:none} th:hover{background:#e6e6e6}
td.n{text-align:right;font-variant-numeric:tabular-nums} tr.flag{background:#fff4e5} tr.err{background:#fde8e8}
td.flags{color:#b00000;font-weight:600;max-width:280px} img{display:block;height:90px;image-rendering:pixelated}
.arrow{color:#888;font-size:10px} label{margin-left:12px}
"""

SCRIPT = """
function sortBy(col, numeric){
  const tb=document.getElementById('rows'); const rows=[...tb.rows];
  const th=document.querySelectorAll('th')[col]; const asc=th.dataset.dir!=='asc';
  document.querySelectorAll('th').forEach(h=>{h.dataset.dir='';h.querySelector('.arrow').textContent=''});
  th.dataset.dir=asc?'asc':'desc'; th.querySelector('.arrow').textContent=asc?' \\u25b2':' \\u25bc';
  const key=r=>{const t=r.cells[col].dataset.v??r.cells[col].textContent; if(!numeric) return t.toLowerCase();
                const x=parseFloat(t); return isNaN(x)?-Infinity:x;};
  rows.sort((a,b)=>{const x=key(a),y=key(b); return (x<y?-1:x>y?1:0)*(asc?1:-1)});
  rows.forEach(r=>tb.appendChild(r));
}
window.addEventListener('load',()=>{document.body.dataset.loadMs=Math.round(performance.now())});
function onlyFlagged(on){document.querySelectorAll('#rows tr').forEach(r=>{
  r.style.display=(!on||r.classList.contains('flag')||r.classList.contains('err'))?'':'none'})}
"""


def _thumb(outdir: Path, key: str) -> str:
    p = outdir / "thumbs" / f"{key}.png"
    if not p.is_file():
        return ""
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<img loading="lazy" alt="{html.escape(key)} overlay" src="data:image/png;base64,{data}">'


def render(outdir: Path, rows: list[dict], model_text: str = "") -> str:
    flagged = sum(1 for r in rows if r.get("qc_flags"))
    failed = sum(1 for r in rows if r.get("status") != "ok")
    # flags and errors first, then by scan name
    rows = sorted(rows, key=lambda r: (r.get("status") == "ok", not r.get("qc_flags"), r.get("scan", "")))
    columns = _columns(rows)
    head = "".join(f'<th onclick="sortBy({i + 1},{str(k in NUMERIC).lower()})">{html.escape(t)}<span class="arrow">'
                   f'</span></th>' for i, (k, t) in enumerate(columns))
    body = []
    for r in rows:
        cls = "err" if r.get("status") != "ok" else ("flag" if r.get("qc_flags") else "")
        cells = [f"<td>{_thumb(outdir, r.get('scan', ''))}</td>"]
        for k, _ in columns:
            v = r.get(k, "")
            if k == "qc_flags" and r.get("status") != "ok":
                v = f"error: {r.get('error', '')}"
            if k == "space":
                v = _space_text(r)
            td = ' class="n"' if k in NUMERIC else (' class="flags"' if k == "qc_flags" else "")
            shown = "" if v is None else str(v)
            if k in DECIMALS and shown:
                try:
                    shown = f"{float(shown):.{DECIMALS[k]}f}"
                except ValueError:
                    pass
            # sorting uses the full value (data-v); the cell shows it rounded
            cells.append(f'<td{td} data-v="{html.escape(str(v if v is not None else ""))}">{html.escape(shown)}</td>')
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>BrainSeg QC report - {html.escape(outdir.name)}</title><style>{STYLE}</style>"
        f"<script>{SCRIPT}</script></head><body>"
        f"<h1>BrainSeg QC report</h1><div class='sum'>{len(rows)} scans: {len(rows) - failed} segmented, "
        f"{failed} failed, {flagged} flagged for QC. Written {time.strftime('%Y-%m-%d %H:%M')}. "
        + _model_sentence(rows, model_text) +
        "Volumes from the segmentation (TIV = CSF + GM + WM). " + _space_summary(rows) + "Click a column to sort."
        "<label><input type='checkbox' onchange='onlyFlagged(this.checked)'> flagged and failed only</label></div>"
        f"<table><thead><tr><th>Overlay (axial, coronal, sagittal)<span class='arrow'></span></th>{head}</tr></thead>"
        f"<tbody id='rows'>{''.join(body)}</tbody></table></body></html>")


def _model_sentence(rows: list[dict], model_text: str) -> str:
    """The model (issue #20: the report never named it), and a warning when rows came from several."""
    versions = sorted({str(r.get("model_version")) for r in rows if r.get("status") == "ok" and r.get("model_version")})
    text = model_text + " " if model_text else ""
    if len(versions) > 1:
        text += f"Rows come from {len(versions)} model versions ({', '.join(versions)}): compare with care. "
    elif versions and not model_text:
        text += f"Model version {versions[0]}. "
    return html.escape(text)


def _space_summary(rows: list[dict]) -> str:
    """A sentence on atlas-space rows: what their mL are and why some have no TIV range check."""
    atlas = [r for r in rows if r.get("status") == "ok" and r.get("space") == "atlas"]
    if not atlas:
        return ""
    text = (f"{len(atlas)} scan{'s are' if len(atlas) != 1 else ' is'} in atlas space (Space column): "
            "their volumes are atlas-space mL, each head scaled to the atlas's size")
    with_asf = len(atlas) - sum(_atlas_without_asf(r) for r in atlas)
    if with_asf:
        text += (f"; {with_asf} with OASIS's ASF {'have' if with_asf != 1 else 'has'} native mL (atlas mL / ASF) "
                 f"and {ETIV_LABEL} too")
    missing = len(atlas) - with_asf
    if missing:
        text += (f". The TIV range check is for a brain's own TIV, so it was not applied to the {missing} "
                 "atlas-space scan" + ("s" if missing != 1 else "") + " without an ASF (give --asf or --oasis-csv)")
    return html.escape(text) + ". "


def model_summary(model_dir: str | Path | None) -> str:
    """One sentence on the model that segmented: architecture, version, and its model.json record
    (shipped: when and how long it trained; a fine-tune: its parent and its held-back Dice)."""
    if model_dir is None:
        return ""
    from engine.nets.weights import WeightsError, read_model_dir

    try:
        info = read_model_dir(model_dir, verify=False)
    except WeightsError as exc:
        return f"Model: {model_dir} (unreadable: {exc})."
    m = info.meta
    arch = {"unet": "U-Net", "enet": "ENet"}.get(info.arch, info.arch)
    text = f"Model: {arch}, version {info.version}"
    if m.get("parent"):
        after = (m.get("after") or {}).get("mean_tissue_dice")
        text += (f", fine-tuned from {m['parent']} on {m.get('created', '?')}"
                 + (f" (held-back mean tissue Dice {after:.3f})" if isinstance(after, (int, float)) else ""))
    else:
        t = m.get("training") or {}
        bits = [f"trained {t['trained_at']}" if t.get("trained_at") else "",
                f"{t['minutes']:g} min" if isinstance(t.get("minutes"), (int, float)) else ""]
        bits = [b for b in bits if b]
        text += " (shipped" + (": " + ", ".join(bits) if bits else "") + ")"
    from engine.infer.inference import secondary_folder

    second = secondary_folder(model_dir)
    if second is not None:
        try:
            text += (f"; coronal and sagittal planes by {read_model_dir(second, verify=False).version}, "
                     "a smaller network distilled from it (FP32 runs; INT8 runs use the model's own)")
        except WeightsError as exc:
            text += f"; its secondary planes' network is unreadable ({exc})"
    return text + "."


def write_report(outdir: str | Path, rows: list[dict], model_dir: str | Path | None = None) -> Path:
    """report.html; `model_dir` names the model in the summary (each row's version is a column)."""
    outdir = Path(outdir)
    text = render(outdir, rows, model_summary(model_dir))
    path = outdir / "report.html"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
