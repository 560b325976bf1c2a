'use strict';
// Rows of figures to a Markdown table with dmfs/peer ratios and targets; BENCHMARKS.md update.
const fs = require('node:fs');
const { fmtNum, median } = require('./util');

const PEERS = ['overlayfs', 'fuse-overlayfs'];

/**
 * A row: { id, group, name, unit, better: 'higher'|'lower', samples: { dmfs: [], overlayfs: [], 'fuse-overlayfs': [] },
 * target?: { text, check(values, ratios) -> boolean }, note? }. Figures are medians of the samples.
 */
function summarize(row) {
  const values = {};
  for (const [sys, xs] of Object.entries(row.samples)) values[sys] = median(xs);
  const ratios = {};
  for (const p of PEERS) {
    if (Number.isFinite(values.dmfs) && Number.isFinite(values[p]) && values[p] !== 0) ratios[p] = values.dmfs / values[p];
  }
  let met = null;
  if (row.target) met = Boolean(row.target.check(values, ratios));
  return { ...row, values, ratios, met };
}

function fmtRatio(r) {
  if (!Number.isFinite(r)) return '–';
  if (r >= 100) return `${Math.round(r)}`;
  if (r >= 10) return r.toFixed(1);
  if (r >= 0.1) return r.toFixed(2);
  return r.toPrecision(2);
}

function fmtCell(row, sys) {
  const v = row.values[sys];
  if (v === undefined) return '–';
  const n = row.samples[sys]?.length ?? 0;
  return fmtNum(v, row.digits) + (n > 1 && row.showSpread ? ` (${n})` : '');
}

function table(rows) {
  const lines = [
    '| workload | unit | better | dmfs | overlayfs | fuse-overlayfs | dmfs/overlayfs | dmfs/fuse-overlayfs | target | met |',
    '| --- | --- | :---: | ---: | ---: | ---: | ---: | ---: | --- | :---: |',
  ];
  let group = null;
  for (const r of rows) {
    if (r.group !== group) {
      group = r.group;
      lines.push(`| **${group}** | | | | | | | | | |`);
    }
    const better = r.better === 'higher' ? '↑ higher' : '↓ lower';
    const met = r.met === null ? '' : r.met ? 'yes' : '**no**';
    lines.push(
      `| ${r.name} | ${r.unit} | ${better} | ${fmtCell(r, 'dmfs')} | ${fmtCell(r, 'overlayfs')} | ${fmtCell(r, 'fuse-overlayfs')} | ${fmtRatio(r.ratios.overlayfs)} | ${fmtRatio(r.ratios['fuse-overlayfs'])} | ${r.target?.text ?? ''} | ${met} |`,
    );
  }
  return lines.join('\n');
}

/** Replaces the text between the begin/end markers in BENCHMARKS.md (appending the section when absent). */
function writeSection(file, heading, begin, end, body) {
  let text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# Benchmarks\n';
  const block = `${begin}\n${body.trim()}\n${end}`;
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  if (i >= 0 && j > i) text = text.slice(0, i) + block + text.slice(j + end.length);
  else text = `${text.trimEnd()}\n\n${heading}\n\n${block}\n`;
  fs.writeFileSync(file, text);
}

module.exports = { summarize, table, writeSection, PEERS };
