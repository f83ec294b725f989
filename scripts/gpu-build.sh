#!/usr/bin/env bash
# Builds the CUDA test binaries here (no GPU needed) into .gpu-bin/ for scripts/gpu-check.sh
# on a GPU machine, which has no Rust toolchain: the device tool carries the folder.
#   bash scripts/gpu-build.sh && <device run, carry [".gpu-bin"]> bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-bin
grep -qx '/.gpu-bin/' .git/info/exclude 2>/dev/null || echo '/.gpu-bin/' >>.git/info/exclude
rm -rf "$out"
mkdir -p "$out"
cargo test --release --no-run --message-format=json --test cuda_gpu --test cuda_probe --test cuda_nvrtc \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    # Debug info stripped: the carry limit is 64 MiB for the whole tree.
    objcopy --strip-debug "$exe" "$out/$name"
done
# The CLI, for `reptile sine --device cuda:0` there.
cargo build --release --lib --bin reptile # the lib target also builds libreptile.a
objcopy --strip-debug target/release/reptile "$out/reptile"
# The C host (examples/c/sine.c), statically linked, for its device-resident run there.
gcc -std=c99 -O2 -Wall -Wextra -pedantic -Werror -Iinclude examples/c/sine.c -o "$out/sine_c" \
    target/release/libreptile.a -lpthread -ldl -lm -Wl,--gc-sections
strip "$out/sine_c"
ls -la "$out"
# Kernel variant folders for gpu-check.sh's kernel-variants step.
bash scripts/gpu-variants.sh
