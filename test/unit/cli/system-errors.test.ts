import * as fs from 'node:fs';
import { explainUnwrappedError } from '../../../src/cli/system-errors';

function systemError(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a throw');
}

describe('explainUnwrappedError', () => {
  test('a failed system call names the call, the path, the errno and what to do', () => {
    const err = systemError(() => fs.readFileSync('/nonexistent-dir/x'));
    const e = explainUnwrappedError(err, '/pool')!;
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toMatch(/^open '\/nonexistent-dir\/x' failed: no such file or directory \(ENOENT\); /);
    expect(e.cause).toBe(err);
  });

  test.each([
    ['EROFS', 'POOL_READ_ONLY'],
    ['EACCES', 'ACCESS_DENIED'],
    ['EPERM', 'NOT_PERMITTED'],
    ['ENOSPC', 'POOL_FULL'],
    ['EIO', 'IO_ERROR'],
    ['EBADF', 'IO_ERROR'],
  ])('%s -> %s', (errno, code) => {
    const err = Object.assign(new Error(`${errno}: something, open '/p/x'`), { code: errno, syscall: 'open', path: '/p/x' });
    const e = explainUnwrappedError(err, '/p')!;
    expect(e.code).toBe(code);
    expect(e.message).toContain(`(${errno})`);
  });

  test("liblmdb's damage codes become METADATA_CORRUPT with the next step", () => {
    const e = explainUnwrappedError(new Error('MDB_PAGE_NOTFOUND: Requested page not found'), '/p')!;
    expect(e.code).toBe('METADATA_CORRUPT');
    expect(e.message).toContain("dmfs check --root /p");
  });

  test('anything else is left alone (a bug keeps its stack)', () => {
    expect(explainUnwrappedError(new TypeError('x is undefined'), '/p')).toBeNull();
    expect(explainUnwrappedError('a string', '/p')).toBeNull();
    expect(explainUnwrappedError(Object.assign(new Error('odd'), { code: 'ERR_INVALID_ARG_TYPE' }), '/p')).toBeNull();
  });
});
