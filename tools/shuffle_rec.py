"""Write a shuffled copy of a RecordIO dataset, keeping its layout valid.

insightface's layout stores each identity's images as one key range (named by its identity record),
so the copy permutes the identities and the images inside each one, renumbers the image keys 1..N and
rewrites the header and identity records (exact at any size: the identities' images are found from the
image records' labels, not from the identity records' float32 ranges, rounded above 2^24 images). Files with
no header record are shuffled record by record, keeping each record's key and bytes. `property` is copied.

    python -m tools.shuffle_rec data/my_set/ data/my_set_shuffled/ --seed 0
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset import RecordDataset
from tools.pack_rec import as_ints, pack_order, write_records
from utils.errors import UserError, entry_point
from utils.files import atomic_write_bytes, make_folder, read_bytes
from utils.record_index import refresh_index_cache
from utils.recordio import IndexedRecordWriter, class_label, unpack


def shuffle_records(input_dir: str | Path, output_dir: str | Path, *, seed: int = 0, overwrite: bool = False,
                    progress: bool = False) -> int:
    """Shuffle `input_dir`'s train.rec/train.idx into `output_dir`; returns the number of images.

    Memory: besides the dataset's index, an int32 label and an int32 position per image (NumPy arrays,
    about 12 B per image with the sort's temporary; Python lists of them held 134 B).
    """
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
        order = np.random.default_rng(seed).permutation(len(reader))  # [num_records]
        with IndexedRecordWriter(output_dir / "train.rec", output_dir / "train.idx") as writer:
            for position in tqdm(as_ints(order), total=len(order), desc="shuffling", unit="rec", disable=not progress):
                key = int(reader.keys[position])
                writer.write(key, reader.read_at(int(reader.offsets[position]), key))
        if (input_dir / "property").exists():
            atomic_write_bytes(output_dir / "property", read_bytes(input_dir / "property", "property file"))
        refresh_index_cache(output_dir / "train.idx")  # write_records does it on the other branch
    return len(source)


def image_labels(source: RecordDataset, progress: bool = False) -> np.ndarray:
    """The class of every image of `source` [num_images] int32, read from the image records' headers: exact
    (labels are whole numbers below 2^24), unlike the identity records' ranges above 2^24 images."""
    reader = source.reader
    labels = np.empty(len(source), dtype=np.int32)
    pairs = zip(as_ints(source.image_keys), as_ints(source.image_offsets))
    for index, (key, offset) in enumerate(tqdm(pairs, total=len(source), desc="reading labels", unit="img",
                                               disable=not progress)):
        labels[index] = class_label(reader.read_header_at(offset, key), f"record key {key} of '{reader.rec_path}'")
    outside = (labels < 0) | (labels >= source.num_classes)
    if outside.any():
        raise UserError(f"record key {int(source.image_keys[np.argmax(outside)])} of '{reader.rec_path}' has a "
                        f"label outside [0, {source.num_classes}); fix `property` or re-pack before shuffling.")
    return labels


def _shuffle_identities(source: RecordDataset, output_dir: Path, seed: int, progress: bool) -> None:
    reader = source.reader
    labels = image_labels(source, progress)
    order, block_labels, block_sizes = pack_order(labels, source.num_classes, shuffle=True, seed=seed)
    del labels  # the records carry their labels
    records = (unpack(reader.read_at(int(source.image_offsets[position]), int(source.image_keys[position])))
               for position in tqdm(as_ints(order), total=len(order), desc="shuffling", unit="img",
                                    disable=not progress))
    write_records(output_dir, block_labels, block_sizes, records, source.num_classes, source.image_size)


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="folder holding train.rec and train.idx")
    parser.add_argument("output", help="folder to write the shuffled copy into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing train.rec in output")
    args = parser.parse_args(argv)
    num_images = shuffle_records(args.input, args.output, seed=args.seed, overwrite=args.overwrite,
                                 progress=sys.stderr.isatty())  # a bar on a terminal, not in a log
    print(f"wrote a shuffled copy of {num_images} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
