#!/bin/sh
# Builds the Debian package libnginx-mod-http-llm for this machine's
# Debian nginx (bookworm's 1.22.1, trixie's 1.26), with Debian's own
# recipe for nginx modules (nginx-dev's dh-sequence-nginx), and prints
# the path of the .deb.
#
#   build/deb.sh [--lintian]
#
# The vocabularies come from npm before the build (build/tokenizer.sh,
# as for the tests), so that dpkg-buildpackage itself needs no network.
# The build runs in a copy of the tree under /tmp, removed after it; the
# packages and the build's log are left in .build/deb.  --lintian also checks the package and fails on an error.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

lintian=no
[ "${1:-}" = --lintian ] && lintian=yes

pkgs="dpkg-dev debhelper nginx-dev"
[ $lintian = yes ] && pkgs="$pkgs lintian"
# shellcheck disable=SC2086
sh build/deps.sh $pkgs >&2
sh build/tokenizer.sh >/dev/null

out=$top/.build/deb
rm -rf "$out"
mkdir -p "$out"

# The build itself runs in a directory of /tmp named here, not under the
# tree: Debian's recipe gives nginx's configure an absolute build
# directory, and nginx's Makefile generator (auto/make) turns each ".S"
# in that path into ".o" when it names the module's objects, so a tree
# in, say, /home/me/llm.Src cannot build.  The template has no dot.
work=$(mktemp -d /tmp/llm-deb-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"

# the tree as git has it, else as it is on disk
if [ -d .git ] && command -v git >/dev/null 2>&1; then
    git ls-files -z | xargs -0 tar -cf - | tar -C "$work/src" -xf -
else
    tar --exclude=./.build --exclude=./.git -cf - . | tar -C "$work/src" -xf -
fi

(
    cd "$work/src"
    LLM_VOCAB_DIR=$top/.build/npm/node_modules/tiktoken/encoders \
        dpkg-buildpackage -b -us -uc >"$out/build.log" 2>&1 \
        || { tail -40 "$out/build.log" >&2; exit 1; }
)
# what dpkg-buildpackage leaves beside the tree: the packages, and the
# .changes and .buildinfo that lintian reads them from
find "$work" -maxdepth 1 -type f -exec cp {} "$out/" \;

deb=$(ls "$out"/libnginx-mod-http-llm_*.deb | grep -v dbgsym | head -1)
# and under a name without the version, for docker/Dockerfile's COPY
ln -f "$deb" "$out/libnginx-mod-http-llm.deb"

if [ $lintian = yes ]; then
    lintian --fail-on error --info "$out"/*.changes >&2
fi

echo "$deb"
