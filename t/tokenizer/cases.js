// Test strings for t/tokenizer_*.t, one "label<TAB>hex" line each.
//
//   node cases.js corpus      the files in corpus/, by file, paragraph, line
//   node cases.js edge        hand-picked edge cases of the split patterns
//   node cases.js random [N]  N random strings, fixed seed (default 3000)
//   node cases.js sweep       every code point in contexts that show its
//                             class (letter case, mark, number, space)
'use strict';

const fs = require('fs');
const path = require('path');

const out = [];

function add(label, s) {
    const b = Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8');
    // labels stay on their line: no control characters in them
    out.push(label.replace(/[\x00-\x1f\x7f]/g, '?') + '\t'
             + b.toString('hex'));
}

function corpus() {
    const dir = path.join(__dirname, 'corpus');
    for (const f of fs.readdirSync(dir).sort()) {
        if (!f.endsWith('.txt')) continue;
        const text = fs.readFileSync(path.join(dir, f), 'utf8');
        add(`${f}:whole`, text);
        add(`${f}:crlf`, text.replace(/\n/g, '\r\n'));
        text.split(/\n\s*\n/).forEach((p, i) => add(`${f}:para${i + 1}`, p));
        text.split('\n').forEach((l, i) => {
            if (l === '') return;
            add(`${f}:line${i + 1}`, l);
            add(`${f}:line${i + 1}+nl`, l + '\n');
            add(`${f}:line${i + 1}+sp`, ' ' + l + '  ');
        });
    }
}

