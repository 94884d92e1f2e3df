"""utils.decode: one EXIF and colour rule, and every reader (training CPU and GPU paths, pack_rec, .bin, IJB,
inference) giving the same pixels for the same file."""

from __future__ import annotations

import io
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import ImageFolderDataset, RecordDataset, build_loader, collate_encoded
from device_input import BatchJpegDecoder, GpuJpegDecoder
from eval.align import reference_landmarks
from eval.ijb_images import AlignedFaces
from tools import inference, make_bin
from tools.pack_rec import EncodeOptions, encode_file, pack_folder
from utils.binfile import decode_bin_images, load_bin
from utils.decode import decode_image, exif_orientation, image_size_of, jpeg_header, nvjpeg_ready, read_image
from utils.errors import UserError
from utils.images import IMAGE_EXTENSIONS
from utils.opencv import cv2

# What a viewer shows for each EXIF orientation, given the stored pixels [H, W, 3] (the TIFF/EXIF spec).
EXIF_VIEW = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # rotated 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, k=1),  # rotated 90 counter-clockwise
}


def smooth_face(seed: int, height: int = 112, width: int = 112) -> np.ndarray:
    """A smooth random RGB image [H, W, 3] with no symmetry a rotation could hide."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def jpeg_bytes(rgb: np.ndarray, orientation: int | None = None, mode: str = "RGB") -> bytes:
    """A JPEG written by PIL, with an EXIF orientation tag when `orientation` is given."""
    buffer = io.BytesIO()
    extra = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    Image.fromarray(rgb).convert(mode).save(buffer, "JPEG", quality=95, **extra)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_the_spec_says(orientation):
    stored = smooth_face(orientation, height=112, width=96)  # not square: 90-degree turns change the shape
    untagged = decode_image(jpeg_bytes(stored))  # the same JPEG data, no tag
    tagged = jpeg_bytes(stored, orientation)
    assert exif_orientation(tagged) == orientation
    np.testing.assert_array_equal(decode_image(tagged), EXIF_VIEW[orientation](untagged))


def test_colour_conversions_give_three_channel_uint8_rgb():
    rgb = smooth_face(1)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.dstack([rgb, np.arange(112 * 112, dtype=np.uint32).reshape(112, 112) % 256]).astype(np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=16)
    deep = rgb.astype(np.uint16) * 256 + 7  # 16-bit samples whose high byte is the 8-bit value
    cases = {
        "grey": (png_bytes(Image.fromarray(grey)), np.repeat(grey[:, :, None], 3, axis=2)),
        "rgba": (png_bytes(Image.fromarray(rgba)), rgb),  # alpha dropped, not composited
        "palette": (png_bytes(palette), np.asarray(palette.convert("RGB"))),
        "16-bit": (cv2.imencode(".png", deep[:, :, ::-1])[1].tobytes(), rgb),
    }
    for name, (data, expected) in cases.items():
        image = decode_image(data)
        assert image.dtype == np.uint8 and image.shape == (112, 112, 3), name
        np.testing.assert_array_equal(image, expected, err_msg=name)
    cmyk = decode_image(jpeg_bytes(rgb, mode="CMYK"))
    assert cmyk.shape == (112, 112, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 3


def test_nvjpeg_gets_only_jpegs_it_decodes_like_opencv():
    rgb = smooth_face(2)
    assert jpeg_header(jpeg_bytes(rgb)) == (3, False)
    assert nvjpeg_ready(jpeg_bytes(rgb)) and nvjpeg_ready(jpeg_bytes(rgb, orientation=1))
    assert nvjpeg_ready(jpeg_bytes(rgb, mode="L"))
    assert not nvjpeg_ready(jpeg_bytes(rgb, orientation=3))  # torchvision's decoders ignore the rotation
    assert not nvjpeg_ready(jpeg_bytes(rgb, mode="CMYK"))  # torchvision converts CMYK differently
    assert not nvjpeg_ready(png_bytes(Image.fromarray(rgb)))
    assert not nvjpeg_ready(jpeg_bytes(rgb)[:20])  # header cut off


def test_undecodable_bytes_are_a_value_error_and_a_bad_file_names_itself(tmp_path):
    with pytest.raises(ValueError):
        decode_image(b"")
    with pytest.raises(ValueError):
        decode_image(b"not an image")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.jpg' has no image header this project can read"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(UserError, match="image .*missing.jpg' does not exist"):
        read_image(tmp_path / "missing.jpg")


# ---- every reader, the same pixels ----

@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """An identity folder with one JPEG tagged "rotate 90 clockwise" and one plain JPEG, and the upright
    pixels of each (computed from the stored pixels by the EXIF spec, not by our decoder)."""
    root = tmp_path_factory.mktemp("rotated") / "faces"
    (root / "0").mkdir(parents=True)
    stored = smooth_face(3)
    (root / "0" / "a_rotated.jpg").write_bytes(jpeg_bytes(stored, orientation=6))
    (root / "0" / "b_plain.jpg").write_bytes(jpeg_bytes(stored))
    upright = np.ascontiguousarray(EXIF_VIEW[6](decode_image(jpeg_bytes(stored))))
    assert not np.array_equal(upright, decode_image(jpeg_bytes(stored)))  # the tag matters
    return root, upright


def test_training_cpu_and_batch_decoder_paths_give_the_upright_pixels(rotated):
    root, upright = rotated
    expected = torch.from_numpy(upright).permute(2, 0, 1)  # [3, H, W]
    cpu_image, _ = ImageFolderDataset(root)[0]
    assert torch.equal(cpu_image, expected)
    encoded = ImageFolderDataset(root, decode=False)
    sample = encoded[0]
    assert sample[0].shape == (3, 112, 112)  # the worker decoded the tagged JPEG instead of passing bytes
    assert encoded[1][0].dim() == 1  # the plain JPEG goes to torchvision as bytes
    decoder = BatchJpegDecoder("cpu", num_images=2, max_corrupt_fraction=0.0)
    images, _ = decoder(*collate_encoded([sample, encoded[1]]))
    assert torch.equal(images[0], expected)
    raw_bytes = torch.frombuffer(bytearray((root / "0" / "a_rotated.jpg").read_bytes()), dtype=torch.uint8)
    images, _ = decoder([raw_bytes], torch.tensor([0]), ["tagged bytes"])  # a caller handing the bytes over
    assert torch.equal(images[0], expected)


def test_pack_rec_bin_ijb_and_inference_give_the_upright_pixels(rotated, tmp_path):
    root, upright = rotated
    tagged = root / "0" / "a_rotated.jpg"
    stored = encode_file(str(tagged), EncodeOptions(encoding="png", keep_bytes=True))
    assert stored != tagged.read_bytes()  # --keep-bytes re-encodes a rotated JPEG upright
    np.testing.assert_array_equal(decode_image(stored), upright)
    plain = root / "0" / "b_plain.jpg"
    assert encode_file(str(plain), EncodeOptions(keep_bytes=True)) == plain.read_bytes()

    pack_folder(root, tmp_path / "rec", EncodeOptions(encoding="png"))
    assert torch.equal(RecordDataset(tmp_path / "rec")[0][0], torch.from_numpy(upright).permute(2, 0, 1))

    (tmp_path / "pairs.txt").write_text("0/a_rotated.jpg 0/b_plain.jpg 1\n")
    make_bin.make_bin(tmp_path / "pairs.txt", root, tmp_path / "set.bin")
    images = decode_bin_images(load_bin(tmp_path / "set.bin")[0])
    assert torch.equal(images[0], torch.from_numpy(upright).permute(2, 0, 1))

    np.testing.assert_array_equal(inference.load_face(tagged), upright)

    template = reference_landmarks(112)  # landmarks already on the template: alignment is the identity
    crop, _, ok = AlignedFaces(root / "0", ["a_rotated.jpg"], template[None])[0]
    assert ok and torch.equal(crop, torch.from_numpy(upright).permute(2, 0, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decoder_on_cuda_gives_the_upright_pixels(rotated):
    root, upright = rotated
    encoded = ImageFolderDataset(root, decode=False)
    raw_bytes = torch.frombuffer(bytearray((root / "0" / "a_rotated.jpg").read_bytes()), dtype=torch.uint8)
    decoder = GpuJpegDecoder("cuda", num_images=3, max_corrupt_fraction=0.0)
    batch = [encoded[0][0], raw_bytes, encoded[1][0]], torch.tensor([0, 0, 0]), ["worker", "bytes", "plain"]
    images, _ = decoder(*batch)
    expected = torch.from_numpy(upright).permute(2, 0, 1)
    assert images.device.type == "cuda"
    assert torch.equal(images[0].cpu(), expected) and torch.equal(images[1].cpu(), expected)
    plain = torch.from_numpy(decode_image((root / "0" / "b_plain.jpg").read_bytes())).permute(2, 0, 1)
    assert (images[2].cpu().float() - plain.float()).abs().mean() < 2  # nvJPEG and libjpeg differ by rounding


# ---- folders: every file type, nothing dropped silently ----

def test_mixed_format_folder_trains_on_every_file(tmp_path, caplog):
    root = tmp_path / "faces"
    labels_by_pixels = {}
    for identity, suffixes in enumerate([(".jpg", ".JPEG", ".png", ".webp", ".tif"), (".bmp", ".TIFF", ".ppm")]):
        (root / str(identity)).mkdir(parents=True)
        for index, suffix in enumerate(suffixes):
            written = root / str(identity) / f"{index}{suffix.lower()}"
            assert cv2.imwrite(str(written), smooth_face(10 * identity + index)[:, :, ::-1])
            path = written.rename(written.with_name(f"{index}{suffix}"))
            labels_by_pixels[cv2.imread(str(path))[:, :, ::-1].tobytes()] = identity  # OpenCV's own file reader
    (root / "0" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(root)
    assert "skipped 1 files that are not images" in caplog.text and "notes.txt" in caplog.text
    loader = build_loader(dataset, batch_size=3, num_workers=0, drop_last=False, shuffle=True)
    seen = [(image.permute(1, 2, 0).numpy().tobytes(), label) for images, labels in loader
            for image, label in zip(images, labels.tolist())]
    assert len(seen) == len(labels_by_pixels) == 8  # one epoch holds every file once ...
    assert dict(seen) == labels_by_pixels  # ... with its pixels and its identity's label


def test_inference_folder_embeds_every_image_and_names_what_it_skips(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "b.WEBP", "sub/c.tiff"):
        cv2.imwrite(str(tmp_path / name.lower()), smooth_face(0))
        (tmp_path / name.lower()).rename(tmp_path / name)
    (tmp_path / "readme.md").write_text("x")
    with caplog.at_level(logging.WARNING):
        paths = inference.list_images(tmp_path)
    assert [path.relative_to(tmp_path).as_posix() for path in paths] == ["a.jpg", "b.WEBP", "sub/c.tiff"]
    assert "skipped 1 files" in caplog.text and "readme.md" in caplog.text


def test_image_extensions_are_types_opencv_reads(tmp_path):
    from utils.images import IMAGE_EXTENSIONS

    rgb = smooth_face(4)
    for suffix in IMAGE_EXTENSIONS:
        if not cv2.haveImageWriter(f"x{suffix}"):
            continue  # a read-only type of this OpenCV build
        path = tmp_path / f"x{suffix}"
        assert cv2.imwrite(str(path), rgb[:, :, 0] if suffix in (".pbm", ".pgm") else rgb[:, :, ::-1]), suffix
        assert read_image(path).shape[2] == 3, suffix



HUGE = 20000  # a side above utils.decode.MAX_IMAGE_SIDE: 400 M pixels, gigabytes once decoded


def _patched(data: bytes, offset: int, fmt: str) -> bytes:
    """`data` with (HUGE, HUGE) packed at `offset` in the struct format `fmt`."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, HUGE, HUGE)
    return bytes(out)


