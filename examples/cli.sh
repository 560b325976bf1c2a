#!/bin/sh
# The dmfs CLI end to end, without FUSE: a pool, layers, a commit, the figures.
# Run: npm run build && sh examples/cli.sh
set -eu
DMFS="node $(dirname "$0")/../bin/dmfs.js"
export DMFS_ROOT="$(mktemp -d)/pool"
trap 'rm -rf "$(dirname "$DMFS_ROOT")"' EXIT

$DMFS pool create --size 2G --opt dm.basesize=5G --opt dm.min_free_space=5%
$DMFS create --image app-base --label purpose=example
$DMFS create app-1 --from app-base
$DMFS commit app-1 app-v1
$DMFS create app-2 --from app-v1 --size 1G
$DMFS ls
$DMFS inspect app-2
$DMFS info --json | grep -E '"(dataSpaceTotalBytes|poolBlocksizeBytes)"'
$DMFS rm app-2
$DMFS check
