"""OpenCV as every module of this project imports it (`from utils.opencv import cv2`): loaded under the
project's image limits, so a decoder handed a decompression bomb despite the header check refuses it.

`utils.decode.check_image_size` refuses an image whose header claims more than MAX_IMAGE_SIDE a side or
MAX_IMAGE_PIXELS in all before anything decodes it. OpenCV has limits of its own, checked after it reads a
header and before it allocates the image: OPENCV_IO_MAX_IMAGE_WIDTH / _HEIGHT (default 2^20) and
OPENCV_IO_MAX_IMAGE_PIXELS (default 2^30, a 3 GB colour image). It reads them from the environment once,
when its library is loaded, so they can only be set before the first `import cv2` of the process; this
module sets them to the project's limits (a value already in the environment, the user's, is kept) and then
imports cv2. Over a limit, `cv2.imdecode` raises cv2.error instead of returning an image.

The variables are inherited by the processes this one starts (data-loader workers, a torchrun's ranks).
When cv2 was imported before this module (by a script that imports it first), its limits are OpenCV's
defaults: one warning says so, and the header check still refuses oversized images.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

# Larger than any photo a face is cropped from; a header beyond it is a decompression bomb or damage.
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 2**27
OPENCV_LIMITS = {"OPENCV_IO_MAX_IMAGE_WIDTH": MAX_IMAGE_SIDE, "OPENCV_IO_MAX_IMAGE_HEIGHT": MAX_IMAGE_SIDE,
                 "OPENCV_IO_MAX_IMAGE_PIXELS": MAX_IMAGE_PIXELS}



def _limit_opencv() -> None:
    """Put OPENCV_LIMITS in the environment where the user has not set them, before cv2 is loaded."""
    if "cv2" in sys.modules and not set(OPENCV_LIMITS) & set(os.environ):
        log.warning("OpenCV was imported before utils.opencv, so its own image limits are its defaults (%s "
                    "unset); image headers are still checked. Import this project's modules before cv2 to have "
                    "both.", ", ".join(OPENCV_LIMITS))
    for name, value in OPENCV_LIMITS.items():
        os.environ.setdefault(name, str(value))


_limit_opencv()

import cv2  # noqa: E402  (after the limits: OpenCV reads them when its library loads)

__all__ = ["MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "OPENCV_LIMITS", "cv2"]
