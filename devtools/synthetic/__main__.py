"""``python -m devtools.synthetic OUT --n-patients N --seed S``: write a synthetic cohort as a site datalist.

The output is one more dataset for ``train --datalist`` and ``evaluate``: DICOM files, one FHIR bundle per patient and
``datalist.json`` (with each box's oracle). argparse only; the generator is ``cohort.write_cohort``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devtools.synthetic.cohort import DEFAULT_SPLIT, write_cohort


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (created; existing files of the same names are replaced)")
    parser.add_argument("--n-patients", type=int, default=200, help="patients to write (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed: the same seed gives the same files")
    parser.add_argument("--split", type=float, nargs=3, default=list(DEFAULT_SPLIT),
                        metavar=("TRAIN", "VAL", "TEST"), help="patient fractions per split (default 0.6 0.2 0.2)")
    parser.add_argument("--only", nargs="+", choices=("training", "validation", "test"), default=None,
                        help="write only these lists (the same patients a full write puts there), e.g. --only test")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        path = write_cohort(args.out, args.n_patients, args.seed, args.split, progress=not args.quiet,
                            only=args.only)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
