"""Labelled image grids for comparisons."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 22
PADDING = 4


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]], column_labels: Sequence[str], row_labels: Sequence[str] = ()
) -> Image.Image:
    """Arrange ``rows`` of equal-size images with column labels on top and row labels (which may span several
    lines) at left."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest_label = max((int(probe.textlength(text, font=font)) for text in column_labels), default=0)
    cell_w, cell_h = rows[0][0].size
    scale = max(1, -(-(widest_label + 2 * PADDING) // cell_w))  # small cells grow so labels fit
    cell_w, cell_h = cell_w * scale, cell_h * scale
    row_label_w = max(
        (int(probe.textlength(line, font=font)) for text in row_labels for line in text.splitlines()), default=0
    )
    row_label_w = row_label_w + 2 * PADDING if row_labels else 0
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (row_label_w + columns * cell_w, LABEL_HEIGHT + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for column, text in enumerate(column_labels):
        draw.text((row_label_w + column * cell_w + PADDING, PADDING), text, fill="black", font=font)
    for row_index, row in enumerate(rows):
        top = LABEL_HEIGHT + row_index * cell_h
        if row_labels:
            text = row_labels[row_index]
            _, text_top, _, text_bottom = draw.multiline_textbbox((0, 0), text, font=font)
            middle = top + (cell_h - (text_bottom - text_top)) // 2
            draw.multiline_text((PADDING, middle), text, fill="black", font=font)
        for column, image in enumerate(row):
            cell = image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
            grid.paste(cell, (row_label_w + column * cell_w, top))
    return grid
