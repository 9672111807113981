#!/bin/sh
# Builds nginx with the module (if needed) and runs the test suite.
#
#   scripts/test.sh [--asan] [--static] [1.22|1.26|1.30|packaged|deb] [args]
#
# Defaults to nginx 1.22 (Debian bookworm's) built as a dynamic module.
# Any further arguments go to prove (test files, -v, ...).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

opts=""
while [ $# -gt 0 ]; do
    case "$1" in
    --asan|--static) opts="$opts $1"; shift ;;
    *) break ;;
    esac
done

version=1.22
case "${1:-}" in
1.*|packaged|deb) version=$1; shift ;;
esac

sh build/deps.sh
# shellcheck disable=SC2086
env=$(sh build/nginx.sh $opts "$version")
. "$env"

# the tiktoken vocabularies (npm) and llm-count, for the tokenizer tests
sh build/tokenizer.sh >/dev/null
# json-diff, our JSON reader against cJSON (t/json_reader.t)
sh build/json.sh >/dev/null

echo "testing $LLM_NGINX ${LLM_MODULE:+with $LLM_MODULE}"
"$LLM_NGINX" -V 2>&1 | head -1

# the module's tests in t/, the tools' own in t/tools/
if [ $# -eq 0 ]; then
    set -- t/ t/tools/
fi

exec prove -j2 --timer "$@"
