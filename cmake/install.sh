#!/usr/bin/env bash
# Installs reptile's C/C++ development files into PREFIX, the way a package would:
#
#   PREFIX/include/reptile.h, PREFIX/include/reptile.hpp
#   PREFIX/lib/libreptile.a, PREFIX/lib/libreptile.so
#   PREFIX/lib/cmake/reptile/reptileConfig.cmake, reptileConfigVersion.cmake  (find_package)
#   PREFIX/lib/pkgconfig/reptile.pc                                            (pkg-config)
#
# usage: cmake/install.sh PREFIX [LIBDIR]
#   LIBDIR holds the built libreptile.a and libreptile.so (default: target/release, which
#   `cargo build --release --lib` fills). The installed tree is relocatable.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 PREFIX [LIBDIR]" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$1"
libdir="${2:-$root/target/release}"

for f in "$libdir/libreptile.a" "$libdir/libreptile.so"; do
    if [[ ! -f "$f" ]]; then
        echo "$0: $f not found; build it first with: cargo build --release --lib" >&2
        exit 1
    fi
done
version="$(sed -n 's/^#define REPTILE_VERSION_STRING "\(.*\)"$/\1/p' "$root/include/reptile.h")"
if [[ -z "$version" ]]; then
    echo "$0: no REPTILE_VERSION_STRING in include/reptile.h" >&2
    exit 1
fi

mkdir -p "$prefix/include" "$prefix/lib/cmake/reptile" "$prefix/lib/pkgconfig"
install -m 644 "$root/include/reptile.h" "$root/bindings/cpp/reptile.hpp" "$prefix/include/"
install -m 644 "$libdir/libreptile.a" "$prefix/lib/"
install -m 755 "$libdir/libreptile.so" "$prefix/lib/"
install -m 644 "$root/cmake/reptileConfig.cmake" "$prefix/lib/cmake/reptile/"
sed "s/@VERSION@/$version/g" "$root/cmake/reptileConfigVersion.cmake.in" >"$prefix/lib/cmake/reptile/reptileConfigVersion.cmake"
sed "s/@VERSION@/$version/g" "$root/cmake/reptile.pc.in" >"$prefix/lib/pkgconfig/reptile.pc"
echo "installed reptile $version into $prefix"
