#!/bin/sh
# Prints the Debian mirror this machine's own apt sources name (deb822 or
# one-line format), not its security archive: the repository names no
# mirror of its own.
set -eu

apt_uris() {
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" || $1 == "deb-src" {
                 for (i = 2; i <= NF; i++)
                     if ($i ~ /^[a-z]+:\/\//) { print $i; break } }'
}

mirror=$(apt_uris | grep -v -e security -e '^cdrom:' | grep '/debian/*$' |
         head -1)

if [ -z "$mirror" ]; then
    echo "build/apt-mirror.sh: no Debian mirror in /etc/apt/sources.list" \
         "or /etc/apt/sources.list.d/" >&2
    exit 1
fi

echo "$mirror"
