"""Write an insightface `.bin` verification set from a pairs list and an image folder.

The pairs file holds one pair per line, `path_a path_b 1` for the same person and `... 0` for
different people, paths relative to the image folder; blank lines and lines starting with `#` are
skipped. Images must be aligned 112x112 faces; JPEG and PNG files are stored byte for byte, other
formats as PNG.

    python -m tools.make_bin --pairs pairs.txt --images aligned_lfw/ --output data/my_set/lfw.bin
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import sys
from pathlib import Path

from tools.pack_rec import EncodeOptions, encode_file
from utils.binfile import save_bin
from utils.errors import UserError, entry_point
from utils.files import check_regular_file, make_folder, read_text

BIN_ENCODING = EncodeOptions(encoding="png", keep_bytes=True)  # JPEG/PNG kept byte for byte, others as PNG


def read_pairs(pairs_path: str | Path) -> list[tuple[str, str, bool]]:
    """[(path_a, path_b, issame)] of a pairs file (see the module docstring)."""
    pairs_path = Path(pairs_path)
    pairs = []
    for number, line in enumerate(read_text(pairs_path, "pairs file").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise UserError(f"'{pairs_path}' line {number} is {line[:80]!r}, not 'path_a path_b 0|1'.")
        pairs.append((parts[0], parts[1], parts[2] == "1"))
    if not pairs:
        raise UserError(f"'{pairs_path}' lists no pairs.")
    return pairs


def stored_bytes(path: Path) -> bytes:
    """The bytes a .bin keeps for the image at `path`, after checking it is an aligned 112x112 face."""
    check_regular_file(path, "image", "every image the pairs file lists must exist under --images")
    return encode_file(str(path), BIN_ENCODING)


def make_bin(pairs_path: str | Path, image_dir: str | Path, output: str | Path) -> int:
    """Write the .bin and return its number of pairs."""
    image_dir = Path(image_dir)
    pairs = read_pairs(pairs_path)
    images = [stored_bytes(image_dir / path) for path_a, path_b, _ in pairs for path in (path_a, path_b)]
    make_folder(Path(output).parent)
    save_bin(output, images, [issame for _, _, issame in pairs])
    return len(pairs)


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="text file of 'path_a path_b 0|1' lines")
    parser.add_argument("--images", required=True, help="folder the pair paths are relative to")
    parser.add_argument("--output", required=True, help="the .bin file to write")
    args = parser.parse_args(argv)
    num_pairs = make_bin(args.pairs, args.images, args.output)
    print(f"wrote {num_pairs} pairs to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
