#!/usr/bin/env node
'use strict';
// Install step of the project itself: builds what npm does not (the Rust addon,
// the patched fuse-native binding). Each step is owned by its own script and may
// fail soft: dmfs falls back to pure TypeScript when the addon is missing.
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const fs = require('node:fs');

const steps = ['build-native.js', 'patch-fuse-native.js'];
for (const step of steps) {
  const file = path.join(__dirname, step);
  if (!fs.existsSync(file)) continue;
  const r = spawnSync(process.execPath, [file], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
