#!/bin/sh
# The main job: installs what it needs, builds nginx 1.22 with the module,
# starts three simulated Azure OpenAI deployments and nginx in front of
# them, runs the seed scenario direct and through nginx, and prints the
# comparison.  Arguments go to tools/demo (--rpm, --speed, --stream, ...).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)

sh "$top/build/deps.sh"
env=$(sh "$top/build/nginx.sh" "${NGINX_VERSION:-1.22}")
. "$env"

exec python3 "$top/tools/demo" "$@"
