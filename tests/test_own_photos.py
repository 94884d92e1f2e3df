"""The "Your own photos" block of docs/using_models.md runs as written: photos -> aligned crops -> .rec -> .bin ->
training -> evaluation, on two "people" made of the astronaut photo (colour and grey, each flipped and rescaled).

The block's commands run in this process (each tool's `main(argv)`), so only the forms it uses are
understood: `python -m MODULE ARGS`, `python SCRIPT.py ARGS`, and `cat > FILE <<'END'` here-documents; any
other line fails the test, so the page cannot drift from what is checked.
"""

import importlib
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
from skimage import data

from utils.opencv import cv2

REPO = Path(__file__).resolve().parent.parent
YUNET = REPO / "tests" / "data" / "yunet" / "face_detection_yunet.onnx"
HEREDOC = re.compile(r"cat > (\S+) <<'(\w+)'$")


def readme_block() -> list[str]:
    """The lines of the first bash block under docs/using_models.md's "## Your own photos" heading."""
    section = (REPO / "docs" / "using_models.md").read_text().split("## Your own photos", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0].splitlines()


def parse(lines: list[str]) -> list[tuple[str, object, object]]:
    """[("write", path, text) | ("run", program, argv)] with continuation lines joined and comments dropped."""
    steps, lines = [], iter(lines)
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + next(lines).strip()
        heredoc = HEREDOC.match(line)
        if heredoc:
            body = []
            for body_line in lines:
                if body_line == heredoc.group(2):
                    break
                body.append(body_line + "\n")
            steps.append(("write", heredoc.group(1), "".join(body)))
            continue
        words = shlex.split(line)
        assert words[0] == "python", f"docs line the test cannot run: {line}"
        if words[1] == "-m":
            steps.append(("run", words[2], words[3:]))
        else:
            assert words[1].endswith(".py"), f"docs line the test cannot run: {line}"
            steps.append(("run", words[1].removesuffix(".py"), words[2:]))
    return steps


def write_photos(folder: Path) -> None:
    """photos/anna/1-4.jpg: the astronaut, flipped, at 0.7 and (flipped) at 1.4 times the size;
    photos/ben/1-4.jpg: the same in grey."""
    colour = data.astronaut()[:, :, ::-1]  # RGB -> BGR for imwrite
    grey = cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    for person, image in (("anna", colour), ("ben", grey)):
        variants = [image, image[:, ::-1], cv2.resize(image, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA),
                    cv2.resize(image[:, ::-1], None, fx=1.4, fy=1.4, interpolation=cv2.INTER_CUBIC)]
        (folder / "photos" / person).mkdir(parents=True)
        for number, variant in enumerate(variants, start=1):
            cv2.imwrite(str(folder / "photos" / person / f"{number}.jpg"), np.ascontiguousarray(variant))


def test_readme_own_photos_block_runs_as_written(tmp_path, monkeypatch, capsys):
    write_photos(tmp_path)
    shutil.copy(YUNET, tmp_path / "face_detection_yunet_2023mar.onnx")  # the name the page uses
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRANSFACE_DETECTOR_MODEL", raising=False)
    steps = parse(readme_block())
    assert [step[1] for step in steps if step[0] == "run"] == [
        "tools.inference", "tools.pack_rec", "tools.make_bin", "train", "eval.verification", "tools.inference"]
    for kind, target, payload in steps:
        if kind == "write":
            Path(target).write_text(payload)
        else:
            assert importlib.import_module(target).main(payload) == 0, f"{target} {' '.join(payload)}"
    output = capsys.readouterr().out
    assert len(list(Path("aligned").rglob("*.png"))) == 8
    assert (Path("work_dirs/own_photos/model.pt")).is_file()
    assert re.search(r"own_pairs.*accuracy", output, flags=re.IGNORECASE)
    assert re.search(r"cosine similarity: -?\d\.\d+", output)
