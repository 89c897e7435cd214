/**
 * TreeCache: trees the agent wrote or read, by id, with the set of packs their whole subtree
 * needs. Two uses: an incremental backup reuses an unchanged subtree without fetching it from the
 * bucket, and still knows exactly which packs the new snapshot needs (the union of the reused
 * subtrees' pack sets and the new blobs' packs), without walking the whole tree.
 *
 * MemoryTreeCache lives for one process; LevelTreeCache persists in the agent's data dir. A miss
 * costs a fetch from the bucket (HostRepository.loadTree) and, for pack sets, a walk of that
 * subtree — slower, never wrong. Entries are keyed by content id, so they never go stale.
 */
import { Level } from 'level';
import type { Tree } from '../../common/repo/tree.js';

export interface CachedTree {
  tree: Tree;
  /** Packs holding every blob reachable from this tree, the tree's own blob included. */
  packs: string[];
  /** Entries of the whole subtree, this directory included. */
  stats: { files: number; dirs: number; symlinks: number; bytes: number };
}

/** What reusing an unchanged subtree needs: its packs and counts, not its entries. */
export type TreeSummary = Pick<CachedTree, 'packs' | 'stats'>;

export interface TreeCache {
  get(id: string): Promise<CachedTree | undefined>;
  /** The packs and counts of a cached tree, without decoding its entries when they are not in memory. */
  summary(id: string): Promise<TreeSummary | undefined>;
  put(id: string, entry: CachedTree): Promise<void>;
  close(): Promise<void>;
}

export class MemoryTreeCache implements TreeCache {
  private readonly map = new Map<string, CachedTree>();
  async get(id: string): Promise<CachedTree | undefined> {
    return this.map.get(id);
  }
  async summary(id: string): Promise<TreeSummary | undefined> {
    return this.map.get(id);
  }
  async put(id: string, entry: CachedTree): Promise<void> {
    this.map.set(id, entry);
  }
  async close(): Promise<void> {}
}

/** Tree entries (files, dirs, links) kept decoded in memory in front of LevelDB. */
const HOT_NODES = 20_000;
/** Trees whose packs and counts are kept in memory (an incremental reuses every unchanged subtree by them). */
const SUMMARIES = 200_000;

/** Persistent cache (LevelDB), with a small in-memory layer in front for the current backup. */
export class LevelTreeCache implements TreeCache {
  private readonly hot = new Map<string, CachedTree>();
  private constructor(private readonly db: Level<string, string>) {}

  static async open(dir: string): Promise<LevelTreeCache> {
    const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
    await db.open();
    return new LevelTreeCache(db);
  }

  async get(id: string): Promise<CachedTree | undefined> {
    const h = this.hot.get(id);
    if (h) return h;
    const v = await this.db.get(id);
    if (v === undefined) return undefined;
    const entry = JSON.parse(v) as CachedTree;
    this.remember(id, entry);
    return entry;
  }

  async summary(id: string): Promise<TreeSummary | undefined> {
    return this.summaries.get(id) ?? (await this.get(id));
  }

  async put(id: string, entry: CachedTree): Promise<void> {
    this.remember(id, entry);
    await this.db.put(id, JSON.stringify(entry));
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  private remember(id: string, entry: CachedTree): void {
    // summaries (a few pack ids and four counts) for many more trees than whole entries
    if (this.summaries.size >= SUMMARIES) this.summaries.delete(this.summaries.keys().next().value!);
    this.summaries.set(id, { packs: entry.packs, stats: entry.stats });
    // bounded by entries, not trees: 4,096 trees of 100 files each held every node of a
    // 100,000-file tree (~40 MB of the agent's heap after a backup); LevelDB is fast enough behind
    const old = this.hot.get(id);
    if (old) this.hotNodes -= old.tree.nodes.length;
    this.hot.delete(id);
    this.hot.set(id, entry);
    this.hotNodes += entry.tree.nodes.length;
    while (this.hotNodes > HOT_NODES && this.hot.size > 1) {
      const [k, v] = this.hot.entries().next().value!;
      this.hot.delete(k);
      this.hotNodes -= v.tree.nodes.length;
    }
  }
  private hotNodes = 0;
  private readonly summaries = new Map<string, TreeSummary>();
}
