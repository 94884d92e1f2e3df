"""utils.opencv: OpenCV loaded under the project's image limits, so its decoder refuses a bomb that got past
the header check. Each case runs in a fresh interpreter: OpenCV reads its limits once, when it is loaded."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from utils.decode import decode_image
from utils.opencv import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, OPENCV_LIMITS, cv2

ROOT = Path(__file__).resolve().parents[1]
# Hands the image straight to OpenCV, past check_image_size, as a reader with a header bug would.
DECODE = """
import sys
import numpy as np
from utils.opencv import cv2
try:
    print("decoded", cv2.imdecode(np.fromfile(sys.argv[1], np.uint8), cv2.IMREAD_COLOR).shape)
except cv2.error as exc:
    print("refused:", exc.err)
"""


def grey_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros, compressed row by row (a 134 M pixel one is about 130 kB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(1 + width)  # filter byte 0, then the row's samples
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def run_python(code: str, *argv: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in OPENCV_LIMITS}
    env.update(env_extra or {}, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True)


@pytest.mark.parametrize(("width", "height"), [(MAX_IMAGE_SIDE + 1, 1),
                                               (MAX_IMAGE_SIDE, MAX_IMAGE_PIXELS // MAX_IMAGE_SIDE + 1)],
                         ids=["side", "pixels"])
def test_opencv_refuses_an_image_over_the_limits_when_a_decoder_is_handed_one(tmp_path, width, height):
    """Regression: OpenCV's default limit is 2^30 pixels (3 GB in colour); the pixels case decodes to
    400 MB without the project's limit."""
    path = tmp_path / "over.png"
    path.write_bytes(grey_png(width, height))
    result = run_python(DECODE, str(path))
    assert result.stdout.startswith("refused: "), result.stdout + result.stderr
    assert "CV_IO_MAX_IMAGE_" in result.stdout


def test_opencv_refusing_a_size_is_a_value_error_of_the_decoder(monkeypatch):
    def refuse(*_):
        raise cv2.error("pixels <= CV_IO_MAX_IMAGE_PIXELS")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    with pytest.raises(ValueError, match="its size is over OpenCV's image limit"):
        decode_image(b"any bytes")


def test_an_image_at_the_limits_still_decodes(tmp_path):
    path = tmp_path / "at.png"
    path.write_bytes(grey_png(MAX_IMAGE_SIDE, 2))
    assert run_python(DECODE, str(path)).stdout.strip() == f"decoded (2, {MAX_IMAGE_SIDE}, 3)"


def test_a_limit_the_user_set_is_kept_and_cv2_imported_first_is_named():
    kept = run_python("import os, utils.opencv; print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])",
                      env_extra={"OPENCV_IO_MAX_IMAGE_PIXELS": "1000"})
    assert kept.stdout.strip() == "1000"
    late = run_python("import cv2, utils.opencv")
    assert "OpenCV was imported before utils.opencv" in late.stderr