def _tiff_claiming_huge(data: bytes) -> bytes:
    out = bytearray(data)
    for tag in (256, 257):  # ImageWidth, ImageLength entries: tag, type SHORT or LONG, count 1, value
        for kind, fmt in ((3, "<H"), (4, "<I")):
            at = out.find(struct.pack("<HHI", tag, kind, 1))
            if at >= 0:
                struct.pack_into(fmt, out, at + 8, HUGE)
    return bytes(out)


def _webp_claiming_huge(data: bytes) -> bytes:
    """A lossless WebP (VP8L chunk) whose 14-bit sides claim the format's largest size, 16384 x 16384."""
    at = data.index(b"VP8L") + 8
    assert data[at] == 0x2F, "not a VP8L bitstream"
    bits = struct.unpack_from("<I", data, at + 1)[0]
    out = bytearray(data)
    struct.pack_into("<I", out, at + 1, (bits & ~((1 << 28) - 1)) | 16383 | 16383 << 14)  # width-1, height-1
    return bytes(out)


def _jp2_claiming_huge(data: bytes) -> bytes:
    """A JPEG 2000 file whose image header box and codestream SIZ marker both claim HUGE x HUGE (OpenJPEG
    refuses the two disagreeing)."""
    out = bytearray(data)
    struct.pack_into(">II", out, out.index(b"ihdr") + 4, HUGE, HUGE)  # HEIGHT, WIDTH
    struct.pack_into(">II", out, out.index(b"\xff\x51") + 6, HUGE, HUGE)  # Xsiz, Ysiz (offsets are 0)
    return bytes(out)


