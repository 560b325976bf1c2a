'use strict';
// Timed file I/O done by this (client) process on a mounted file system, with plain
// synchronous system calls: what `dd` or a database would do, minus process start-up.
const fs = require('node:fs');
const { MiB, prngFill } = require('./util');

const hr = () => process.hrtime.bigint();
const msSince = (t0) => Number(hr() - t0) / 1e6;

/** Reads the whole file sequentially in chunkBytes reads; { ms, bytes, mbps }. */
function seqRead(file, chunkBytes = MiB) {
  const buf = Buffer.allocUnsafe(chunkBytes);
  const t0 = hr();
  const fd = fs.openSync(file, 'r');
  let bytes = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, chunkBytes, bytes);
      if (n <= 0) break;
      bytes += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  const ms = msSince(t0);
  return { ms, bytes, mbps: bytes / 1e6 / (ms / 1000) };
}

/**
 * Creates file and writes sizeBytes in chunkBytes writes, then fsync and close: the time
 * covers all of it (the data is durable when it ends). { ms, bytes, mbps }.
 */
function seqWriteFsync(file, sizeBytes, chunkBytes = MiB) {
  const buf = prngFill(Buffer.alloc(chunkBytes), 42);
  const t0 = hr();
  const fd = fs.openSync(file, 'w', 0o644);
  try {
    for (let off = 0; off < sizeBytes; off += chunkBytes) {
      buf.writeUInt32LE(off / chunkBytes, 0);
      fs.writeSync(fd, buf, 0, Math.min(chunkBytes, sizeBytes - off), off);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  const ms = msSince(t0);
  return { ms, bytes: sizeBytes, mbps: sizeBytes / 1e6 / (ms / 1000) };
}

/**
 * Copy-on-write latency on a file that lives in the lower/image layer:
 * first = open(O_RDWR) + pwrite of 4 KiB at offsetBytes (overlayfs copies the file up at
 * the open for writing, dmfs copies one block at the write), second = the next 4 KiB
 * pwrite right after it (already copied). Both without fsync. { firstMs, secondMs, openMs }.
 */
function cowWrites(file, offsetBytes) {
  const data = Buffer.alloc(4096, 0x5a);
  const t0 = hr();
  const fd = fs.openSync(file, fs.constants.O_RDWR);
  const openMs = msSince(t0);
  try {
    fs.writeSync(fd, data, 0, data.length, offsetBytes);
    const firstMs = msSince(t0);
    const t1 = hr();
    fs.writeSync(fd, data, 0, data.length, offsetBytes + data.length);
    const secondMs = msSince(t1);
    return { firstMs, secondMs, openMs };
  } finally {
    fs.closeSync(fd);
  }
}

module.exports = { seqRead, seqWriteFsync, cowWrites };
