#!/bin/sh
# Downloads the upstream tarball of a Debian source package through apt,
# with a private source list and lists dir under .build/apt: the
# system's apt configuration is left alone.
#
#   build/apt-source.sh SUITE PACKAGE VERSION-PREFIX
#
# Prints the tarball's path.  apt checks it against the signed Sources
# index.  Exit 3: the suite lists no such version, or the mirror did not
# serve it (it answers 404 for some of sid's files at times).
set -eu

suite=$1
pkg=$2
want=$3

top=$(cd "$(dirname "$0")/.." && pwd)
apt="$top/.build/apt"

mirror=$(sh "$top/build/apt-mirror.sh")

mkdir -p "$apt/cache/archives/partial" "$apt/dl"
# only the suite needed: a stale Release of another suite cannot fail us
mkdir -p "$apt/parts-$suite" "$apt/lists-$suite/partial"
cat >"$apt/parts-$suite/debian-src.sources" <<END
Types: deb-src
URIs: $mirror
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
END

# Check-Valid-Until: mirrors serving a snapshot have expired Release files
aptopts="-o Dir::Etc::SourceList=/dev/null
         -o Dir::Etc::SourceParts=$apt/parts-$suite
         -o Dir::State::Lists=$apt/lists-$suite
         -o Dir::Cache=$apt/cache
         -o Acquire::Check-Valid-Until=false
         -o APT::Sandbox::User=root"

# shellcheck disable=SC2086
if [ -z "$(find "$apt/lists-$suite" -name '*Sources*' -mmin -1440 \
           2>/dev/null)" ]
then
    apt-get $aptopts update -qq >&2
fi

# shellcheck disable=SC2086
ver=$(apt-cache $aptopts showsrc "$pkg" 2>/dev/null \
      | awk '/^Version: /{print $2}' | grep "^$want" | sort -rV | head -1)

if [ -z "$ver" ]; then
    echo "no $pkg $want source package in Debian $suite lists" >&2
    exit 3
fi

upstream=${ver%%-*}
tarball=$(ls "$apt/dl/${pkg}_$upstream".orig.tar.[gx]z 2>/dev/null | head -1)

if [ -z "$tarball" ]; then
    # the Debian part may 404 while the upstream tarball is served: only
    # the latter is needed
    # shellcheck disable=SC2086
    (cd "$apt/dl" && apt-get $aptopts source --download-only -qq \
        "$pkg=$ver" >/dev/null 2>&1) || true
    tarball=$(ls "$apt/dl/${pkg}_$upstream".orig.tar.[gx]z 2>/dev/null \
              | head -1)
fi

if [ -z "$tarball" ] || [ ! -s "$tarball" ]; then
    echo "could not download $pkg $ver sources from Debian" >&2
    exit 3
fi

echo "$tarball"