function edge() {
    const words = ['s', 'S', 'ſ', 't', 'T', 're', 'RE', 'Re', 'rE', 've',
                   'VE', 'vE', 'm', 'M', 'll', 'LL', 'lL', 'Ll', 'd', 'D',
                   'x', 'ss', 'tt', 'rex', 'mm', 'ddd'];
    for (const w of words) {
        for (const pre of ['', 'don', 'DON', 'It', 'IT', 'é', 'Ǆ', 'ǅ',
                           'ʰ', '中', '1', ' ', '!', 'a\u0301', 'A\u0301']) {
            add(`contraction:${pre}'${w}`, `${pre}'${w}`);
            add(`contraction:${pre}'${w} x`, `${pre}'${w} x`);
            add(`contraction:${pre}'${w}'s`, `${pre}'${w}'s`);
        }
    }
    add('contraction:sentence',
        "I'm sure you're right; we'll see, they've said, she'd know, it's "
        + "HE'S, I'M, YOU'RE, WE'LL, THEY'VE, SHE'D, IT'S, 'tis, 'Twas.");

    const spaces = [' ', '\t', '\n', '\r', '\r\n', '\u000b', '\u000c',
                    '\u00a0', '\u3000', '\u2028', '\u2029', '\u0085',
                    '\u2003', '\u202f', '\u1680', '\u200b'];
    for (let n = 1; n <= 12; n++) {
        for (const sp of spaces) {
            const run = sp.repeat(n);
            for (const [a, b] of [['', ''], ['x', ''], ['', 'x'],
                                  ['x', 'x'], ['x', '\n'], ['!', '1'],
                                  ['', ' x'], ['\n', 'x']]) {
                add(`space:${JSON.stringify(a + run + b)}`, a + run + b);
            }
        }
    }
    for (const mix of [' \n ', '\n \n', ' \r\n ', '\t\n\t', '  \n\n  x',
                       '\n\n\n   x', 'a \n b', 'a\r\n\r\nb', ' \u00a0x',
                       '\u00a0 x', '  x  ', '\r\r\n\n', '\n\r', 'x\n ',
                       ' \u3000 \u3000x', 'x \u2028 y', '\u0085\u0085x']) {
        add(`spacemix:${JSON.stringify(mix)}`, mix);
    }

    for (let n = 1; n <= 40; n++) {
        add(`digits:${n}`, '1234567890'.repeat(4).slice(0, n));
        add(`digits:x${n}`, 'x' + '9'.repeat(n) + ' ');
        add(`digits:arabic${n}`, '٣'.repeat(n));
        add(`digits:full${n}`, '１'.repeat(n) + 'a');
        add(`punct:${n}`, '!?.,;:-_=+*&^%$#@~`|<>()[]{}'.repeat(2)
            .slice(0, n));
        add(`punct:sp${n}`, ' ' + '.'.repeat(n) + '\n\n');
        add(`slash:${n}`, '/'.repeat(n) + '\n/' + '/'.repeat(n % 5));
        add(`slash:x${n}`, 'x' + '!/'.repeat(n) + '\r\n//\n');
        add(`letters:${n}`, 'aB'.repeat(n));
        add(`upper:${n}`, 'ABC'.repeat(n) + 'def');
    }
    for (const s of ['//', '\n//\n', '!\n/\n/', 'a!\r\n/x', ' !!\n\n',
                     '<|endoftext|>', '<|endofprompt|>', '<|fim_prefix|>x',
                     'x<|endoftext|>y', '\u0301', '\u0301a', 'a\u0301',
                     ' \u0301', '!\u0301', '\u0301\u0301\u0301', 'A\u0301b',
                     'ǅa', 'aǅ', 'ǄǅǆA', 'ʰʰa', 'Aʰ', 'ʰA', '中a', 'A中',
                     'AB中cd', 'ABʰ', 'Abc\u0301De', 'Ⅻx', 'x²', '½a',
                     '\u200d', 'a\u200db', '\ufeffabc', '\ufffd', 'a\ufffdb',
                     '\u{10ffff}', '\u{e0001}', '\u{1d400}\u{1d41a}',
                     ' ' + '\u{1f600}'.repeat(5), 'x\u{1f600}y']) {
        add(`misc:${JSON.stringify(s)}`, s);
    }

    // invalid UTF-8: decoded by node as U+FFFD per maximal subpart
    const bad = ['80', 'ff', 'fe', 'c0', 'c1', 'c080', 'c1bf', 'c2', 'e3',
                 'e381', 'e38182', 'e0', 'e080', 'e08080', 'e09f80',
                 'eda080', 'edbfbf', 'ed9fbf', 'f0', 'f09f', 'f09f98',
                 'f09f9880', 'f08f8080', 'f4908080', 'f48fbfbf', 'f5808080',
                 'f8', '808080', 'c2c2', 'e3e3e3', 'c341', 'e38141',
                 'f09f41', 'bfbfbf', 'ef', 'efbf', 'efbfbd'];
    for (const h of bad) {
        const b = Buffer.from(h, 'hex');
        add(`invalid:${h}`, b);
        for (const [a, z] of [['a', 'b'], [' ', ' '], ['1', '2'],
                              ['\n', '\n'], ["'", 's'], ['!', '!'],
                              ['中', '中'], ['Ab', 'cD']]) {
            add(`invalid:${a}${h}${z}`,
                Buffer.concat([Buffer.from(a), b, Buffer.from(z)]));
        }
        add(`invalid:${h}x8`, Buffer.concat(Array(8).fill(b)));
    }

    // long runs: linear time, the heap path, the whole-piece shortcut
    add('long:a', 'a'.repeat(10000));
    add('long:ab', 'ab'.repeat(5000));
    add('long:spaces', ' '.repeat(5000) + 'x');
    add('long:newlines', '\n'.repeat(3000));
    add('long:digits', '7'.repeat(3001));
    add('long:punct', '-'.repeat(4000));
    add('long:kanji', '漢字'.repeat(2000));
    add('long:hangul', '한국어'.repeat(1500));
    add('long:emoji', '\u{1f600}'.repeat(1000));
    add('long:invalid', Buffer.alloc(3000, 0xff));
    add('long:upper', 'A'.repeat(3000) + 'b');
    add('long:mark', 'a' + '\u0301'.repeat(2000));
}

