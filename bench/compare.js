#!/usr/bin/env node
'use strict';
// Before/after of two dmfs builds from `bench/run.js --json` files: one row per figure,
// with the noise measured from repeated runs of the same build.
//
//   node bench/compare.js --before A1.json,A2.json --after B1.json,B2.json [--markdown]
//
// Make the runs alternate (A, B, A, B: `bench/run.js --dmfs DIR` measures another checkout),
// so load that comes and goes lands on both builds.
//
// For each figure and run: the median of dmfs's samples, and dmfs/fuse-overlayfs of the
// medians (the peer measured in the same run, which cancels much of the load of the
// moment). Per build: the mean over its runs. Noise of a figure: the larger of the two
// builds' run-to-run spread, (max - min) / mean of the run medians. A change is "worse
// beyond noise" when after is worse than before by more than that noise, on the absolute
// figure AND on the ratio to fuse-overlayfs (one alone can be the load of a moment).
const fs = require('node:fs');
const { fmtNum, median } = require('./lib/util');

function parseArgs(argv) {
  const o = { before: [], after: [], markdown: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--before') o.before = argv[++i].split(',').filter(Boolean);
    else if (a === '--after') o.after = argv[++i].split(',').filter(Boolean);
    else if (a === '--markdown') o.markdown = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: node bench/compare.js --before A.json[,A2.json] --after B.json[,B2.json] [--markdown]\n');
      process.exit(0);
    } else {
      process.stderr.write(`compare: unknown argument ${a} (see --help)\n`);
      process.exit(2);
    }
  }
  if (!o.before.length || !o.after.length) {
    process.stderr.write('compare: needs --before and --after (bench/run.js --json files)\n');
    process.exit(2);
  }
  return o;
}

function mean(xs) {
  const s = xs.filter((x) => Number.isFinite(x));
  return s.length ? s.reduce((a, b) => a + b, 0) / s.length : NaN;
}

/** Relative spread of run figures: (max - min) / mean; 0 for one run. */
function spread(xs) {
  const s = xs.filter((x) => Number.isFinite(x));
  if (s.length < 2) return 0;
  return (Math.max(...s) - Math.min(...s)) / mean(s);
}

/** Per row id: { row, values: [dmfs median per run], ratios: [dmfs / fuse-overlayfs per run] }. */
function collect(files) {
  const out = new Map();
  const runs = files.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
  for (const run of runs) {
    for (const row of run.rows) {
      if (!row.samples || !row.samples.dmfs) continue;
      const entry = out.get(row.id) ?? { row, values: [], ratios: [] };
      const d = median(row.samples.dmfs);
      const peer = row.samples['fuse-overlayfs'] ? median(row.samples['fuse-overlayfs']) : NaN;
      entry.values.push(d);
      entry.ratios.push(Number.isFinite(peer) && peer !== 0 ? d / peer : NaN);
      out.set(row.id, entry);
    }
  }
  return { rows: out, runs };
}

/** As the bench's own tables write numbers; a missing figure is a dash. */
function fmt(x) {
  return Number.isFinite(x) ? fmtNum(x) : '–';
}

function pct(x) {
  return Number.isFinite(x) ? `${(x * 100).toFixed(0)}%` : '–';
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  const before = collect(o.before);
  const after = collect(o.after);
  const lines = [];
  const header = ['figure', 'unit', 'better', 'before', 'after', 'after/before', 'noise', 'before /fuse-ovl', 'after /fuse-ovl', 'verdict'];
  lines.push(`| ${header.join(' | ')} |`, `| ${header.map((_, i) => (i < 3 ? '---' : '---:')).join(' | ')} |`);
  let group = null;
  let worse = 0;
  for (const [id, b] of before.rows) {
    const a = after.rows.get(id);
    if (!a) continue;
    if (b.row.group !== group) {
      group = b.row.group;
      lines.push(`| **${group}** | | | | | | | | | |`);
    }
    const higher = b.row.better === 'higher';
    const bv = mean(b.values);
    const av = mean(a.values);
    const change = av / bv;
    const noise = Math.max(spread(b.values), spread(a.values));
    const br = mean(b.ratios);
    const ar = mean(a.ratios);
    const ratioChange = ar / br;
    const worseBy = (c) => (higher ? 1 - c : c - 1);
    const absWorse = worseBy(change) > noise;
    const ratioWorse = !Number.isFinite(ratioChange) || worseBy(ratioChange) > noise;
    let verdict = 'within noise';
    if (absWorse && ratioWorse) {
      verdict = '**worse**';
      worse++;
    } else if (worseBy(change) < -noise && (!Number.isFinite(ratioChange) || worseBy(ratioChange) < -noise)) verdict = 'better';
    lines.push(`| ${b.row.name} | ${b.row.unit} | ${higher ? '↑' : '↓'} | ${fmt(bv)} | ${fmt(av)} | ${fmt(change)} | ${pct(noise)} | ${fmt(br)} | ${fmt(ar)} | ${verdict} |`);
  }
  const describe = (c) =>
    c.runs.map((r) => `${r.machine.dmfs} (load ${r.loadStart} → ${r.loadEnd}, ${Math.round(r.totalSeconds)} s)`).join('; ');
  const intro = [
    `Before: ${o.before.length} run(s): ${describe(before)}.`,
    `After: ${o.after.length} run(s): ${describe(after)}.`,
    `Each cell: mean over runs of the run's median. Noise: the larger run-to-run spread ((max − min) / mean) of the two builds. ` +
      `Verdict "worse": after is worse than before by more than the noise, both absolute and as a ratio to fuse-overlayfs of the same run.`,
    `Rows worse beyond noise: ${worse}.`,
  ];
  process.stdout.write(`${intro.join('\n')}\n\n${lines.join('\n')}\n`);
}

main();
