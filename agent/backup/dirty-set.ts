/**
 * DirtySet: the paths a backup must look at, as a trie over path segments, built from the
 * journal's dirty marks (trusted journal) or from a reconcile scan (untrusted). A node marked
 * `full` is re-listed entirely (a directory that appeared, vanished or changed as a whole); other
 * nodes are visited only along their dirty children, so a backup with k changes costs about
 * k × depth, not the size of the tree.
 */
export interface DirtyNode {
  full: boolean;
  children: Map<string, DirtyNode>;
}

export class DirtySet {
  readonly root: DirtyNode = { full: false, children: new Map() };
  private count = 0;

  /** Everything is dirty: the first backup, or a lost journal with no scan. */
  static full(): DirtySet {
    const s = new DirtySet();
    s.root.full = true;
    return s;
  }

  get size(): number {
    return this.count;
  }

  /** Mark a root-relative POSIX path; `full` for a directory that must be re-listed. */
  add(path: string, full = false): void {
    let node = this.root;
    for (const seg of path.split('/')) {
      if (seg === '' || seg === '.') continue;
      let child = node.children.get(seg);
      if (!child) {
        child = { full: false, children: new Map() };
        node.children.set(seg, child);
      }
      node = child;
    }
    if (full) node.full = true;
    this.count++;
  }

  get isEmpty(): boolean {
    return !this.root.full && this.root.children.size === 0;
  }
}
