/**
 * The two block address spaces, kept apart by type (as thin-provisioning-tools does):
 * a `FileBlock` indexes a block inside one file of a layer; a `DataBlock` indexes a block
 * of the pool's data device. Neither converts to the other without an explicit mapping.
 */
export type DataBlock = number & { readonly __brand: 'DataBlock' };
export type FileBlock = number & { readonly __brand: 'FileBlock' };

export const asDataBlock = (n: number): DataBlock => n as DataBlock;
export const asFileBlock = (n: number): FileBlock => n as FileBlock;
