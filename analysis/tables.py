"""Plain-text tables for the analyses' printed output (no COCO, no torch: calibration.py
and the analyses of COCO results share it)."""


def text_table(header, rows, title=""):
    """Right-aligned plain-text table; header and rows are lists of cells."""
    cells = [[str(c) for c in row] for row in [header] + rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(([title] if title else []) + ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells])
