"""Table -> Markdown (README, PR comments), LaTeX booktabs (the paper), tidy CSV (further analysis).

All three print the same numbers from the same `Table`; only the markup differs. A cell reads
"76.8 ± 0.9 (n=2)": the n is part of every cell because a mean over 1 seed and over 5 seeds are
different claims (DESIGN.md: "the number of seeds behind every cell").
"""

from __future__ import annotations

import io

import pandas as pd

from analysis.table import Cell, Table

__all__ = [
    "format_cell",
    "latex_escape",
    "render",
    "render_csv",
    "render_latex",
    "render_markdown",
    "tidy_frame",
]

MISSING = "–"  # en dash: no trial (of the aggregated statuses) reported this value
CSV_COLUMNS = ["row", "row_value", "column", "metric", "mean", "std", "n", "best", "scale", "paper"]

# Applied after escaping, so the replacements' own backslashes and braces survive.
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "×": r"$\times$",
    "τ": r"$\tau$",
    "β": r"$\beta$",
    "→": r"$\rightarrow$",
}


def format_cell(cell: Cell, digits: int, pm: str = "±", missing: str = MISSING) -> str:
    """"71.0 ± 1.4 (n=2)"; n=1 -> "71.0 (n=1)" (a single run has no spread); n=0 -> missing."""
    if cell.mean is None:
        return missing
    text = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        text += f" {pm} {cell.std:.{digits}f}"
    return f"{text} (n={cell.n})"


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX text: escape the special characters, spell out a few Unicode signs."""
    out = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
    for char, tex in _LATEX_UNICODE.items():
        out = out.replace(char, tex)
    return out


def _md(text: str) -> str:
    return text.replace("|", r"\|")


def render_markdown(table: Table) -> str:
    """A caption line ("**Title.** caption"), a blank line, then a pipe table."""
    header = [table.row_header, *table.headers] + (["paper"] if table.has_paper else [])
    align = ["---"] + ["---:"] * len(table.headers) + (["---"] if table.has_paper else [])
    lines = [
        f"**{_md(table.title)}.** {_md(table.caption)}",
        "",
        "| " + " | ".join(_md(h) for h in header) + " |",
        "|" + "|".join(align) + "|",
    ]
    for row in table.rows:
        cells = []
        for cell, column in zip(row.cells, table.columns):
            text = format_cell(cell, column.digits)
            cells.append(f"**{text}**" if cell.best else text)
        if table.has_paper:
            cells.append(_md(row.paper) if row.paper else MISSING)
        lines.append("| " + " | ".join([_md(row.label), *cells]) + " |")
    return "\n".join(lines) + "\n"


def render_latex(table: Table) -> str:
    """A booktabs `table` float; the random-init row sits below its own \\midrule."""
    spec = "l" + "r" * len(table.headers) + ("l" if table.has_paper else "")
    header = [table.row_header, *table.headers] + (["paper"] if table.has_paper else [])
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + latex_escape(f"{table.title}. {table.caption}") + "}",
        r"\label{tab:" + table.spec.name + "}",
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(table.rows):
        if row.is_init and i > 0 and not table.rows[i - 1].is_init:  # one rule above baselines
            lines.append(r"\midrule")
        cells = []
        for cell, column in zip(row.cells, table.columns):
            text = format_cell(cell, column.digits, pm=r"$\pm$", missing="--")
            cells.append(r"\textbf{" + text + "}" if cell.best else text)
        if table.has_paper:
            cells.append(latex_escape(row.paper) if row.paper else "--")
        lines.append(" & ".join([latex_escape(row.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def tidy_frame(table: Table) -> pd.DataFrame:
    """One line per cell: row (printed label), row_value (raw), column (header), metric, mean and
    std (scaled, unrounded; std empty for n<2), n, best, scale (divide to get raw units), paper."""
    records = []
    for row in table.rows:
        for cell, column, header in zip(row.cells, table.columns, table.headers):
            records.append(
                {
                    "row": row.label,
                    "row_value": "" if row.is_init else row.key,
                    "column": header,
                    "metric": f"{column.metric}{row.suffix}" if row.is_init else column.metric,
                    "mean": cell.mean,
                    "std": cell.std,
                    "n": cell.n,
                    "best": cell.best,
                    "scale": column.scale,
                    "paper": row.paper or "",
                }
            )
    return pd.DataFrame.from_records(records, columns=CSV_COLUMNS)


def render_csv(table: Table) -> str:
    """`tidy_frame` as CSV text."""
    buffer = io.StringIO()
    tidy_frame(table).to_csv(buffer, index=False)
    return buffer.getvalue()


RENDERERS = {"md": render_markdown, "tex": render_latex, "csv": render_csv}


def render(table: Table, fmt: str) -> str:
    """Render by format name: md, tex or csv."""
    return RENDERERS[fmt](table)
