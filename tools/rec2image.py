"""Unpack a RecordIO dataset into a folder of identity sub-folders (the input format of pack_rec).

Each image payload is written unchanged as `<output>/<label>/<key>.jpg|.png`, and every class of the
set gets its folder, also a class without images. `pack_rec` takes all-integer folder names in numeric
order, so packing the folder again (`pack_rec --keep-bytes`) keeps every label, gaps and empty identities
included, and the class count (and, for files pack_rec wrote, the bytes).

    python -m tools.rec2image data/my_set/ unpacked/
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from dataset import RecordDataset
from tools.pack_rec import as_ints
from utils.decode import JPEG_START, PNG_START
from utils.errors import entry_point
from utils.files import atomic_write_bytes
from utils.recordio import RecordIOError, class_label, unpack


def payload_suffix(payload: bytes) -> str | None:
    """File suffix of an encoded image, None when it is neither JPEG nor PNG."""
    if payload.startswith(JPEG_START):
        return ".jpg"
    if payload.startswith(PNG_START):
        return ".png"
    return None


def unpack_records(input_dir: str | Path, output_dir: str | Path,
                   progress: bool = False) -> tuple[int, list[str]]:
    """Write every image of `input_dir` into `output_dir`; returns (images written, skipped record names)."""
    source = RecordDataset(input_dir, decode=False)
    output_dir = Path(output_dir)
    label_width = len(str(max(source.num_classes - 1, 0)))
    key_width = len(str(int(source.image_keys.max()))) if len(source) else 1
    records = zip(as_ints(source.image_keys), as_ints(source.image_offsets))
    for label in range(source.num_classes):
        (output_dir / f"{label:0{label_width}d}").mkdir(parents=True, exist_ok=True)
    skipped = []
    for key, offset in tqdm(records, total=len(source), desc="unpacking", unit="img", disable=not progress):
        try:
            header, payload = unpack(source.reader.read_at(offset, key))
        except (RecordIOError, ValueError) as exc:
            skipped.append(f"record key {key} ({exc})")
            continue
        suffix = payload_suffix(payload)
        if suffix is None:
            skipped.append(f"record key {key} (payload is neither JPEG nor PNG)")
            continue
        try:
            label = class_label(header, f"record key {key}")
        except RecordIOError as exc:
            skipped.append(str(exc))
            continue
        folder = output_dir / f"{label:0{label_width}d}"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / f"{key:0{key_width}d}{suffix}", payload)
    return len(source) - len(skipped), skipped


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="folder holding train.rec and train.idx")
    parser.add_argument("output", help="folder to write <label>/<key>.jpg files into")
    args = parser.parse_args(argv)
    num_written, skipped = unpack_records(args.input, args.output, progress=sys.stderr.isatty())
    for name in skipped:
        print(f"skipped {name}", file=sys.stderr)
    print(f"wrote {num_written} images to {args.output}" + (f", skipped {len(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
