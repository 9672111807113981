#!/bin/sh
# Unpacks the Unicode Character Database the tokenizer's tables are
# generated from: Debian's unicode-data 16.0 (sid), the Unicode version
# of the regex tables inside tiktoken 1.0.22, our reference.  Bookworm's
# own unicode-data is 15.0: code points added in 16.0 would split
# differently.
#
#   build/unicode.sh        prints the directory of the UCD files
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
version=16.0
dir="$top/.build/ucd-$version"

if [ ! -f "$dir/DerivedAge.txt" ]; then
    sh "$top/build/deps.sh" xz-utils python3 >&2
    tarball=$(sh "$top/build/apt-source.sh" sid unicode-data "$version.")
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    # the package keeps the UCD as the Unicode Consortium's UCD.zip
    tar xJf "$tarball" -C "$dir.tmp" --strip-components=1 \
        "unicode-data-$version/UCD.zip"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(
                    sys.argv[2])' "$dir.tmp/UCD.zip" "$dir.tmp/ucd"
    mv "$dir.tmp/ucd" "$dir"
    rm -rf "$dir.tmp"
fi

echo "$dir"
