//! A memory-lean LRU map for the store's shards.
//!
//! Why not `lru::LruCache`: it boxes every entry (key, value, two list
//! pointers, plus the allocator's header) and indexes them with 16-byte hash
//! slots, which came to about 187 bytes per small item in RSS, twice
//! memcached's. Here an entry is one allocation holding expiry, version, key
//! and value ([`Item`]); the list lives in a `Vec` of 16-byte nodes (a thin
//! pointer and two `u32` slot numbers), and the index is a
//! `hashbrown::HashTable` of 4-byte slot numbers. Slot numbers are stable
//! while an entry lives, so scans and the expiry crawler can resume by slot.

use std::hash::BuildHasher;
use std::mem::MaybeUninit;

use bytes::Bytes;
use hashbrown::HashTable;
use triomphe::{Arc, HeaderSlice, HeaderWithLength, ThinArc, UniqueArc};

const NIL: u32 = u32::MAX;
/// Expiry and tombstone flag (u64), version (u64) and key length (u16)
/// before the key.
const HEADER: usize = 18;
/// Top bit of the expiry word: the entry is a tombstone (a deleted key).
const TOMBSTONE: u64 = 1 << 63;

/// The key is longer than an entry can record (16-bit length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key of {0} bytes is longer than 65535 bytes")]
pub(crate) struct KeyTooLong(pub usize);

/// One entry: `[expires | tombstone: u64 LE][version: u64 LE][key length:
/// u16 LE][key][value]` in a single shared allocation, so a read hands the
/// value out without copying it.
///
/// A thin pointer (triomphe's `ThinArc`: the length lives in the
/// allocation, where `std::sync::Arc<[u8]>` keeps a weak count instead), so
/// an LRU node is 16 bytes rather than 24: 8 bytes less per entry.
#[derive(Clone)]
pub(crate) struct Item(ThinArc<(), u8>);

impl Item {
    /// A live value, or a tombstone when `value` is `None`. `expires` is the
    /// store's clock in ms (0: never; below 2^63).
    pub(crate) fn new(
        key: &[u8],
        value: Option<&[u8]>,
        expires: u64,
        version: u64,
    ) -> Result<Self, KeyTooLong> {
        let klen = u16::try_from(key.len()).map_err(|_| KeyTooLong(key.len()))?;
        let flags = (expires & !TOMBSTONE) | if value.is_none() { TOMBSTONE } else { 0 };
        let value = value.unwrap_or_default();
        let len = HEADER + key.len() + value.len();
        // Written in place: one allocation of exactly the entry's size and one
        // copy of the value (a `Vec` first would copy it twice).
        let mut arc = UniqueArc::<HeaderSlice<_, [MaybeUninit<u8>]>>::from_header_and_uninit_slice(
            HeaderWithLength::new((), len),
            len,
        );
        let buf = &mut arc.slice;
        let mut at = 0;
        for part in [
            &flags.to_le_bytes()[..],
            &version.to_le_bytes()[..],
            &klen.to_le_bytes()[..],
            key,
            value,
        ] {
            for (dst, src) in buf[at..at + part.len()].iter_mut().zip(part) {
                dst.write(*src);
            }
            at += part.len();
        }
        debug_assert_eq!(at, len);
        // SAFETY: the loop above wrote all `len` bytes (the parts add up to
        // `len` by construction).
        let arc = unsafe { arc.assume_init_slice_with_header() };
        Ok(Self(Arc::into_thin(arc.shareable())))
    }

    fn bytes(&self) -> &[u8] {
        &self.0.slice
    }

