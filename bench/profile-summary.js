#!/usr/bin/env node
'use strict';
// Summarizes V8 .cpuprofile files (from bench/run.js --cpu-prof or node --cpu-prof):
// self time by function and by file, and total (inclusive) time of the heaviest frames.
//
//   node bench/profile-summary.js FILE.cpuprofile... [--top N] [--match REGEX]
//
// --match keeps only the inclusive-time lines whose function or file matches REGEX.
const fs = require('node:fs');
const path = require('node:path');

const args = process.argv.slice(2);
let top = 25;
let match = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--top') top = parseInt(args[++i], 10);
  else if (args[i] === '--match') match = new RegExp(args[++i]);
  else files.push(args[i]);
}
if (!files.length) {
  process.stderr.write('usage: node bench/profile-summary.js FILE.cpuprofile... [--top N] [--match REGEX]\n');
  process.exit(2);
}

const REPO = path.join(__dirname, '..');
const short = (url) => (url || '').replace('file://', '').replace(REPO + '/', '').replace(/^.*node_modules\//, 'node_modules/');
const frameName = (cf) => `${cf.functionName || '(anonymous)'} ${short(cf.url)}${cf.url ? `:${cf.lineNumber + 1}` : ''}`;

const self = new Map();
const selfFile = new Map();
const incl = new Map();
let totalUs = 0;

for (const f of files) {
  const p = JSON.parse(fs.readFileSync(f, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const dt = new Map();
  for (let i = 0; i < p.samples.length; i++) {
    const d = p.timeDeltas[i + 1] ?? 0;
    dt.set(p.samples[i], (dt.get(p.samples[i]) ?? 0) + d);
  }
  for (const [id, us] of dt) {
    totalUs += us;
    const n = byId.get(id);
    const name = frameName(n.callFrame);
    self.set(name, (self.get(name) ?? 0) + us);
    const file = n.callFrame.url ? short(n.callFrame.url) : `(${n.callFrame.functionName || 'native'})`;
    selfFile.set(file, (selfFile.get(file) ?? 0) + us);
    // Inclusive: each distinct frame name on the stack once.
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const nm = frameName(byId.get(cur).callFrame);
      if (seen.has(nm)) continue;
      seen.add(nm);
      incl.set(nm, (incl.get(nm) ?? 0) + us);
    }
  }
}

const pct = (us) => `${((100 * us) / totalUs).toFixed(1).padStart(5)}%`;
const ms = (us) => `${(us / 1000).toFixed(0).padStart(7)} ms`;
const print = (title, map, filter) => {
  console.log(`\n${title}`);
  [...map]
    .filter(([k]) => !filter || filter.test(k))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .forEach(([k, v]) => console.log(`${ms(v)} ${pct(v)}  ${k}`));
};
console.log(`${files.length} profile(s), ${(totalUs / 1e6).toFixed(2)} s sampled`);
print('self time by file', selfFile);
print('self time by function', self);
print('inclusive time', incl, match);
