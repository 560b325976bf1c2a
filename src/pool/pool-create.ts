import * as fs from 'node:fs';
import * as path from 'node:path';
import { dmfsError, isDmfsError } from '../errors';
import { blockDeviceBytes, filesystemSignature } from './data-device';
import { MetadataEnv } from './metadata-env';
import { type PoolCreateSettings, type PoolOptions, validateBlockSize } from './pool-options';
import { poolPaths } from './pool-paths';
import { packSuperblock, type Superblock } from './superblock';

/**
 * Writes a new pool's files under root: the directories (0700), the sparse data file in
 * loop mode, and metadata holding only the superblock, synced. Nothing is left behind
 * when it fails.
 */
export async function createPoolFiles(root: string, settings: PoolCreateSettings, options: PoolOptions): Promise<void> {
  validateBlockSize(settings.blockSizeBytes);
  const paths = poolPaths(root);
  if (fs.existsSync(path.join(paths.metadataDir, 'data.mdb'))) {
    throw dmfsError('POOL_EXISTS', `a pool already exists at ${paths.root}`);
  }
  let dataBytes: number;
  let dataMode: Superblock['dataMode'] = 'loop';
  if (settings.dataDevice) {
    dataMode = 'direct';
    dataBytes = blockDeviceBytes(settings.dataDevice);
    const signature = filesystemSignature(settings.dataDevice);
    if (signature && !settings.forceDevice) {
      throw dmfsError(
        'DEVICE_HAS_FILESYSTEM',
        `${settings.dataDevice} holds a ${signature} signature; refusing to use it. Pass --force (dm.directlvm_device_force=true) to overwrite it.`,
      );
    }
  } else {
    dataBytes = settings.dataSizeBytes;
  }
  const nrBlocks = Math.floor(dataBytes / settings.blockSizeBytes);
  if (nrBlocks < 16) {
    throw dmfsError('BAD_OPTION', `data size ${dataBytes} bytes holds fewer than 16 blocks of ${settings.blockSizeBytes} bytes`);
  }
  const createdRoot = !fs.existsSync(paths.root);
  try {
    fs.mkdirSync(paths.root, { recursive: true, mode: 0o700 });
    fs.chmodSync(paths.root, 0o700);
    fs.mkdirSync(paths.runDir, { recursive: true, mode: 0o700 });
    if (dataMode === 'loop') {
      fs.mkdirSync(path.dirname(paths.dataFile), { recursive: true, mode: 0o700 });
      const fd = fs.openSync(paths.dataFile, 'wx', 0o600);
      fs.ftruncateSync(fd, nrBlocks * settings.blockSizeBytes);
      fs.closeSync(fd);
    }
    const env = MetadataEnv.open(paths.metadataDir, { create: true });
    const st = fs.statSync(paths.root);
    const sb: Superblock = {
      v: 1,
      poolName: `dmfs-${st.dev}-${st.ino}-pool`,
      blockSizeBytes: settings.blockSizeBytes,
      nrBlocks,
      dataMode,
      dataDevice: settings.dataDevice,
      options,
      createdMs: Date.now(),
    };
    env.txn(() => env.table('pool-meta').put('superblock', packSuperblock(sb)));
    await env.sync();
    await env.close();
  } catch (err) {
    if (createdRoot) fs.rmSync(paths.root, { recursive: true, force: true });
    else {
      fs.rmSync(paths.metadataDir, { recursive: true, force: true });
      if (dataMode === 'loop' && !isDmfsError(err, 'POOL_EXISTS')) fs.rmSync(path.dirname(paths.dataFile), { recursive: true, force: true });
    }
    throw err;
  }
}
