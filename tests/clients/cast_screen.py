#!/usr/bin/env python3
"""Replay an asciicast v2 file in a headless terminal (pyte) and print the
final screen.

    python3 cast_screen.py FILE.cast

Prints one JSON object: {"width", "height", "lines"} where lines are the
screen's rows with trailing spaces removed. The screen starts at the
header's size, "r" events resize it, "o" events are fed to it, "i" events
are ignored (as a player does). Exits non-zero on a line that is not an
asciicast v2 event.
"""

import json
import sys

import pyte


def main(path):
    with open(path, encoding="utf-8") as f:
        header = json.loads(f.readline())
        if header.get("version") != 2:
            sys.exit(f"not asciicast v2: {header!r}")
        screen = pyte.Screen(header["width"], header["height"])
        stream = pyte.Stream(screen)
        for number, line in enumerate(f, start=2):
            time, code, data = json.loads(line)
            if not isinstance(time, (int, float)) or not isinstance(data, str):
                sys.exit(f"line {number}: not an event: {line!r}")
            if code == "o":
                stream.feed(data)
            elif code == "r":
                cols, rows = (int(n) for n in data.split("x"))
                screen.resize(lines=rows, columns=cols)
            elif code != "i":
                sys.exit(f"line {number}: unknown event code {code!r}")
    json.dump(
        {
            "width": screen.columns,
            "height": screen.lines,
            "lines": [row.rstrip() for row in screen.display],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main(sys.argv[1])
