"""A flame graph as one SVG file from py-spy's collapsed stacks (``frame;frame;... count`` per line), no tools needed.

Each frame is a box as wide as its share of the samples, its callees below it (an icicle graph: the root on top);
hovering one shows its name, samples and share (the SVG ``title``), which any browser displays.
"""

from __future__ import annotations

import zlib
from collections import Counter
from html import escape
from pathlib import Path

WIDTH, ROW, FONT = 1600, 17, 11
MIN_WIDTH = 0.5  # px: narrower boxes are left out (their samples still count in their parents)


def read(path: Path) -> Counter[tuple[str, ...]]:
    """The stacks of a collapsed-stacks file and their sample counts (root frame first)."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


class Node:
    __slots__ = ("children", "samples")

    def __init__(self) -> None:
        self.samples = 0
        self.children: dict[str, Node] = {}


def tree(stacks: Counter[tuple[str, ...]]) -> Node:
    root = Node()
    for stack, count in stacks.items():
        root.samples += count
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, Node())
            node.samples += count
    return root


def render(stacks: Counter[tuple[str, ...]], title: str) -> str:
    root = tree(stacks)
    total = max(root.samples, 1)
    boxes: list[str] = []
    depth_max = 0

    def draw(node: Node, name: str, x: float, depth: int) -> None:
        nonlocal depth_max
        width = WIDTH * node.samples / total
        if width < MIN_WIDTH:
            return
        depth_max = max(depth_max, depth)
        label = escape(f"{name} ({node.samples:,} samples, {100 * node.samples / total:.2f}%)")
        hue = 20 + zlib.crc32(name.split(" ")[0].encode()) % 40
        text = escape(name[: int(width / (FONT * 0.6))]) if width > 3 * FONT else ""
        y = (depth + 1.5) * ROW
        boxes.append(f'<g><title>{label}</title><rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{ROW - 1}" '
                     f'fill="hsl({hue},85%,60%)"/><text x="{x + 3:.1f}" y="{y + ROW - 5:.1f}">{text}</text></g>')
        for child_name, child in sorted(node.children.items()):
            draw(child, child_name, x, depth + 1)
            x += WIDTH * child.samples / total

    draw(root, "all", 0.0, 0)
    height = (depth_max + 3) * ROW
    body = "\n".join(boxes)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" '
            f'font-size="{FONT}"><text x="4" y="{ROW}">{escape(title)}</text>\n{body}\n</svg>\n')
