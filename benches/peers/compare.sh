#!/usr/bin/env bash
# Runs the JAX reference (benches/peers/jax_sine.py) and `reptile bench` back to back on the
# sine Reptile workload and prints task-steps/s of both and their ratio. See README.md.
#
# Environment (all optional):
#   SECONDS_PER_RUN  timed seconds per run, both sides (default 3; each also warms up a quarter
#                    of that, and JAX compiles first)
#   NS               meta-batch sizes n to run (default "1 32 1024")
#   INNER_STEPS      inner steps k (default 5)
#   THREADS          `reptile bench --threads` (default 0 = all cores)
#   JAX_ARGS         extra arguments for jax_sine.py (e.g. "--devices 1", "--outer-per-call 8")
#   REPTILE_ARGS     extra arguments for `reptile bench`
#   PEERS_VENV       the virtual environment with jax (default target/peers-venv; created and
#                    filled with jax[cpu] and numpy by pip if it has no jax)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # the repository root

secs="${SECONDS_PER_RUN:-3}"
ns="${NS:-1 32 1024}"
k="${INNER_STEPS:-5}"
threads="${THREADS:-0}"
venv="${PEERS_VENV:-target/peers-venv}"
read -r -a jax_args <<<"${JAX_ARGS:-}"
read -r -a reptile_args <<<"${REPTILE_ARGS:-}"

if ! "$venv/bin/python" -c 'import jax' >/dev/null 2>&1; then
    echo "setting up $venv (jax[cpu], numpy)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "jax[cpu]" numpy
fi
jax_version="$("$venv/bin/python" -c 'import jax; print(jax.__version__)')"

cargo build --release --quiet

# `task_steps_per_s=<number> gflops=<number>` -> the task-steps/s number (fails on anything else)
parse() {
    local line="$1" who="$2"
    if [[ "$line" =~ ^task_steps_per_s=([0-9.eE+-]+)\ gflops=([0-9.eE+-]+)$ ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo "unexpected last line from $who: '$line'" >&2
        return 1
    fi
}

rows=()
for n in $ns; do
    echo "n=$n: jax ..." >&2
    jax_line="$("$venv/bin/python" benches/peers/jax_sine.py --meta-batch "$n" --inner-steps "$k" \
        --seconds "$secs" ${jax_args[@]+"${jax_args[@]}"} | tail -n 1)"
    echo "  jax:     $jax_line" >&2
    echo "n=$n: reptile ..." >&2
    ours_line="$(target/release/reptile bench --meta-batch "$n" --inner-steps "$k" --threads "$threads" \
        --seconds "$secs" ${reptile_args[@]+"${reptile_args[@]}"} | tail -n 1)"
    echo "  reptile: $ours_line" >&2
    jax_ts="$(parse "$jax_line" jax_sine.py)"
    ours_ts="$(parse "$ours_line" "reptile bench")"
    ratio="$(awk -v a="$ours_ts" -v b="$jax_ts" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')"
    rows+=("| $n | $jax_ts | $ours_ts | $ratio |")
done

echo
echo "sine Reptile, k=$k, ${secs} s timed per run, jax $jax_version (${JAX_ARGS:-default args}), reptile --threads $threads"
echo
echo "| n | jax task-steps/s | reptile task-steps/s | ratio (reptile/jax) |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
