"""Reads ../shared/reference/*_state_dicts.txt (copied to tests/data/): released checkpoints' keys and shapes.

Format: a `[name] key=value ...` header per network, then one `key (d0, d1, ...) dtype` line per tensor.
"""

from __future__ import annotations

import re
from pathlib import Path


def parse_state_dicts(path: Path) -> dict[str, dict]:
    """{name: {"meta": {header key: str value}, "shapes": {state_dict key: shape tuple}}}, keys in file order."""
    networks, current = {}, None
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        header = re.match(r"\[(\w+)\]\s+(.*)", line)
        if header:
            meta = dict(item.split("=") for item in header.group(2).split())
            current = networks.setdefault(header.group(1), {"meta": meta, "shapes": {}})
            continue
        key, shape, _dtype = re.match(r"(\S+) \(([\d, ]*)\) (\S+)", line).groups()
        current["shapes"][key] = tuple(int(d) for d in shape.replace(" ", "").split(",") if d)
    return networks
