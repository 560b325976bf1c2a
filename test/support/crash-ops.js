'use strict';
// The crash workload, shared by the child (crash-writer.js) and the test's model.

/** Deterministic content for op k: bytes derived from k, `size` long. */
function opContent(k, size) {
  const b = Buffer.alloc(size);
  let x = (k * 2654435761) >>> 0;
  for (let i = 0; i < size; i += 4) {
    x = (x * 1664525 + 1013904223) >>> 0;
    b.writeUInt32LE(x, i - (i + 4 > size ? i + 4 - size : 0));
  }
  return b;
}

function rand(state) {
  state.seed = (state.seed * 1103515245 + 12345) % 2147483648;
  return state.seed / 2147483648;
}

/** Next op for state {files: [{name,size}], seed, k}; mutates state as if the op succeeded. */
function nextOp(state) {
  const k = state.k++;
  const r = rand(state);
  const BS = 65536;
  const pick = () => state.files[Math.floor(rand(state) * state.files.length)];
  if (state.files.length < 3 || r < 0.3) {
    const size = Math.floor(rand(state) * 4 * BS);
    const name = `f${k}`;
    state.files.push({ name, size });
    return { op: 'create', k, name, size };
  }
  const f = pick();
  if (r < 0.5) {
    const offset = Math.floor(rand(state) * (f.size + BS));
    const length = 1 + Math.floor(rand(state) * 2 * BS);
    f.size = Math.max(f.size, offset + length);
    return { op: 'overwrite', k, name: f.name, offset, length };
  }
  if (r < 0.65) {
    const length = 1 + Math.floor(rand(state) * BS);
    const op = { op: 'append', k, name: f.name, offset: f.size, length };
    f.size += length;
    return op;
  }
  if (r < 0.8) {
    const size = Math.floor(rand(state) * (f.size + 1));
    f.size = size;
    return { op: 'truncate', k, name: f.name, size };
  }
  if (r < 0.9) {
    const to = `r${k}`;
    const op = { op: 'rename', k, name: f.name, to };
    f.name = to;
    return op;
  }
  state.files = state.files.filter((x) => x !== f);
  return { op: 'unlink', k, name: f.name };
}

/** Applies an op to a model Map name → Buffer. */
function applyOp(model, op) {
  const cur = model.get(op.name);
  switch (op.op) {
    case 'create': model.set(op.name, opContent(op.k, op.size)); break;
    case 'overwrite':
    case 'append': {
      const end = op.offset + op.length;
      const next = Buffer.alloc(Math.max(cur.length, end));
      cur.copy(next);
      opContent(op.k, op.length).copy(next, op.offset);
      model.set(op.name, next);
      break;
    }
    case 'truncate': {
      const next = Buffer.alloc(op.size);
      cur.copy(next, 0, 0, Math.min(cur.length, op.size));
      model.set(op.name, next);
      break;
    }
    case 'rename': model.set(op.to, cur); model.delete(op.name); break;
    case 'copy': model.set(op.name, Buffer.from(model.get(op.from))); break;
    case 'unlink': model.delete(op.name); break;
  }
}

/**
 * The crash workload with whole-file copies (copy_file_range, blocks shared) mixed in: a
 * quarter of the ops copy an existing file to a new name, so later overwrites, truncates
 * and unlinks hit shared blocks.
 */
function nextOpWithCopies(state) {
  if (state.files.length >= 2 && rand(state) < 0.25) {
    const k = state.k++;
    const from = state.files[Math.floor(rand(state) * state.files.length)];
    const name = `c${k}`;
    state.files.push({ name, size: from.size });
    return { op: 'copy', k, name, from: from.name };
  }
  return nextOp(state);
}

module.exports = { opContent, nextOp, nextOpWithCopies, applyOp };
