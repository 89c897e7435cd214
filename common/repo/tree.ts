/**
 * Trees: one directory's entries, stored as a 'tree' blob. Encoding is deterministic (fixed key
 * order, entries sorted by name in byte order), so an unchanged directory encodes to the same
 * bytes, gets the same blob id, and is reused by the next snapshot without being stored again.
 */
import { BulwarkError } from '../errors.js';

export type NodeType = 'file' | 'dir' | 'symlink';

export interface TreeNode {
  name: string;
  type: NodeType;
  /** Permission bits, with setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time, nanoseconds since the epoch, as a decimal string (exact, unlike a double). */
  mtimeNs: string;
  /** file: byte length */
  size?: number;
  /** file: blob ids (hex), in order */
  content?: string[];
  /** dir: tree blob id (hex) */
  subtree?: string;
  /** symlink: the link target, as stored (never followed at backup) */
  target?: string;
  /** file with more than one link: identity of the inode, so restore can link them again */
  hardlink?: { dev: string; ino: string };
  /** file: change time (ns) and inode at backup, for change detection only (never restored) */
  ctimeNs?: string;
  inode?: string;
}

export interface Tree {
  nodes: TreeNode[];
}

export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export function encodeTree(tree: Tree): Buffer {
  const nodes = [...tree.nodes].sort((a, b) => compareNames(a.name, b.name));
  const out = nodes.map((n) => ({
    name: n.name,
    type: n.type,
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    mtimeNs: n.mtimeNs,
    ...(n.size !== undefined ? { size: n.size } : {}),
    ...(n.content ? { content: n.content } : {}),
    ...(n.subtree ? { subtree: n.subtree } : {}),
    ...(n.target !== undefined ? { target: n.target } : {}),
    ...(n.hardlink ? { hardlink: { dev: n.hardlink.dev, ino: n.hardlink.ino } } : {}),
    ...(n.ctimeNs !== undefined ? { ctimeNs: n.ctimeNs } : {}),
    ...(n.inode !== undefined ? { inode: n.inode } : {}),
  }));
  return Buffer.from(JSON.stringify({ v: 1, nodes: out }));
}

export function decodeTree(bytes: Uint8Array): Tree {
  let t: { v: number; nodes: TreeNode[] };
  try {
    t = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new BulwarkError('CHECKSUM_MISMATCH', 'tree is not valid JSON', { cause: err });
  }
  if (t?.v !== 1 || !Array.isArray(t.nodes)) throw new BulwarkError('BAD_REPOSITORY', 'unknown tree format');
  return { nodes: t.nodes };
}

/**
 * A name from a manifest is safe to create inside a directory: not empty, not . or .., no slash,
 * no NUL. Checked before any write, so a hostile manifest cannot escape the restore target.
 */
export function isSafeName(name: string): boolean {
  return name.length > 0 && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0') && Buffer.byteLength(name) <= 255;
}
