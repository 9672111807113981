#!/bin/sh
# Builds a variant of the module for a benchmark to set beside the one
# build/nginx.sh built (bench/latency.sh VARIANT=): the same nginx 1.22.1
# build, its own compiler lines, from another revision's sources or
# with other flags.
#
#   sh bench/variant.sh OUT.so [REV] [CFLAGS...]
#
# REV is a git revision of this repository (default: the working tree),
# CFLAGS are added to each compile line, e.g.
#   sh bench/variant.sh /tmp/before.so HEAD~1
#   sh bench/variant.sh /tmp/o3.so "" -O3
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bench/variant.sh OUT.so [REV] [CFLAGS...]}
shift
rev=${1:-}
[ $# -eq 0 ] || shift
flags="$*"

. "$(sh "$top/build/nginx.sh" 1.22)"
nginx_src=$top/.build/src/nginx-1.22.1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/mod" "$tmp/objs"

if [ -n "$rev" ]; then
    git -C "$top" archive "$rev" src config | tar -x -C "$tmp/mod"
else
    cp -r "$top/src" "$top/config" "$tmp/mod/"
fi

# the commands nginx's own Makefile runs for the module, pointed at the
# variant's sources and objects
(cd "$nginx_src" && make -n -B -f objs/Makefile modules) \
    | sed -e "s|$top/src/|$tmp/mod/src/|g" \
          -e "s|objs/addon/src/|$tmp/objs/|g" \
          -e "s|objs/ngx_http_llm_module.so|$out|g" \
          -e "s|^cc -c |cc -c $flags |" >"$tmp/build.sh"

(cd "$nginx_src" && sh -e "$tmp/build.sh" >/dev/null)
echo "$out"
