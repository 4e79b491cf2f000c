"""Write MetalDAM's pixel sizes (from its metadata database) as a bigseg pixel_size_csv sidecar.

    python scripts/metaldam_pixel_sizes.py ../shared/data/MetalDAM OUT.csv
    bigseg run configs/metaldam.yaml --input ../shared/data/MetalDAM/images --out OUT \
        --set resize=physical --set target_pixel_size=0.0588 --set pixel_size_csv=OUT.csv

The database (SQLite despite its .sql name) gives pixels_per_micron per image;
bigseg wants micrometres per pixel.
"""

import csv
import sqlite3
import sys
from pathlib import Path


def main(data_dir: str, out_csv: str) -> None:
    con = sqlite3.connect(str(Path(data_dir) / "MetalDAM_metadata.sql"))
    rows = con.execute("select image_path, pixels_per_micron from micrograph").fetchall()
    with open(out_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "pixel_size_um"])
        for path, ppm in rows:
            w.writerow([Path(path).stem, f"{1.0 / float(ppm):.6f}"])
    print(f"wrote {len(rows)} pixel sizes to {out_csv}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
