"""Generate the small synthetic ADE20K- and COCO-format datasets used by tests and demos.

The tool imports the installed package: from a clone, run ``pip install -e .`` first.
"""
import argparse
import os
import os.path as osp
from typing import Optional, Sequence

from dinat_backbone.datasets import sample_data


EPILOG = f"""\
what is written (under 1 MB, identical bytes on every run):
  OUT/ade20k/images/{{training,validation}}/*.jpg
      32 + 8 toy scenes, 64-96 px
  OUT/ade20k/annotations/{{training,validation}}/*.png
      ADE20K labels: 0 = other (ignored with reduce_zero_label=True), index + 1 for the
      ADE classes {', '.join(sample_data.ADE20K_SAMPLE_CLASSES)}
  OUT/coco/{{train2017,val2017}}/*.jpg
      24 + 8 images, 96-128 px
  OUT/coco/annotations/instances_{{train2017,val2017}}.json
      COCO instances (polygons and RLE) of {', '.join(sample_data.COCO_SAMPLE_CLASSES)}
  OUT/coco/annotations/panoptic_{{train2017,val2017}}{{.json,/*.png}}
      COCO panoptic segments (ids as R + 256 G + 256^2 B): the instances above plus the stuff
      classes {', '.join(sample_data.COCO_PANOPTIC_STUFF_CLASSES)}

Each class has its own shape and colour, so a model learns it quickly. Use the folders as
`data_root` of mmseg's ADE20KDataset and of mmdet's CocoDataset (with
metainfo=dict(classes={sample_data.COCO_SAMPLE_CLASSES})) or CocoPanopticDataset."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG)
    parser.add_argument(
        '--out', default=osp.join('data', 'sample'),
        help='output directory; ade20k/ and coco/ are created inside (default: data/sample)')
    parser.add_argument(
        '--if-missing', action='store_true',
        help='only write a dataset that is absent or from an older generator version '
        '(default: always regenerate, which gives the same bytes)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        if args.if_missing:
            paths = sample_data.ensure_sample_data(args.out)
        else:
            paths = sample_data.generate_sample_data(args.out)
    except FileExistsError as e:
        raise SystemExit(str(e))
    for key in ('ade20k', 'coco'):
        files = sum(len(f) for _, _, f in os.walk(paths[key]))
        print(f'{key:7s} {paths[key]}  ({files} files)')


if __name__ == '__main__':
    main()
