#!/bin/sh
# Tokenizer throughput, llm-count (the module's C tokenizer) side by side
# with tiktoken (npm, WASM) in the same run, on the same bytes:
# English, Japanese and Korean text, a mixed corpus (every language,
# code, JSON and emoji of t/tokenizer/corpus, line by line in turn), a
# ~4,500-token chat body and a 1 KB chat body (chat: framing included,
# JSON already parsed on both sides).  Then the worst cases, the C
# tokenizer alone (tiktoken's merge is quadratic in a piece's length,
# and takes minutes on these): one 4 MB word without a split point, 4 MB
# of one letter, 4 MB of random bytes, each also at 400 KB; linear time
# makes the 4 MB run ten times the 400 KB one.
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

# the mixed corpus, and the worst cases at 400 KB and 4 MB
node - "$tmp" <<'JS'
const fs = require('fs');
const [dir] = process.argv.slice(2);
const files = ['english', 'japanese', 'korean', 'chinese', 'code', 'json',
               'emoji', 'mixed'];
const lines = files.map(f => fs.readFileSync(`t/tokenizer/corpus/${f}.txt`,
    'utf8').split('\n').filter(Boolean));
const out = [];
for (let i = 0, n = 0; n < 150000; i++)
    for (const l of lines) {
        const s = l[i % l.length] + '\n';
        out.push(s);
        n += Buffer.byteLength(s);
    }
fs.writeFileSync(`${dir}/mixed.txt`, out.join(''));
let seed = 12345;
const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) >> 16;
for (const size of [400 * 1024, 4096 * 1024]) {
    const word = Buffer.alloc(size), bytes = Buffer.alloc(size);
    for (let i = 0; i < size; i++) {
        word[i] = 97 + rand() % 26;
        bytes[i] = rand() & 0xff;
    }
    const k = size >> 10;
    fs.writeFileSync(`${dir}/word-${k}k.txt`, word);
    fs.writeFileSync(`${dir}/letter-${k}k.txt`, Buffer.alloc(size, 'a'));
    fs.writeFileSync(`${dir}/random-${k}k.txt`, bytes);
}
JS

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
    row mixed "$enc" "$tmp/mixed.txt" "" 20 3
    row chat "$enc" "$tmp/chat.json" --chat 200 20
    row chat-1k "$enc" "$tmp/chat1k.json" --chat 20000 2000
done

# the worst cases: MB/s at 400 KB and at 4 MB, how many times longer the
# 4 MB run took (10 where the time is linear) and how many times the
# instructions (callgrind, counting alone): where the instructions are
# ten times and the time more, what grew is the time memory takes, the
# 4 MB piece's merge state being some 90 MB against 9
sh build/deps.sh valgrind >&2

# instructions of one count of a file, vocabulary load left out
instr() {
    valgrind --tool=callgrind --toggle-collect=ngx_http_llm_count_tokens \
        --callgrind-out-file="$tmp/cg.out" .build/llm-count --encoding "$1" \
        < "$2" >/dev/null 2>&1
    awk '/^summary:/ {print $2}' "$tmp/cg.out"
}

echo
printf '%-12s %-11s %12s %12s %12s %13s\n' 'worst case' encoding \
    'MB/s 400 KB' 'MB/s 4 MB' 'time 4M/400K' 'instr 4M/400K'
for enc in $encs; do
    for w in word letter random; do
        small=$(.build/llm-count --encoding "$enc" --bench 3 \
                < "$tmp/$w-400k.txt" | tail -1)
        big=$(.build/llm-count --encoding "$enc" --bench 1 \
              < "$tmp/$w-4096k.txt" | tail -1)
        sm=$(echo "$small" | sed 's/.*: \([0-9.]*\) MB\/s.*/\1/')
        bm=$(echo "$big" | sed 's/.*: \([0-9.]*\) MB\/s.*/\1/')
        sns=$(echo "$small" | sed 's/.*, \([0-9]*\) ns per run.*/\1/')
        bns=$(echo "$big" | sed 's/.*, \([0-9]*\) ns per run.*/\1/')
        si=$(instr "$enc" "$tmp/$w-400k.txt")
        bi=$(instr "$enc" "$tmp/$w-4096k.txt")
        printf '%-12s %-11s %12s %12s %12s %13s\n' "$w" "$enc" "$sm" "$bm" \
            "$(echo "$bns $sns" | awk '{printf "%.1f", $1 / $2}')" \
            "$(echo "$bi $si" | awk '{printf "%.1f", $1 / $2}')"
    done
done
