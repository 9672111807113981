// Reference counts from the npm package "tiktoken" (the tokenizer the C
// code must equal), for t/tokenizer_*.t and bench/tokenizer.sh.
//
//   node reference.js ENCODING --hex-lines < FILE   one count per hex line
//                                                   (ENCODING may be a
//                                                   vocabulary's .json)
//   node reference.js ENCODING --chat < BODY        cookbook chat framing
//   node reference.js ENCODING --bench N < FILE     throughput, like llm-count
//
// Bytes become a string the way node always does it (WHATWG UTF-8
// decoding, U+FFFD for invalid input); special tokens count as text.
'use strict';

const fs = require('fs');
const path = require('path');

const dir = process.env.TIKTOKEN_DIR
    || path.join(__dirname, '..', '..', '.build', 'npm', 'node_modules',
                 'tiktoken');
const { get_encoding, Tiktoken } = require(dir);

// an encoding's name, or a vocabulary file of the same form (a test's own)
const [encoding, mode, arg] = process.argv.slice(2);
let enc;
if (encoding.endsWith('.json')) {
    const v = JSON.parse(fs.readFileSync(encoding, 'utf8'));
    enc = new Tiktoken(v.bpe_ranks, v.special_tokens || {}, v.pat_str);
} else {
    enc = get_encoding(encoding);
}
const input = fs.readFileSync(0);

function count(s) {
    return enc.encode_ordinary(s).length;
}

function chat(body) {
    const messages = Array.isArray(body) ? body : body.messages;
    let total = 0;
    for (const m of messages) {
        total += 3;
        for (const [k, v] of Object.entries(m)) {
            if (typeof v === 'string') {
                total += count(v);
                if (k === 'name') total += 1;
            } else if (k === 'content' && Array.isArray(v)) {
                for (const part of v) {
                    if (part && typeof part.text === 'string') {
                        total += count(part.text);
                    }
                }
            }
        }
    }
    return total + 3;
}

if (mode === '--hex-lines') {
    const out = [];
    for (const line of input.toString('latin1').split('\n')) {
        if (line === '') continue;
        out.push(count(Buffer.from(line, 'hex').toString('utf8')));
    }
    process.stdout.write(out.join('\n') + '\n');

} else if (mode === '--chat') {
    console.log(chat(JSON.parse(input.toString('utf8'))));

} else if (mode === '--bench' || mode === '--bench-chat') {
    const n = parseInt(arg, 10);
    const text = input.toString('utf8');
    const body = mode === '--bench-chat' ? JSON.parse(text) : null;
    const once = () => body ? chat(body) : count(text);
    const c = once();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) once();
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(c);
    console.log(`bench: ${n} runs of ${input.length} bytes, ${c} tokens: `
        + `${(input.length * n / secs / 1e6).toFixed(1)} MB/s, `
        + `${(secs * 1e9 / n).toFixed(0)} ns per run, `
        + `${(secs * 1e9 / n / (input.length / 1024)).toFixed(1)} ns per KB`);

} else {
    console.log(count(input.toString('utf8')));
}
enc.free();
