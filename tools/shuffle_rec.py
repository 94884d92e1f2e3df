"""Write a shuffled copy of a RecordIO dataset, keeping its layout valid.

insightface's layout stores each identity's images as one key range (named by its identity record),
so the copy permutes the identities and the images inside each one, renumbers the image keys 1..N and
rewrites the header and identity records. Files with no header record are shuffled record by record,
keeping each record's key and bytes. `property` is copied.

    python -m tools.shuffle_rec data/my_set/ data/my_set_shuffled/ --seed 0
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import random
import sys
from pathlib import Path

from tqdm import tqdm

from dataset import RecordDataset
from tools.pack_rec import pack_order, write_records
from utils.errors import UserError, entry_point
from utils.files import atomic_write_bytes, make_folder, read_bytes
from utils.recordio import IndexedRecordWriter, class_label, unpack


def shuffle_records(input_dir: str | Path, output_dir: str | Path, *, seed: int = 0, overwrite: bool = False,
                    progress: bool = False) -> int:
    """Shuffle `input_dir`'s train.rec/train.idx into `output_dir`; returns the number of images."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.resolve() == output_dir.resolve():
        raise UserError(f"the output folder '{output_dir}' is the input folder; write the copy elsewhere.")
    source = RecordDataset(input_dir, decode=False)
    if (output_dir / "train.rec").exists() and not overwrite:
        raise UserError(f"'{output_dir / 'train.rec'}' already exists; choose another output folder or pass "
                        "--overwrite.")
    make_folder(output_dir)
    reader = source.reader
    if source.has_header:
        _shuffle_identities(source, output_dir, seed, progress)
    else:
        order = list(range(len(reader)))
        random.Random(seed).shuffle(order)
        with IndexedRecordWriter(output_dir / "train.rec", output_dir / "train.idx") as writer:
            for position in tqdm(order, desc="shuffling", unit="rec", disable=not progress):
                key = int(reader.keys[position])
                writer.write(key, reader.read_at(int(reader.offsets[position]), key))
        if (input_dir / "property").exists():
            atomic_write_bytes(output_dir / "property", read_bytes(input_dir / "property", "property file"))
    return len(source)


def _shuffle_identities(source: RecordDataset, output_dir: Path, seed: int, progress: bool) -> None:
    reader = source.reader
    keys = source.image_keys.tolist()
    offsets = dict(zip(keys, source.image_offsets.tolist()))
    labels = [class_label(reader.read_header_at(offsets[key], key), f"record key {key} of '{reader.rec_path}'")
              for key in keys]
    outside = [key for key, label in zip(keys, labels) if not 0 <= label < source.num_classes]
    if outside:
        raise UserError(f"record key {outside[0]} of '{reader.rec_path}' has a label outside [0, "
                        f"{source.num_classes}); fix `property` or re-pack before shuffling.")
    blocks = pack_order(list(zip(keys, labels)), source.num_classes, shuffle=True, seed=seed)
    ordered_keys = [key for _, block_keys in blocks for key in block_keys]
    records = (unpack(reader.read_at(offsets[key], key))
               for key in tqdm(ordered_keys, desc="shuffling", unit="img", disable=not progress))
    write_records(output_dir, blocks, records, source.num_classes, source.image_size)


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="folder holding train.rec and train.idx")
    parser.add_argument("output", help="folder to write the shuffled copy into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing train.rec in output")
    args = parser.parse_args(argv)
    num_images = shuffle_records(args.input, args.output, seed=args.seed, overwrite=args.overwrite, progress=True)
    print(f"wrote a shuffled copy of {num_images} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
