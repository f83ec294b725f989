#!/usr/bin/env python3
"""Loops of a kernel's SASS with the source line each one comes from.

Reads the output of `nvdisasm -gi -c` (line information with its inlining chain, which needs a
cubin assembled with `ptxas -lineinfo`) and prints, for every backward branch, the loop it
closes: its address range, its static instruction count, its FFMA and barrier counts, its most
frequent opcodes, and the source lines of its first instruction (innermost first, up to three
levels of inlining). A static listing: trip counts are not known here, but a loop that should
not exist (e.g. a run-time loop over constants that the compiler did not fold, which shows as
a small loop with jump tables, BRX) stands out. Used through `LOOPS=1 scripts/sass-mix.sh`.

    python3 scripts/sass_loops.py FILE.sass kernels/FAMILY.cu
"""
import collections
import os
import re
import sys


def main():
    sass, source = sys.argv[1], sys.argv[2]
    # The source as NVRTC compiled it: the include line replaced by the header (src/cuda/kernels.rs).
    text = open(source, encoding="utf-8").read()
    header = os.path.join(os.path.dirname(source), "common.cuh")
    text = text.replace('#include "common.cuh"', open(header, encoding="utf-8").read(), 1)
    src = text.split("\n")
    ins, labels, pending, chain, lines = [], {}, [], [], []
    for text in open(sass, encoding="utf-8"):
        if "//##" in text:
            lines.append(int(re.search(r"line (\d+)", text).group(1)))
            continue
        m = re.match(r"\s*(\.L_x_\d+):", text)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?);", text)
        if m:
            if lines:
                chain, lines = lines, []
            addr = int(m.group(1), 16)
            for label in pending:
                labels[label] = addr
            pending = []
            op = re.sub(r"^@!?U?P\w+\s+", "", m.group(2)).split()[0].split(".")[0]
            ins.append((addr, op, m.group(2), tuple(chain)))
    index = {a: i for i, (a, _, _, _) in enumerate(ins)}
    for i, (addr, op, text, _) in enumerate(ins):
        m = re.search(r"BRA.*?(0x[0-9a-f]+|\.L_x_\d+)", text)
        if op != "BRA" or not m:
            continue
        target = int(m.group(1), 16) if m.group(1).startswith("0x") else labels[m.group(1)]
        if target > addr:
            continue
        body = ins[index[target] : i + 1]
        ops = collections.Counter(b[1] for b in body)
        where = " <- ".join(f"{n}: {src[n - 1].strip()[:48]}" for n in body[0][3][:3] if 0 < n <= len(src))
        top = " ".join(f"{o} {c}" for o, c in ops.most_common(6))
        print(f"{target:#07x}-{addr:#07x} {len(body):5d} instr  FFMA {ops['FFMA']:4d}  BAR {ops['BAR']:2d}  BRX {ops['BRX']:2d}  | {top}")
        if where:
            print(f"    {where}")


if __name__ == "__main__":
    main()
