#!/bin/sh
# Builds the tokenizer's command-line counter, .build/llm-count, from the
# module's own tokenizer source, and installs what it and its tests need:
# the tiktoken vocabularies (npm package "tiktoken", also the reference
# implementation in t/tokenizer_*.t).
#
#   build/tokenizer.sh               build .build/llm-count
#   build/tokenizer.sh --tables      also regenerate the Unicode tables
#   build/tokenizer.sh --fuzz SECS   build and run the libFuzzer target
#
# CC and CFLAGS are honoured.
set -eu

cd "$(dirname "$0")/.."
root=$(pwd)
out=$root/.build
mkdir -p "$out"

fuzz=""
tables=""
while [ $# -gt 0 ]; do
    case $1 in
    --fuzz) fuzz=${2:?--fuzz needs seconds}; shift 2 ;;
    --tables) tables=1; shift ;;
    *) echo "usage: $0 [--tables] [--fuzz SECONDS]" >&2; exit 2 ;;
    esac
done

# valgrind: t/tokenizer_linear.t counts instructions
pkgs="libcjson-dev python3 valgrind"
# Node.js may come from elsewhere (nodesource bundles npm): ask Debian
# only for what is missing
command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs"
command -v npm >/dev/null 2>&1 || pkgs="$pkgs npm"
[ -n "$fuzz" ] && pkgs="$pkgs clang libclang-rt-14-dev"
# shellcheck disable=SC2086
sh build/deps.sh $pkgs

if [ -n "$tables" ]; then
    # Unicode 16.0, as tiktoken's; a relative path in the files' header
    ucd=$(sh build/unicode.sh)
    python3 tools/gen-unicode-tables "${ucd#"$root"/}" src
fi

npm=$out/npm
if [ ! -f "$npm/node_modules/tiktoken/encoders/o200k_base.json" ]; then
    mkdir -p "$npm"
    # npm's own errors (a proxy, a certificate) go to stderr as they are
    if ! npm install --loglevel=error --no-update-notifier --no-audit \
        --no-fund --prefix "$npm" \
        tiktoken@1.0.22 >/dev/null
    then
        echo "build/tokenizer.sh: \"npm install tiktoken@1.0.22\" failed;" \
             "the tokenizer tests need its vocabularies" >&2
        exit 1
    fi
fi

CC=${CC:-cc}
# _FORTIFY_SOURCE as Debian builds packages (build/deb.sh)
CFLAGS=${CFLAGS:--O2 -g -D_FORTIFY_SOURCE=2}
srcs="src/ngx_http_llm_tokenizer.c src/ngx_http_llm_unicode.c
      src/ngx_http_llm_script.c"
warn="-std=c99 -Wall -Wextra -Werror"

# shellcheck disable=SC2086
$CC $CFLAGS $warn -Isrc -o "$out/llm-count" tools/llm-count.c $srcs -lcjson

echo "llm-count: $out/llm-count"
echo "vocabularies: $npm/node_modules/tiktoken/encoders/o200k_base.json"
echo "              $npm/node_modules/tiktoken/encoders/cl100k_base.json"

if [ -n "$fuzz" ]; then
    # libFuzzer ships with clang itself in Debian (libclang-rt-*-dev)
    # shellcheck disable=SC2086
    clang -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined $warn -Isrc \
        -o "$out/fuzz_tokenizer" t/tokenizer/fuzz_tokenizer.c $srcs -lcjson
    corpus=$out/fuzz-corpus
    mkdir -p "$corpus"
    cp t/tokenizer/corpus/*.txt "$corpus"/ 2>/dev/null || true
    LLM_VOCAB_DIR=$npm/node_modules/tiktoken/encoders \
        "$out/fuzz_tokenizer" -max_total_time="$fuzz" -max_len=4096 \
        -timeout=10 -rss_limit_mb=4096 "$corpus"
    echo "fuzz: $out/fuzz_tokenizer ran $fuzz seconds without a finding"
fi