// mulberry32: small, fixed, the same on every machine
function rng(seed) {
    return function () {
        seed = (seed + 0x6d2b79f5) | 0;
        let t = seed;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

function random(n) {
    const r = rng(20240315);
    const pick = (a) => a[Math.floor(r() * a.length)];
    const range = (lo, hi) => String.fromCodePoint(lo
        + Math.floor(r() * (hi - lo + 1)));
    const pools = [
        () => pick('abcdefghijklmnopqrstuvwxyz'),
        () => pick('ABCDEFGHIJKLMNOPQRSTUVWXYZ'),
        () => pick('0123456789'),
        () => pick(' '),
        () => pick('  \t\n\r'),
        () => pick("'''"),
        () => pick('sStTmMdDlLrReEvV'),
        () => pick('!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'),
        () => pick(['the', ' the', 'The', ' and', 'ing', ' of', 'tion',
                    "n't", "'s", "'ll", ' I', '\r\n', '\n\n', '  ', '...',
                    '//', '/*', '*/', '{"', '":', '",', '<|endoftext|>']),
        () => range(0xa0, 0x24f),
        () => range(0x250, 0x2ff),
        () => range(0x300, 0x36f),
        () => range(0x370, 0x3ff),
        () => range(0x400, 0x4ff),
        () => range(0x590, 0x6ff),
        () => range(0x900, 0x97f),
        () => range(0xe00, 0xe7f),
        () => range(0x1100, 0x11ff),
        () => range(0x1e00, 0x1eff),
        () => range(0x2000, 0x206f),
        () => range(0x2070, 0x24ff),
        () => range(0x3000, 0x30ff),
        () => range(0x4e00, 0x9fff),
        () => range(0xac00, 0xd7a3),
        () => range(0xff00, 0xffef),
        () => range(0x1f300, 0x1faff),
        () => range(0x10000, 0x1ffff),
        () => range(0x20000, 0x2ffff),
        () => pick(['\u200d', '\ufe0f', '\u{1f3fb}', '\u0301', '\u00a0',
                    '\u3000', '\u2028', '\u0085', 'ſ', 'ǅ', 'ʰ']),
        () => Buffer.from([Math.floor(r() * 256)]),
        () => Buffer.from(pick(['80', 'c3', 'e381', 'f09f98', 'eda080',
                                'c0af', 'fe', 'f4908080']), 'hex'),
    ];

    for (let i = 0; i < n; i++) {
        const len = 1 + Math.floor(Math.pow(r(), 2) * 200);
        const weights = pools.map(() => r() < 0.25 ? 1 : 0);
        const chosen = pools.filter((_, k) => weights[k]);
        const use = chosen.length ? chosen : pools;
        const parts = [];
        for (let k = 0; k < len; k++) {
            const s = pick(use)();
            parts.push(Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8'));
        }
        add(`random:${i}`, Buffer.concat(parts));
    }
}

function sweep() {
    // a line per 16 code points: a misclassified one changes the count
    const ctx = (c) => `a${c}b ${c}B${c}1${c}'s${c} ${c}\n${c}${c}Ab${c}'T`;
    for (let base = 0; base < 0x110000; base += 16) {
        let s = '';
        for (let cp = base; cp < base + 16; cp++) {
            if (cp >= 0xd800 && cp <= 0xdfff) continue;
            s += ctx(String.fromCodePoint(cp)) + '|';
        }
        if (s) add(`sweep:${base.toString(16)}`, s);
    }
}

const mode = process.argv[2];
if (mode === 'corpus') corpus();
else if (mode === 'edge') edge();
else if (mode === 'random') random(parseInt(process.argv[3] || '3000', 10));
else if (mode === 'sweep') sweep();
else {
    process.stderr.write('usage: cases.js corpus|edge|random [N]|sweep\n');
    process.exit(2);
}
process.stdout.write(out.join('\n') + '\n');
