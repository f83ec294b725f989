#!/usr/bin/env bash
# Static SASS instruction mix of the CUDA kernels, without a GPU: assembles the PTX that the
# NVRTC compile test writes (target/tmp/ptx/*.ptx: every kernel family for sm_80/sm_90 and the
# shape-specialized builds) with ptxas for sm_90, disassembles it, and prints per file the
# instruction count and the most frequent opcodes. A static count is not the executed count
# (Nsight Compute's, scripts/gpu-profile.sh), but it shows what a kernel change did to the code
# between GPU sessions, e.g. index arithmetic (IMAD, LEA, IADD3) against FFMA and LDS.
#
#   bash scripts/sass-mix.sh                  # every PTX file of the last compile test
#   bash scripts/sass-mix.sh FILE.ptx ...     # these files
#   TOP=40 bash scripts/sass-mix.sh           # more opcodes per file
#   SASS_DIR=/tmp/sass bash scripts/sass-mix.sh   # also keep the disassembly (FILE.sass)
#   LOOPS=1 bash scripts/sass-mix.sh FILE.ptx     # also list its loops with their source lines
#                                                 # (scripts/sass_loops.py)
#
# Needs the CUDA venv of .ci/run (target/cuda-venv: NVRTC and ptxas 13.0). cuobjdump and
# nvdisasm come from NVIDIA's PyPI wheels into target/sass-venv (13.2 is the first 13.x release
# of those wheels; it reads ptxas 13.0's sm_90 cubins).
set -euo pipefail
cd "$(dirname "$0")/.."
top=${TOP:-12}
cuda_nv="$(echo target/cuda-venv/lib/python3*/site-packages/nvidia/cu13)"
if [[ ! -x $cuda_nv/bin/ptxas ]]; then
    echo "no ptxas under target/cuda-venv: run .ci/run (or its CUDA step) first" >&2
    exit 1
fi
sass_venv=target/sass-venv
sass_wheels="nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86"
if [[ ! -f $sass_venv/.installed || $(cat "$sass_venv/.installed") != "$sass_wheels" ]]; then
    rm -rf "$sass_venv"
    python3 -m venv "$sass_venv"
    "$sass_venv/bin/pip" install --quiet --disable-pip-version-check $sass_wheels
    echo "$sass_wheels" >"$sass_venv/.installed"
fi
sass_nv="$(echo "$sass_venv"/lib/python3*/site-packages/nvidia/cu13)"
export PATH="$PWD/$sass_nv/bin:$PATH"

if [[ $# -eq 0 ]]; then
    if ! compgen -G 'target/tmp/ptx/*.ptx' >/dev/null; then
        cuda_lib="$PWD/$cuda_nv/lib"
        LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" REPTILE_PTXAS="$PWD/$cuda_nv/bin/ptxas" \
            REPTILE_REQUIRE_NVRTC=1 cargo test --release --test cuda_nvrtc >/dev/null
    fi
    set -- target/tmp/ptx/*sm_90*.ptx
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for ptx in "$@"; do
    name=$(basename "$ptx" .ptx)
    "$cuda_nv/bin/ptxas" -arch=sm_90 -o "$work/$name.cubin" "$ptx"
    cuobjdump -sass "$work/$name.cubin" >"$work/$name.sass"
    [[ -n ${SASS_DIR:-} ]] && mkdir -p "$SASS_DIR" && cp "$work/$name.sass" "$SASS_DIR/"
    # Instruction lines look like `/*01a0*/  @!P0 FFMA R1, R2, R3, R4 ;`: drop the address and
    # the predicate, keep the opcode without its modifiers.
    sed -nE 's|^ +/\*[0-9a-f]+\*/ +(@!?U?P[0-9T] +)?([A-Z0-9_]+).*|\2|p' "$work/$name.sass" >"$work/$name.ops"
    total=$(wc -l <"$work/$name.ops")
    echo "== $name: $total instructions"
    sort "$work/$name.ops" | uniq -c | sort -rn | head -n "$top" \
        | awk -v t="$total" '{ printf "  %-8s %6d  %5.1f%%\n", $2, $1, 100 * $1 / t }'
    if [[ -n ${LOOPS:-} ]]; then
        # Line information needs the cubin assembled with -lineinfo (the PTX carries it: NVRTC
        # compiles with -lineinfo) and nvdisasm's inlining chains.
        "$cuda_nv/bin/ptxas" -arch=sm_90 -lineinfo -o "$work/$name.l.cubin" "$ptx"
        nvdisasm -gi -c "$work/$name.l.cubin" >"$work/$name.l.sass"
        echo "  loops (static; source lines innermost first):"
        python3 scripts/sass_loops.py "$work/$name.l.sass" "kernels/${name%%.*}.cu" | sed 's/^/  /'
    fi
done
