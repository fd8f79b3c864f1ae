//! A memory-lean LRU map for the store's shards.
//!
//! Why not `lru::LruCache`: it boxes every entry (key, value, two list
//! pointers, plus the allocator's header) and indexes them with 16-byte hash
//! slots, which came to about 187 bytes per small item in RSS, twice
//! memcached's. Here an entry is one allocation holding expiry, key and value
//! ([`Item`]); the list lives in a `Vec` of 24-byte nodes linked by `u32`
//! slot numbers, and the index is a `hashbrown::HashTable` of 4-byte slot
//! numbers. Slot numbers are stable while an entry lives, so the expiry
//! index can refer to entries by slot.

use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashTable;

const NIL: u32 = u32::MAX;
/// Expiry (u64) and key length (u16) before the key.
const HEADER: usize = 10;

/// One entry: `[expires: u64 LE][key length: u16 LE][key][value]` in a single
/// shared allocation, so a read hands the value out without copying it.
#[derive(Clone)]
pub(crate) struct Item(Arc<[u8]>);

impl Item {
    /// `key` must be at most `u16::MAX` bytes (the store's key limit is far
    /// below). `expires` is the store's clock in ms; 0 means never.
    pub(crate) fn new(key: &[u8], value: &[u8], expires: u64) -> Self {
        let klen = u16::try_from(key.len()).unwrap_or(u16::MAX);
        let key = &key[..usize::from(klen)];
        let mut buf = Vec::with_capacity(HEADER + key.len() + value.len());
        buf.extend_from_slice(&expires.to_le_bytes());
        buf.extend_from_slice(&klen.to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Self(Arc::from(buf))
    }

    fn key_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.0[8], self.0[9]]))
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0[HEADER..HEADER + self.key_len()]
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.0[HEADER + self.key_len()..]
    }

    pub(crate) fn expires(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// The value as `Bytes` sharing this entry's allocation.
    pub(crate) fn value_bytes(&self) -> Bytes {
        Bytes::from_owner(ValueView(self.clone()))
    }
}

/// Owner handed to `Bytes`: keeps the entry alive, exposes its value.
struct ValueView(Item);

impl AsRef<[u8]> for ValueView {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

struct Node {
    item: Option<Item>,
    /// Towards the most recently used end (or the next free slot).
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

/// An LRU map from key bytes to [`Item`]s.
pub(crate) struct CompactLru {
    nodes: Vec<Node>,
    /// First free slot, linked through `prev`.
    free: u32,
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    len: usize,
}

impl Default for CompactLru {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: NIL,
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl CompactLru {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn item(&self, slot: u32) -> Option<&Item> {
        self.nodes.get(slot as usize).and_then(|n| n.item.as_ref())
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&s| self.item(s).is_some_and(|i| i.key() == key))
            .copied()
    }

    fn unlink(&mut self, s: u32) {
        let (prev, next) = {
            let n = &self.nodes[s as usize];
            (n.prev, n.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, s: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[s as usize];
            n.prev = NIL;
            n.next = old;
        }
        match old {
            NIL => self.tail = s,
            o => self.nodes[o as usize].prev = s,
        }
        self.head = s;
    }

    /// Looks `key` up and makes it the most recently used entry.
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<(u32, &Item)> {
        let s = self.find(key)?;
        if self.head != s {
            self.unlink(s);
            self.push_front(s);
        }
        self.item(s).map(|i| (s, i))
    }

    /// Inserts `item` as the most recently used entry, replacing (and
    /// returning) an entry with the same key. Returns the new entry's slot.
    pub(crate) fn insert(&mut self, item: Item) -> (u32, Option<Item>) {
        let old = self.remove(item.key()).map(|(_, old)| old);
        let hash = self.hasher.hash_one(item.key());
        let node = Node {
            item: Some(item),
            prev: NIL,
            next: NIL,
        };
        let s = match self.free {
            NIL => {
                let s = u32::try_from(self.nodes.len()).unwrap_or(NIL - 1);
                self.nodes.push(node);
                s
            }
            f => {
                self.free = self.nodes[f as usize].prev;
                self.nodes[f as usize] = node;
                f
            }
        };
        self.push_front(s);
        let (nodes, hasher) = (&self.nodes, &self.hasher);
        self.index.insert_unique(hash, s, |&x| {
            let key = nodes[x as usize].item.as_ref().map_or(&[][..], Item::key);
            hasher.hash_one(key)
        });
        self.len += 1;
        (s, old)
    }

    /// Removes the entry in slot `s`.
    pub(crate) fn remove_slot(&mut self, s: u32) -> Option<Item> {
        let hash = self.hasher.hash_one(self.item(s)?.key());
        if let Ok(entry) = self.index.find_entry(hash, |&x| x == s) {
            entry.remove();
        }
        self.unlink(s);
        let node = &mut self.nodes[s as usize];
        let item = node.item.take();
        node.next = NIL;
        node.prev = self.free;
        self.free = s;
        self.len -= 1;
        item
    }

    /// Removes `key`'s entry.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<(u32, Item)> {
        let s = self.find(key)?;
        self.remove_slot(s).map(|i| (s, i))
    }

