#!/bin/sh
# Tokenizer throughput, llm-count (the module's C tokenizer) side by side
# with tiktoken (npm, WASM) in the same run, on the same bytes:
# English, Japanese and Korean text, a ~4,500-token chat body and a 1 KB
# chat body (chat: framing included, JSON already parsed on both sides).
#
#   bench/tokenizer.sh [ENCODING...]      default: o200k_base cl100k_base
#
# Each figure is the fastest of 5 rounds (the machine may be shared).
# The text inputs repeat t/tokenizer/corpus/*.txt to ~100-200 KB.
set -eu

cd "$(dirname "$0")/.."
sh build/tokenizer.sh >/dev/null

encs=${*:-o200k_base cl100k_base}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for f in english japanese korean; do
    i=0
    while [ $i -lt 100 ]; do
        cat "t/tokenizer/corpus/$f.txt"
        i=$((i + 1))
    done > "$tmp/$f.txt"
done

# a conversation: corpus lines as alternating turns, ~4,500 o200k tokens;
# and a 1 KB body of one system and one user message
node - "$tmp" <<'JS'
const fs = require('fs');
const [dir] = process.argv.slice(2);
const lines = [];
for (const f of ['english', 'japanese', 'korean', 'code', 'json', 'mixed'])
    lines.push(...fs.readFileSync(`t/tokenizer/corpus/${f}.txt`, 'utf8')
        .split('\n').filter(Boolean));
const messages = [{ role: 'system', content: lines.slice(0, 3).join('\n') }];
for (let i = 0; messages.length < 70; i += 3)
    messages.push({ role: messages.length % 2 ? 'user' : 'assistant',
                    content: lines.slice(i % lines.length,
                                         i % lines.length + 3).join('\n') });
fs.writeFileSync(`${dir}/chat.json`, JSON.stringify({ model: 'gpt-4o',
    messages }));
const en = lines.slice(0, 12).join(' ');
const small = { model: 'gpt-4o', messages: [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: en.slice(0, 930) }] };
fs.writeFileSync(`${dir}/chat1k.json`, JSON.stringify(small));
JS

row() {
    # $1 label, $2 encoding, $3 input, $4 mode, $5 C runs, $6 node runs
    c=$(.build/llm-count --encoding "$2" $4 --bench "$5" < "$3" | tail -1)
    nmode=--bench
    [ "$4" = --chat ] && nmode=--bench-chat
    n=$(node t/tokenizer/reference.js "$2" $nmode "$6" < "$3" | tail -1)
    cm=$(echo "$c" | sed 's/.*: \([0-9.]*\) MB\/s.*/\1/')
    nm=$(echo "$n" | sed 's/.*: \([0-9.]*\) MB\/s.*/\1/')
    cns=$(echo "$c" | sed 's/.*, \([0-9]*\) ns per run.*/\1/')
    nns=$(echo "$n" | sed 's/.*, \([0-9]*\) ns per run.*/\1/')
    tok=$(echo "$c" | sed 's/.*bytes, \([0-9]*\) tokens.*/\1/')
    printf '%-12s %-11s %8s %7s %10s %10s %12s %12s %6s\n' "$1" "$2" \
        "$(wc -c < "$3")" "$tok" "$cm" "$nm" "$cns" "$nns" \
        "$(echo "$cm $nm" | awk '{printf "%.1fx", $1 / $2}')"
}

printf '%-12s %-11s %8s %7s %10s %10s %12s %12s %6s\n' input encoding \
    bytes tokens 'C MB/s' 'npm MB/s' 'C ns/run' 'npm ns/run' speedup
for enc in $encs; do
    row english "$enc" "$tmp/english.txt" "" 20 3
    row japanese "$enc" "$tmp/japanese.txt" "" 20 3
    row korean "$enc" "$tmp/korean.txt" "" 20 3
    row chat "$enc" "$tmp/chat.json" --chat 200 20
    row chat-1k "$enc" "$tmp/chat1k.json" --chat 20000 2000
done
