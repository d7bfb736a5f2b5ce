#!/usr/bin/env python3
"""Generate a tree of many small files: manyfiles.py DIR [FILES] (default 1,000,000).

1,000 files per directory, 0 to 4 KiB each, half text-like and half random, the same
bytes every time (seeded). Used to show that backup memory does not grow with the number
of files (docs/benchmarks.md)."""
import os
import random
import sys

def main():
    root = sys.argv[1]
    files = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    if os.path.exists(root):
        sys.exit(f"manyfiles.py: {root} exists")
    rng = random.Random(42)
    words = [b"pod", b"volume", b"backup", b"node", b"restore", b"namespace", b"0", b"1"]
    per_dir = 1000
    for d in range((files + per_dir - 1) // per_dir):
        dpath = os.path.join(root, f"{d // 100:02d}", f"{d:05d}")
        os.makedirs(dpath)
        for f in range(min(per_dir, files - d * per_dir)):
            size = rng.randrange(4096)
            if f % 2:
                data = rng.randbytes(size)
            else:
                data = b" ".join(rng.choice(words) for _ in range(size // 5 + 1))[:size]
            with open(os.path.join(dpath, f"f{f:04d}"), "wb") as out:
                out.write(data)
    print(f"{files} files in {root}")

main()