    /// Removes the least recently used entry.
    pub(crate) fn pop_lru(&mut self) -> Option<(u32, Item)> {
        let s = self.tail;
        if s == NIL {
            return None;
        }
        self.remove_slot(s).map(|i| (s, i))
    }

    /// Drops every entry and gives the memory back.
    pub(crate) fn clear(&mut self) {
        *self = Self {
            hasher: self.hasher.clone(),
            ..Self::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(k: &str, v: &str) -> Item {
        Item::new(k.as_bytes(), v.as_bytes(), 0)
    }

    fn order(l: &CompactLru) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = l.head;
        while s != NIL {
            out.push(String::from_utf8_lossy(l.item(s).unwrap().key()).into_owned());
            s = l.nodes[s as usize].next;
        }
        out
    }

    #[test]
    fn items_keep_their_parts() {
        let i = Item::new(b"key", b"value", 42);
        assert_eq!(
            (i.key(), i.value(), i.expires()),
            (&b"key"[..], &b"value"[..], 42)
        );
        assert_eq!(&i.value_bytes()[..], b"value");
        let empty = Item::new(b"k", b"", 0);
        assert_eq!(empty.value(), b"");
    }

    #[test]
    fn lru_order_follows_use() {
        let mut l = CompactLru::default();
        for k in ["a", "b", "c"] {
            l.insert(item(k, "v"));
        }
        assert_eq!(order(&l), ["c", "b", "a"]);
        assert!(l.get(b"a").is_some());
        assert_eq!(order(&l), ["a", "c", "b"]);
        let (_, popped) = l.pop_lru().unwrap();
        assert_eq!(popped.key(), b"b");
        assert_eq!(order(&l), ["a", "c"]);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn replace_remove_and_slot_reuse() {
        let mut l = CompactLru::default();
        let (s1, old) = l.insert(item("k", "1"));
        assert!(old.is_none());
        let (_, old) = l.insert(item("k", "2"));
        assert_eq!(old.unwrap().value(), b"1");
        assert_eq!(l.len(), 1);
        assert_eq!(l.get(b"k").unwrap().1.value(), b"2");
        let (s, removed) = l.remove(b"k").unwrap();
        assert_eq!(removed.value(), b"2");
        assert!(l.get(b"k").is_none());
        assert_eq!(l.len(), 0);
        // Freed slots are reused before the vector grows.
        let (s2, _) = l.insert(item("x", "y"));
        assert_eq!(s2, s);
        assert!(s1 <= 1 && l.nodes.len() <= 2);
        assert!(l.remove_slot(s2).is_some());
        assert!(l.remove_slot(s2).is_none());
        assert!(l.pop_lru().is_none());
    }

    #[test]
    fn many_keys_survive_growth_and_churn() {
        let mut l = CompactLru::default();
        for i in 0..10_000 {
            l.insert(item(&format!("k{i}"), &i.to_string()));
            if i % 3 == 0 {
                l.remove(format!("k{}", i / 2).as_bytes());
            }
        }
        for i in 0..10_000 {
            if let Some((_, it)) = l.get(format!("k{i}").as_bytes()) {
                assert_eq!(it.value(), i.to_string().as_bytes());
            }
        }
        let before = l.len();
        let mut n = 0;
        while l.pop_lru().is_some() {
            n += 1;
        }
        assert_eq!(n, before);
        assert_eq!(l.len(), 0);
        l.clear();
        assert!(l.nodes.is_empty());
    }
}
