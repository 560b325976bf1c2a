import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseGetfattr, walkDirectory } from '../../../src/image/dir-source';

test('getfattr output: escaped names, base64/hex/quoted values, only user/trusted/security kept', () => {
  const out = parseGetfattr([
    '# file: /t/a\\040b',
    'user.k=0sdg==',
    'system.posix_acl_access=0sAgAAAA==',
    '',
    '# file: /t/c',
    'security.capability=0x0100',
    'trusted.q="v"',
    '',
  ].join('\n'));
  expect([...out.keys()]).toEqual(['/t/a b', '/t/c']);
  expect(out.get('/t/a b')).toEqual(new Map([['user.k', Buffer.from('v')]]));
  expect(out.get('/t/c')).toEqual(new Map([['security.capability', Buffer.from([1, 0])], ['trusted.q', Buffer.from('v')]]));
});

const hasSetfattr = spawnSync('setfattr', ['--version']).status === 0;
if (process.env.CI === 'true' && !hasSetfattr) throw new Error('CI=true but setfattr (Debian attr) is missing');

(hasSetfattr ? test : test.skip)('a directory walk carries the files\' xattrs', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-dirsrc-'));
  try {
    fs.writeFileSync(path.join(dir, 'f'), 'x');
    expect(spawnSync('setfattr', ['-n', 'user.k', '-v', 'v', path.join(dir, 'f')]).status).toBe(0);
    const seen = new Map<string, Map<string, Buffer>>();
    for await (const item of walkDirectory(dir)) {
      seen.set(item.entry.path, item.entry.xattrs);
      for await (const _ of item.body) { /* drain */ }
    }
    expect(seen.get('f')).toEqual(new Map([['user.k', Buffer.from('v')]]));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
