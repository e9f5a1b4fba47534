"""A stamp on a real photo in edit mode: the server's cost from the click to the edited photo, at 512².

    python benchmarks/photo_edit.py [--checkpoints checkpoints] [--size 512] [--runs 10]

The photo is ``skimage.data.retina()``, extracted once (``Studio.extract_photo``) and its style
statistics measured once (``Studio.warm_style``), as the app does when Paint starts from a photo.
Each run stamps a blot haemorrhage at another place of the extracted map
(``editor.stamp_lesion``) and calls ``Studio.edit_photo``; the render in the photo's style and the
Poisson blend are also timed apart. Issue 16's target: ≤ 0.5 s per stamp. Machines are shared:
quote the load average with the times.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, time_call  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--size", type=int, default=512, help="side of the map and the photo")
    p.add_argument("--runs", type=int, default=10, help="timed stamps (after one warm-up)")
    return p.parse_args()


def main() -> int:
    import numpy as np
    from skimage import data

    from fundus_studio import editor, labels, photo_edit
    from fundus_studio.runtime import tune_malloc
    from fundus_studio.studio import Studio

    args = parse_args()
    tune_malloc()  # as app.py does
    studio = Studio.from_checkpoints(args.checkpoints)
    extracted = studio.extract_photo(data.retina(), size=args.size)
    studio.warm_style(extracted.photo)
    photo, original = extracted.photo, extracted.label_map
    rng = np.random.default_rng(0)
    fov = np.argwhere(original == labels.RETINA)  # where a user would stamp
    points = [tuple(map(float, fov[i][::-1] + 0.5)) for i in rng.choice(len(fov), args.runs + 1)]
    maps = [editor.stamp_lesion(original, "blot_haemorrhage", at=p, seed=i, size_dd=0.4) for i, p in enumerate(points)]
    it = iter(range(10**9))

    def one_stamp() -> None:
        i = next(it) % len(maps)
        studio.edit_photo(photo, original, maps[i], seed=0)

    edit = time_call(one_stamp, runs=args.runs, warmup=1)
    render = time_call(lambda: studio.render(maps[0], seed=0, style=photo), runs=args.runs, warmup=1)
    rendered = studio.render(maps[0], seed=0, style=photo)
    region = photo_edit.changed_region(original, maps[0])
    blend = time_call(lambda: photo_edit.poisson_blend(photo, rendered, region), runs=args.runs, warmup=1)
    out = photo_edit.poisson_blend(photo, rendered, region)
    rows = [(what, f"{t.median * 1000:.0f}", f"{t.p90 * 1000:.0f}", f"{t.best * 1000:.0f}")
            for what, t in (("stamp → edited photo (Studio.edit_photo)", edit),
                            ("  render in the photo's style", render), ("  Poisson blend", blend))]
    print(f"size {args.size}², {args.runs} runs; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(markdown_table(["step", "median ms", "p90 ms", "best ms"], rows))
    print(f"seam step across the region's border: {photo_edit.seam_step(out, region):.2f} levels "
          f"(the photo's own: {photo_edit.seam_step(photo, region):.2f}; pasted without blending: "
          f"{photo_edit.seam_step(np.where(region[..., None], rendered, photo), region):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
