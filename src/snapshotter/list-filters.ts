/**
 * containerd's filter syntax for List (`filters` of ListSnapshotsRequest), over the fields
 * a snapshot has: `name`, `parent`, `kind`, `labels.KEY` (KEY bare or "quoted").
 * A filter is selectors joined by ',' (all must hold); several filters match when any does;
 * none matches everything. A selector is `FIELD` (present and non-empty), `FIELD==VALUE`,
 * `FIELD!=VALUE` or `FIELD~=REGEXP`; VALUE is bare (up to the next ',') or "quoted" with
 * Go/JSON escapes. Anything else is INVALID.
 */
import { dmfsError } from '../errors';
import type { SnapshotInfo } from './snapshot-records';

interface Selector {
  field: string[];
  op: 'present' | '==' | '!=' | '~=';
  value: string;
  regexp?: RegExp;
}

type Filter = Selector[];

class Scanner {
  pos = 0;
  constructor(readonly text: string) {}

  get done(): boolean {
    return this.pos >= this.text.length;
  }

  peek(n = 1): string {
    return this.text.slice(this.pos, this.pos + n);
  }

  quoted(): string {
    const start = this.pos;
    this.pos++;
    while (!this.done && this.text[this.pos] !== '"') this.pos += this.text[this.pos] === '\\' ? 2 : 1;
    if (this.done) throw bad(this.text, 'an unterminated quoted string');
    this.pos++;
    try {
      return JSON.parse(this.text.slice(start, this.pos)) as string;
    } catch {
      throw bad(this.text, `a bad quoted string at ${start}`);
    }
  }

  /** A bare word up to one of `stops`. */
  word(stops: string): string {
    const start = this.pos;
    while (!this.done && !stops.includes(this.text[this.pos])) this.pos++;
    return this.text.slice(start, this.pos);
  }
}

function bad(text: string, what: string): Error {
  return dmfsError('INVALID', `filter '${text}' has ${what}; the form is FIELD, FIELD==VALUE, FIELD!=VALUE or FIELD~=REGEXP joined by ','`);
}

function parseFilter(text: string): Filter {
  const s = new Scanner(text.trim());
  const selectors: Selector[] = [];
  while (!s.done) {
    const field: string[] = [];
    for (;;) {
      const part = s.peek() === '"' ? s.quoted() : s.word('.,=!~').trim();
      if (!part) throw bad(text, 'an empty field name');
      field.push(part);
      if (s.peek() !== '.') break;
      s.pos++;
    }
    let op: Selector['op'] = 'present';
    let value = '';
    const two = s.peek(2);
    if (two === '==' || two === '!=' || two === '~=') {
      op = two;
      s.pos += 2;
      value = s.peek() === '"' ? s.quoted() : s.word(',').trim();
    }
    const sel: Selector = { field, op, value };
    if (op === '~=') {
      try {
        sel.regexp = new RegExp(value);
      } catch {
        throw bad(text, `a bad regular expression '${value}'`);
      }
    }
    selectors.push(sel);
    if (s.done) break;
    if (s.peek() !== ',') throw bad(text, `an unexpected '${s.peek()}' at ${s.pos}`);
    s.pos++;
  }
  return selectors;
}

const KIND_NAMES: Record<SnapshotInfo['kind'], string> = { active: 'active', view: 'view', committed: 'committed' };

function fieldValue(s: SnapshotInfo, field: string[]): string | undefined {
  const [head, ...rest] = field;
  if (head === 'labels') return rest.length ? s.labels[rest.join('.')] : undefined;
  if (rest.length) return undefined;
  if (head === 'name') return s.key;
  if (head === 'parent') return s.parent;
  if (head === 'kind') return KIND_NAMES[s.kind];
  return undefined;
}

function matches(s: SnapshotInfo, sel: Selector): boolean {
  const v = fieldValue(s, sel.field);
  switch (sel.op) {
    case 'present': return v !== undefined && v !== '';
    case '==': return v === sel.value;
    case '!=': return v !== sel.value;
    case '~=': return v !== undefined && sel.regexp!.test(v);
  }
}

/** A predicate for the filters of one List request (INVALID when one does not parse). */
export function snapshotFilter(filters: string[]): (s: SnapshotInfo) => boolean {
  const parsed = filters.filter((f) => f.trim() !== '').map(parseFilter);
  if (!parsed.length) return () => true;
  return (s) => parsed.some((f) => f.every((sel) => matches(s, sel)));
}
