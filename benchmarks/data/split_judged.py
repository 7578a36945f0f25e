"""Assign each judged question to the tuning or the test half, once, and write it into the file.

Stratified by corpus and question kind (within each, questions ordered by a hash of their id,
then alternated), so both halves hold the same mix. Questions that already have a split keep
it: rerunning never moves a question between halves.

    .venv/bin/python benchmarks/data/split_judged.py benchmarks/data/kb_judged/*.jsonl
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    for name in paths:
        path = Path(name)
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        groups: dict[str, list[dict]] = {}
        for item in items:
            if "split" not in item:
                groups.setdefault(f"{item.get('corpus')}/{item.get('kind')}", []).append(item)
        for group in groups.values():
            group.sort(key=lambda item: hashlib.sha1(item["id"].encode()).hexdigest())
            for n, item in enumerate(group):
                item["split"] = "tune" if n % 2 == 0 else "test"
        path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
        counts = {s: sum(1 for i in items if i["split"] == s) for s in ("tune", "test")}
        print(path.name, counts)


if __name__ == "__main__":
    main(sys.argv[1:])
