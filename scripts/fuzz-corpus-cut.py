#!/usr/bin/env python3
"""Cuts a fuzz corpus to the few inputs that cover the most edges.

Usage: fuzz-corpus-cut.py CONTROL_FILE CORPUS_DIR MAX

CONTROL_FILE is what libFuzzer's `-merge=1 -use_counters=0
-merge_control_file=…` wrote: the inputs, then a `COV <index> <edges…>` line
per input. Inputs are chosen greedily (most new edges first) until MAX are
chosen or none adds an edge; CORPUS_DIR then holds exactly those (named by
the SHA-1 of their content, as libFuzzer names them) plus any `crash-*`
file, which is a regression input and always kept. Used by `make fuzz-cmin`.
"""

import hashlib
import os
import sys


def main() -> None:
    control, corpus, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lines = open(control).read().split("\n")
    n = int(lines[0])
    files = lines[2 : 2 + n]
    cov = {}
    for line in lines[2 + n :]:
        parts = line.split()
        if parts and parts[0] == "COV":
            cov[int(parts[1])] = set(map(int, parts[2:]))
    total = set().union(*cov.values()) if cov else set()
    covered: set = set()
    chosen = {}
    while len(chosen) < cap and cov:
        best = max(cov, key=lambda i: len(cov[i] - covered))
        if not cov[best] - covered:
            break
        covered |= cov.pop(best)
        data = open(files[best], "rb").read()
        chosen[hashlib.sha1(data).hexdigest()] = data
    # A regression input is kept under its crash- name only.
    for name in os.listdir(corpus):
        if name.startswith("crash-"):
            data = open(os.path.join(corpus, name), "rb").read()
            chosen.pop(hashlib.sha1(data).hexdigest(), None)
    for name in os.listdir(corpus):
        if name not in chosen and not name.startswith("crash-"):
            os.remove(os.path.join(corpus, name))
    for name, data in chosen.items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    print(f"{corpus}: {len(chosen)} inputs cover {len(covered)} of {len(total)} edges")


if __name__ == "__main__":
    main()
