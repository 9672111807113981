#!/bin/sh
# Installs the Debian packages the build, the tools and the tests need.
# Idempotent and quick when everything is there already.
set -eu

pkgs="build-essential libpcre2-dev zlib1g-dev libssl-dev libcjson-dev
      libhiredis-dev redis-server
      perl libio-socket-ssl-perl python3 openssl curl ca-certificates
      git procps"

[ $# -gt 0 ] && pkgs="$pkgs $*"

missing=""
for p in $pkgs; do
    # Node.js from elsewhere (nodesource) bundles npm, and conflicts
    # with Debian's package of it
    if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then
        continue
    fi

    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null \
        | grep -q 'install ok installed' || missing="$missing $p"
done

[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

echo "installing:$missing"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    --no-install-recommends $missing >/dev/null
