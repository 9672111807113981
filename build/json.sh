#!/bin/sh
# Builds .build/json-diff, which compares the module's JSON reader with
# cJSON on files (t/json_reader.t), and .build/json-skip, which compares
# the reply scanner's skip with the byte-by-byte reading
# (t/usage_stream.t); optionally fuzzes both comparisons: wherever the
# reader does not leave a text to cJSON, its tree must be cJSON's, and
# the skip must find what the byte-by-byte reading finds.
#
#   build/json.sh                build .build/json-diff, .build/json-skip
#   build/json.sh --fuzz SECS    also build and run the libFuzzer targets,
#                                SECS seconds each
#
# CC and CFLAGS are honoured.
set -eu

cd "$(dirname "$0")/.."
out=$(pwd)/.build
mkdir -p "$out"

fuzz=""
case "${1:-}" in
--fuzz) fuzz=${2:?--fuzz needs seconds} ;;
"") ;;
*) echo "usage: $0 [--fuzz SECONDS]" >&2; exit 2 ;;
esac

pkgs="libcjson-dev"
[ -n "$fuzz" ] && pkgs="$pkgs clang libclang-rt-14-dev"
# shellcheck disable=SC2086
sh build/deps.sh $pkgs

CC=${CC:-cc}
CFLAGS=${CFLAGS:--O2 -g}
srcs="t/json/json_diff.c src/ngx_http_llm_json_reader.c"
warn="-std=c99 -Wall -Wextra -Werror"

# shellcheck disable=SC2086
$CC $CFLAGS $warn -Isrc -o "$out/json-diff" $srcs -lcjson
echo "json-diff: $out/json-diff"
# shellcheck disable=SC2086
$CC $CFLAGS $warn -Isrc -o "$out/json-skip" t/json/json_skip.c
echo "json-skip: $out/json-skip"

if [ -n "$fuzz" ]; then
    # shellcheck disable=SC2086
    clang -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined -DNGX_HTTP_LLM_FUZZ $warn -Isrc \
        -o "$out/fuzz_json" $srcs -lcjson
    corpus=$out/fuzz-json-corpus
    mkdir -p "$corpus"
    cp t/json/corpus/* "$corpus"/
    "$out/fuzz_json" -max_total_time="$fuzz" -max_len=4096 -timeout=10 \
        -rss_limit_mb=4096 -dict=t/json/json.dict "$corpus"
    echo "fuzz: $out/fuzz_json ran $fuzz seconds without a finding"

    # shellcheck disable=SC2086
    clang -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined -DNGX_HTTP_LLM_FUZZ $warn -Isrc \
        -o "$out/fuzz_json_skip" t/json/json_skip.c
    corpus=$out/fuzz-json-skip-corpus
    mkdir -p "$corpus"
    cp t/json/corpus/* "$corpus"/
    "$out/fuzz_json_skip" -max_total_time="$fuzz" -max_len=4096 \
        -timeout=10 -rss_limit_mb=4096 -dict=t/json/json.dict "$corpus"
    echo "fuzz: $out/fuzz_json_skip ran $fuzz seconds without a finding"
fi