def _avif_claiming_huge(data: bytes) -> bytes:
    """An AVIF whose `ispe` property claims 16000 x 16000: below libavif's own limit (16384 x 16384), so its
    parser reads it, above MAX_IMAGE_PIXELS. OpenCV decodes this 300-byte file to 16000x16000 (1.5 GB)."""
    out = bytearray(data)
    struct.pack_into(">II", out, out.index(b"ispe") + 8, 16000, 16000)  # after version and flags
    return bytes(out)


def _bomb(ext: str) -> bytes | None:
    """A small file of type `ext` whose header claims a huge size (HUGE x HUGE unless the format caps it);
    None for a type without a bomb here, which fails the test: every accepted type needs one."""
    pixels = np.full((64, 64, 3), 128, np.uint8)  # OpenJPEG encodes nothing smaller than its 6 resolutions
    if ext in (".hdr", ".pic"):
        return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (HUGE, HUGE) + b"\x80" * 64
    if ext in (".pbm", ".pgm", ".ppm", ".pnm", ".pxm"):
        return b"P6\n%d %d\n255\n" % (HUGE, HUGE) + bytes(192)
    encoded = cv2.imencode(".jpg" if ext in (".jpeg", ".jpe") else ext, pixels)[1].tobytes()
    if ext in (".jpg", ".jpeg", ".jpe"):
        sof = encoded.index(b"\xff\xc0")
        encoded = encoded[:sof] + b"\x00" + encoded[sof:]  # regression: a stray byte hid the frame header
        return _patched(encoded, sof + 1 + 5, ">HH")
    offsets = {".png": (16, ">II"), ".bmp": (18, "<ii"), ".dib": (18, "<ii"), ".sr": (4, ">II"),
               ".ras": (4, ">II"), ".gif": (6, "<HH")}
    if ext in offsets:
        return _patched(encoded, *offsets[ext])
    patchers = {".tif": _tiff_claiming_huge, ".tiff": _tiff_claiming_huge, ".webp": _webp_claiming_huge,
                ".jp2": _jp2_claiming_huge, ".avif": _avif_claiming_huge}
    return patchers[ext](encoded) if ext in patchers else None


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS)
def test_a_small_file_claiming_a_huge_size_is_refused_before_decoding_in_every_type(tmp_path, ext, monkeypatch):
    """Regression: a 9 MB 12000x12000 .hdr took 2.68 GB; a JPEG with a stray byte was decoded in full; a
    300-byte AVIF decodes to 1.5 GB. A type added to IMAGE_EXTENSIONS fails here until it has a bomb."""
    data = _bomb(ext)
    assert data is not None, f"no bomb for '{ext}': add one to _bomb, or stop accepting the type"
    assert len(data) <= 16384  # small: at most the size of an uncompressed 64x64 image
    path = tmp_path / f"bomb{ext}"
    path.write_bytes(data)
    monkeypatch.setattr("utils.decode._decode_bgr", lambda data: pytest.fail("decoded a bomb"))
    with pytest.raises(UserError, match=r"claims \d+x\d+ pixels, more than this project decodes"):
        read_image(path)


@pytest.mark.parametrize("ext", [ext for ext in IMAGE_EXTENSIONS if cv2.haveImageWriter(f"x{ext}")])
def test_the_size_read_from_every_types_header_is_the_size_opencv_decodes(ext):
    """The header check guards the decoder only when both read the same size: a JPEG whose stray byte hid
    the frame header from the reader was decoded in full. Every type OpenCV writes, 70x50."""
    pixels = np.full((50, 70) if ext in (".pbm", ".pgm") else (50, 70, 3), 128, np.uint8)  # those two are grey
    encoded = cv2.imencode(ext, pixels)[1].tobytes()
    assert image_size_of(encoded) == (70, 50)
    assert decode_image(encoded).shape == (50, 70, 3)


def test_an_image_whose_header_cannot_be_read_is_refused_not_decoded_on_trust(tmp_path):
    path = tmp_path / "odd.png"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="has no image header this project can read"):
        read_image(path)
