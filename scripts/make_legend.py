"""Draw docs/legend.png: one swatch per taxonomy class with its index and name."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from fundus_studio import labels
from fundus_studio.imageio import save_png

SWATCH = 18  # px
ROW = 24  # px
WIDTH = 260  # px


def draw_legend() -> Image.Image:
    img = Image.new("RGB", (WIDTH, ROW * labels.NUM_CLASSES + 6), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for c in labels.CLASSES:
        y = 4 + ROW * c.index
        draw.rectangle((6, y, 6 + SWATCH, y + SWATCH), fill=c.color, outline=(90, 90, 90))
        draw.text((34, y + 3), f"{c.index}  {c.name} ({c.short})", fill=(20, 20, 20))
    return img


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("docs/legend.png"))
    args = p.parse_args()
    save_png(args.out, draw_legend())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