    fn word(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes()[at..at + 8]);
        u64::from_le_bytes(b)
    }

    fn key_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.bytes()[16], self.bytes()[17]]))
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.bytes()[HEADER..HEADER + self.key_len()]
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.bytes()[HEADER + self.key_len()..]
    }

    pub(crate) fn expires(&self) -> u64 {
        self.word(0) & !TOMBSTONE
    }

    pub(crate) fn version(&self) -> u64 {
        self.word(8)
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.word(0) & TOMBSTONE != 0
    }

    /// Bytes of key and value (what the memory accounting charges besides
    /// the fixed overhead).
    pub(crate) fn payload_len(&self) -> usize {
        self.bytes().len() - HEADER
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

    /// Looks `key` up without changing the LRU order.
    pub(crate) fn peek(&self, key: &[u8]) -> Option<(u32, &Item)> {
        let s = self.find(key)?;
        self.item(s).map(|i| (s, i))
    }

    /// Calls `f` for the entries in slots `from..from + max`, in slot order,
    /// and returns the slot to continue from, or `None` past the last one. A
    /// scan that resumes from the returned slot sees every entry that stayed
    /// in place meanwhile (slots are stable while an entry lives).
    pub(crate) fn visit_slots(
        &self,
        from: usize,
        max: usize,
        mut f: impl FnMut(u32, &Item),
    ) -> Option<usize> {
        let end = from.saturating_add(max).min(self.nodes.len());
        for s in from..end {
            if let Some(item) = self.nodes[s].item.as_ref() {
                // Slots fit in u32: `insert` never hands out more.
                f(s as u32, item);
            }
        }
        (end < self.nodes.len()).then_some(end)
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
    /// returning, with its former slot) an entry with the same key. Returns
    /// the new entry's slot, or the item back when every slot number is
    /// taken (`u32::MAX - 1` entries: unreachable under any memory limit,
    /// but refused rather than wrapped).
    pub(crate) fn insert(&mut self, item: Item) -> Result<(u32, Option<(u32, Item)>), Item> {
        if self.free == NIL && self.nodes.len() >= (NIL - 1) as usize {
            return Err(item);
        }
        let old = self.remove(item.key());
        let hash = self.hasher.hash_one(item.key());
        let node = Node {
            item: Some(item),
            prev: NIL,
            next: NIL,
        };
        let s = match self.free {
            NIL => {
                // Checked above: the length fits below NIL.
                let s = self.nodes.len() as u32;
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
        Ok((s, old))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(k: &str, v: &str) -> Item {
        Item::new(k.as_bytes(), Some(v.as_bytes()), 0, 1).unwrap()
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
    fn a_node_is_a_thin_pointer_and_two_slot_numbers() {
        assert_eq!(std::mem::size_of::<Node>(), 16);
    }

    #[test]
    fn items_keep_their_parts() {
        let i = Item::new(b"key", Some(b"value"), 42, 7).unwrap();
        assert_eq!(
            (i.key(), i.value(), i.expires(), i.version()),
            (&b"key"[..], &b"value"[..], 42, 7)
        );
        assert!(!i.is_tombstone());
        assert_eq!(&i.value_bytes()[..], b"value");
        let empty = Item::new(b"k", Some(b""), 0, 1).unwrap();
        assert_eq!(empty.value(), b"");
        let gone = Item::new(b"k", None, 99, u64::MAX).unwrap();
        assert!(gone.is_tombstone());
        assert_eq!((gone.expires(), gone.version()), (99, u64::MAX));
        assert_eq!(gone.value(), b"");
        assert_eq!(
            Item::new(&vec![b'k'; 70_000], Some(b"v"), 0, 1).err(),
            Some(KeyTooLong(70_000))
        );
    }

    #[test]
    fn lru_order_follows_use() {
        let mut l = CompactLru::default();
        for k in ["a", "b", "c"] {
            l.insert(item(k, "v")).ok();
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
        let (s1, old) = l.insert(item("k", "1")).ok().unwrap();
        assert!(old.is_none());
        let (_, old) = l.insert(item("k", "2")).ok().unwrap();
        assert_eq!(old.unwrap().1.value(), b"1");
        assert_eq!(l.len(), 1);
        assert_eq!(l.get(b"k").unwrap().1.value(), b"2");
        let (s, removed) = l.remove(b"k").unwrap();
        assert_eq!(removed.value(), b"2");
        assert!(l.get(b"k").is_none());
        assert_eq!(l.len(), 0);
        // Freed slots are reused before the vector grows.
        let (s2, _) = l.insert(item("x", "y")).ok().unwrap();
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
            l.insert(item(&format!("k{i}"), &i.to_string())).ok();
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
    }
}
