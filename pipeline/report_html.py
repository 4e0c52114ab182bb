"""The report as one HTML page: no scripts, no external resources, figures by relative link."""

from __future__ import annotations

import html
import json
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #3b6ea5;padding-bottom:.3em}
h2{font-size:1.25em;margin-top:2em;color:#23466e}
.seed{color:#5a6272;font-style:italic;margin:-.6em 0 .6em}
.status{display:inline-block;padding:.1em .6em;border-radius:4px;background:#f3e2c7;color:#6b4a10}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #c9d1dc;padding:.25em .55em;text-align:right}
th{background:#eaf0f7}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #dde3ea;margin:.4em 0}
.kv{font-size:.85em;color:#333;background:#f6f8fa;padding:.5em .8em;border-radius:4px;overflow-x:auto}
nav a{margin-right:.8em;font-size:.9em}
"""


def _inline(text: str) -> str:
    out, parts = [], html.escape(text).split("`")
    for i, p in enumerate(parts):
        out.append(f"<code>{p}</code>" if i % 2 else p.replace("**", ""))
    return "".join(out)


def md_to_html(md: str) -> str:
    """The markdown this project writes (headings, paragraphs, pipe tables) as HTML."""
    blocks: list[str] = []
    table: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", ":", " "}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            blocks.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()
        if para:
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            if para:
                flush()
            table.append(line)
        elif not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            blocks.append(f"<h3>{_inline(line.lstrip('#').strip())}</h3>")
        else:
            if table:
                flush()
            para.append(line.strip())
    flush()
    return "\n".join(blocks)


def to_html(summary: dict[str, Any]) -> str:
    from pipeline.report import rounded

    secs = summary["sections"]
    nav = "".join(f'<a href="#{s["id"]}">{html.escape(s["seed"].split(" and ")[0])}</a>' for s in secs)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>cimcosim report</title><style>{CSS}</style>"
             f"</head><body><h1>cimcosim report</h1><p>Run folder <code>{html.escape(summary['run_dir'])}</code>, "
             f"generated {summary['generated']}.</p><nav>{nav}</nav>"]
    if summary["stages"]:
        rows = "".join(f"<tr><td>{k}</td><td>{v['status']}</td><td>{v['seconds']}</td><td>"
                       f"{html.escape(str(v['summary'] or ''))}</td></tr>" for k, v in summary["stages"].items())
        parts.append(f"<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds</th><th>summary</th></tr>"
                     f"{rows}</table>")
    for s in secs:
        parts.append(f'<h2 id="{s["id"]}">{html.escape(s["title"])}</h2><p class="seed">Reproduces '
                     f'{html.escape(s["seed"])}</p>')
        if s["status"] != "ok":
            how = f": <code>{html.escape(s['how'])}</code>" if s["how"] else ""
            parts.append(f'<p><span class="status">{html.escape(s["status"])}</span>{how}</p>')
            continue
        if s["caption"]:
            parts.append(f"<p>{_inline(s['caption'])}</p>")
        parts += [f'<img src="{html.escape(f)}" alt="{html.escape(s["id"])}">' for f in s["figures"]]
        parts += [md_to_html(t) for t in s["tables"]]
        for label, key in (("This run", "numbers"), ("Seed", "seed_numbers"), ("Settings", "settings")):
            if s[key]:
                text = json.dumps(rounded(s[key]), indent=1, default=str)
                parts.append(f'<details {"open" if key != "settings" else ""}><summary>{label}</summary>'
                             f'<pre class="kv">{html.escape(text)}</pre></details>')
    parts.append("</body></html>")
    return "\n".join(parts)
