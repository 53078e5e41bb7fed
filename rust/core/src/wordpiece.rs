//! WordPiece: greedy longest-match-first subword segmentation.
//!
//! Semantics of HF `tokenizers`' `WordPiece::tokenize` (and Google BERT's `WordpieceTokenizer`):
//! a word longer than `max_input_chars_per_word` characters is one `[UNK]`; otherwise take the
//! longest vocabulary entry that prefixes the word, then repeatedly the longest
//! `##`-continuation that prefixes the rest; if some position has no match the whole word is
//! one `[UNK]`.
//!
//! Implementation: all vocabulary entries live in one byte-level *double-array trie*
//! (`base`/`check` arrays: a transition is one array read and one compare). The longest match
//! from a position is a single forward walk, remembering the last accepting node;
//! continuation pieces start the walk at the node reached by the prefix (`"##"`). Each piece
//! costs O(its length + the look-ahead past it), so a word costs O(length x longest token)
//! in the worst case and O(length) in practice, with no allocation.

use crate::vocab::Vocab;
use crate::{Error, Result};

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    base: u32,
    check: u32,
    value: u32,
}

/// Bit of `base` marking a node where a key ends.
const ACCEPT: u32 = 1 << 31;

/// A byte-level double-array trie mapping strings to ids. Each slot is 8 bytes
/// (`base | ACCEPT`, `check`) so the walk touches as few cache lines as possible; the ids of
/// accepting nodes live in a separate array read once per match.
#[derive(Clone, Debug)]
pub struct DoubleArrayTrie {
    nodes: Vec<[u32; 2]>,
    values: Vec<u32>,
}

impl DoubleArrayTrie {
    /// Root node index.
    pub const ROOT: u32 = 0;

    /// Build from `(key, value)` pairs (keys distinct and non-empty).
    pub fn build<'a>(entries: impl Iterator<Item = (&'a [u8], u32)>) -> Self {
        // 1. A plain pointer trie with sorted child lists.
        let mut kids: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut vals: Vec<u32> = vec![NONE];
        for (key, v) in entries {
            let mut s = 0usize;
            for &b in key {
                s = match kids[s].binary_search_by_key(&b, |k| k.0) {
                    Ok(i) => kids[s][i].1 as usize,
                    Err(i) => {
                        let n = kids.len() as u32;
                        kids[s].insert(i, (b, n));
                        kids.push(Vec::new());
                        vals.push(NONE);
                        n as usize
                    }
                };
            }
            vals[s] = v;
        }
        // 2. Place nodes breadth-first into the double array. Free slots form a doubly linked
        //    list so a search visits free slots only; a slot that failed many searches is
        //    taken off the list (and stays unused) so searches do not rescan a crowded prefix.
        let mut da = Placer::new(kids.len() * 2 + 512);
        da.take(0);
        da.nodes[0] = Node {
            base: 1,
            check: 0,
            value: vals[0],
        };
        let mut queue = std::collections::VecDeque::from([(0usize, 0usize)]);
        while let Some((tmp, at)) = queue.pop_front() {
            let children = &kids[tmp];
            if children.is_empty() {
                continue;
            }
            let base = da.find_base(children);
            da.nodes[at].base = base as u32;
            for &(l, child) in children {
                let t = base + l as usize;
                da.take(t);
                da.nodes[t] = Node {
                    base: 1,
                    check: at as u32,
                    value: vals[child as usize],
                };
                queue.push_back((child as usize, t));
            }
        }
        let mut full = da.nodes;
        let used = full.iter().rposition(|n| n.check != NONE).unwrap_or(0) + 1;
        full.truncate(used.max(1) + 256);
        let nodes = full
            .iter()
            .map(|n| {
                debug_assert!(n.base < ACCEPT);
                [n.base | if n.value != NONE { ACCEPT } else { 0 }, n.check]
            })
            .collect();
        let values = full.iter().map(|n| n.value).collect();
        Self { nodes, values }
    }

    /// Follow the edge labelled `b` from node `s`.
    #[inline(always)]
    pub fn step(&self, s: u32, b: u8) -> Option<u32> {
        let t = (self.nodes[s as usize][0] & !ACCEPT) as usize + b as usize;
        match self.nodes.get(t) {
            Some(n) if n[1] == s => Some(t as u32),
            _ => None,
        }
    }

    /// Whether a key ends at node `s`.
    #[inline(always)]
    pub fn accepts(&self, s: u32) -> bool {
        self.nodes[s as usize][0] & ACCEPT != 0
    }

    /// The value stored at node `s`, if a key ends there.
    #[inline(always)]
    pub fn value(&self, s: u32) -> Option<u32> {
        let v = self.values[s as usize];
        (v != NONE).then_some(v)
    }

    /// Exact lookup of `key`.
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let mut s = Self::ROOT;
        for &b in key {
            s = self.step(s, b)?;
        }
        self.value(s)
    }
}

/// Slot allocator of the double array (build time only).
struct Placer {
    nodes: Vec<Node>,
    next: Vec<u32>,
    prev: Vec<u32>,
    fails: Vec<u8>,
    head: u32,
    tail: u32,
}

impl Placer {
    fn new(cap: usize) -> Self {
        let mut p = Self {
            nodes: Vec::new(),
            next: Vec::new(),
            prev: Vec::new(),
            fails: Vec::new(),
            head: NONE,
            tail: NONE,
        };
        p.grow(cap.max(512));
        p
    }

    /// Extend the array to `to` slots, appending the new slots to the free list.
    fn grow(&mut self, to: usize) {
        let old = self.nodes.len();
        if to <= old {
            return;
        }
        self.nodes.resize(
            to,
            Node {
                base: 0,
                check: NONE,
                value: NONE,
            },
        );
        self.next.resize(to, NONE);
        self.prev.resize(to, NONE);
        self.fails.resize(to, 0);
        for i in old..to {
            self.prev[i] = self.tail;
            if self.tail == NONE {
                self.head = i as u32;
            } else {
                self.next[self.tail as usize] = i as u32;
            }
            self.tail = i as u32;
        }
    }

    /// Remove slot `i` from the free list (if it is on it).
    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        let on_list = p != NONE || self.head == i as u32;
        if !on_list {
            return;
        }
        if p == NONE {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NONE {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NONE;
        self.next[i] = NONE;
    }

    fn take(&mut self, i: usize) {
        self.grow(i + 1);
        self.unlink(i);
        self.nodes[i].check = 0; // marked used; the caller sets the real check
    }

    /// Smallest base (in free-list order) whose slots for all `children` labels are free.
    fn find_base(&mut self, children: &[(u8, u32)]) -> usize {
        let lo = children[0].0 as usize;
        let mut p = self.head;
        loop {
            if p == NONE {
                let len = self.nodes.len();
                self.grow(len + len / 2 + 256);
                p = self.head;
                continue;
            }
            let pos = p as usize;
            let nxt = self.next[pos];
            if pos > lo {
                let b = pos - lo;
                self.grow(b + 256);
                if children
                    .iter()
                    .all(|&(l, _)| self.nodes[b + l as usize].check == NONE)
                {
                    return b;
                }
                self.fails[pos] = self.fails[pos].saturating_add(1);
                if self.fails[pos] > 16 {
                    self.unlink(pos);
                }
            }
            p = nxt;
        }
    }
}

/// Exact lookup of whole words of 1 to 16 bytes: open-addressing hash tables keyed by the
/// word's bytes packed into one or two little-endian `u64`s (plus the length).
///
/// Most words of running text are one vocabulary entry. Hashing the word while it is scanned
/// costs a few arithmetic instructions per byte and one table probe per word, where a trie walk
/// costs a chain of dependent loads per byte; a word that is not an entry (several pieces, or
/// `[UNK]`) still goes through the trie.
///
/// The table is an accelerator, not the vocabulary: it holds only the entries that a BERT
/// pre-token of ASCII text can equal ([`WordTable::holds`]); every other entry (`##` pieces,
/// other scripts, `[CLS]`...) is found by the trie, and looking it up here returns `None`.
/// Fewer entries mean fewer collisions: probes of BERT's vocabulary (17k entries held of 30k)
/// end at the first slot more often (measured +3% on English text).
#[derive(Clone, Debug)]
pub struct WordTable {
    short: Vec<ShortSlot>,
    short_bits: u32,
    long: Vec<LongSlot>,
    long_bits: u32,
}

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct ShortSlot {
    key: u64,
    id: u32,
    /// 0 for an empty slot.
    len: u32,
}

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct LongSlot {
    key: [u64; 2],
    id: u32,
    len: u32,
}

const HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl WordTable {
    /// Longest word (in bytes) the table holds.
    pub const MAX_LEN: usize = 16;

    /// Pack `word` (at most 16 bytes) into two little-endian words, zero-padded.
    #[inline]
    pub fn pack(word: &[u8]) -> [u64; 2] {
        // Byte by byte in registers (a copy into a buffer read back as words would stall on
        // store forwarding).
        let mut k = [0u64; 2];
        for (i, &b) in word.iter().take(16).enumerate() {
            k[i / 8] |= (b as u64) << (8 * (i % 8));
        }
        k
    }

    #[inline(always)]
    fn hash_short(key: u64, len: usize, bits: u32) -> usize {
        ((key ^ len as u64).wrapping_mul(HASH_MUL) >> (64 - bits)) as usize
    }

    #[inline(always)]
    fn hash_long(key: [u64; 2], bits: u32) -> usize {
        ((key[0] ^ key[1].rotate_left(31)).wrapping_mul(HASH_MUL) >> (64 - bits)) as usize
    }

    /// Whether the table holds an entry `word`: 1 to 16 ASCII bytes, no NUL, and no BERT
    /// punctuation or whitespace unless it is a single byte (a pre-token of ASCII text is one
    /// punctuation character or a run of other characters).
    pub fn holds(word: &[u8]) -> bool {
        let splits = |b: u8| {
            matches!(b, b' ' | b'\t' | b'\n' | b'\r')
                || (33..=47).contains(&b)
                || (58..=64).contains(&b)
                || (91..=96).contains(&b)
                || (123..=126).contains(&b)
        };
        (1..=Self::MAX_LEN).contains(&word.len())
            && word.iter().all(|&b| b != 0 && b < 0x80)
            && (word.len() == 1 || !word.iter().any(|&b| splits(b)))
    }

    /// Build from `(key, value)` pairs; keys the table does not hold ([`WordTable::holds`])
    /// are skipped.
    pub fn build<'a>(entries: impl Iterator<Item = (&'a [u8], u32)>) -> Self {
        let (mut short_keys, mut long_keys) = (Vec::new(), Vec::new());
        for (k, v) in entries.filter(|(k, _)| Self::holds(k)) {
            match k.len() {
                0 => {}
                1..=8 => short_keys.push((Self::pack(k)[0], v, k.len())),
                9..=16 => long_keys.push((Self::pack(k), v, k.len())),
                _ => {}
            }
        }
        // Load factor at most 1/2 (probes stay within a cache line or two).
        let bits_for = |n: usize| (2 * n.max(1)).next_power_of_two().trailing_zeros().max(4);
        let short_bits = bits_for(short_keys.len());
        let long_bits = bits_for(long_keys.len());
        let mut short = vec![ShortSlot::default(); 1 << short_bits];
        let mask = short.len() - 1;
        for (key, id, len) in short_keys {
            let mut h = Self::hash_short(key, len, short_bits);
            while short[h].len != 0 && !(short[h].key == key && short[h].len as usize == len) {
                h = (h + 1) & mask;
            }
            short[h] = ShortSlot {
                key,
                id,
                len: len as u32,
            };
        }
        let mut long = vec![LongSlot::default(); 1 << long_bits];
        let mask = long.len() - 1;
        for (key, id, len) in long_keys {
            let mut h = Self::hash_long(key, long_bits);
            while long[h].len != 0 && !(long[h].key == key && long[h].len as usize == len) {
                h = (h + 1) & mask;
            }
            long[h] = LongSlot {
                key,
                id,
                len: len as u32,
            };
        }
        Self {
            short,
            short_bits,
            long,
            long_bits,
        }
    }

    /// Value of the word of `len` (1 to 8) bytes packed in `key` (see [`WordTable::pack`]).
    #[inline(always)]
    pub fn get_short(&self, key: u64, len: usize) -> Option<u32> {
        let mask = self.short.len() - 1;
        let mut h = Self::hash_short(key, len, self.short_bits);
        loop {
            let slot = &self.short[h];
            if slot.key == key && slot.len as usize == len {
                return Some(slot.id);
            }
            if slot.len == 0 {
                return None;
            }
            h = (h + 1) & mask;
        }
    }

    /// Value of the word of `len` (9 to 16) bytes packed in `key`.
    #[inline(always)]
    pub fn get_long(&self, key: [u64; 2], len: usize) -> Option<u32> {
        let mask = self.long.len() - 1;
        let mut h = Self::hash_long(key, self.long_bits);
        loop {
            let slot = &self.long[h];
            if slot.key == key && slot.len as usize == len {
                return Some(slot.id);
            }
            if slot.len == 0 {
                return None;
            }
            h = (h + 1) & mask;
        }
    }

    /// Exact lookup of `word` (any length; `None` beyond [`WordTable::MAX_LEN`]).
    pub fn get(&self, word: &[u8]) -> Option<u32> {
        match word.len() {
            1..=8 => self.get_short(Self::pack(word)[0], word.len()),
            9..=16 => self.get_long(Self::pack(word), word.len()),
            _ => None,
        }
    }
}

/// The WordPiece model: vocabulary trie plus the `[UNK]` rules.
#[derive(Clone, Debug)]
pub struct WordPiece {
    trie: DoubleArrayTrie,
    /// Every entry of up to 16 bytes, by hash (one probe finds a word that is one entry).
    words: WordTable,
    cont_root: Option<u32>,
    pub unk_id: u32,
    pub max_input_chars_per_word: usize,
}

impl WordPiece {
    /// Build from a vocabulary; `unk_token` must be in it.
    pub fn new(
        vocab: &Vocab,
        unk_token: &str,
        continuing_subword_prefix: &str,
        max_input_chars_per_word: usize,
    ) -> Result<Self> {
        let unk_id = vocab.token_to_id(unk_token).ok_or_else(|| {
            Error::InvalidInput(format!(
                "the unknown token {unk_token:?} is not in the vocabulary"
            ))
        })?;
        if continuing_subword_prefix.is_empty() {
            return Err(Error::InvalidInput(
                "continuing_subword_prefix must not be empty".into(),
            ));
        }
        let trie = DoubleArrayTrie::build(
            vocab
                .tokens()
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_bytes(), i as u32)),
        );
        let words = WordTable::build(
            vocab
                .tokens()
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_bytes(), i as u32)),
        );
        let mut cont_root = Some(DoubleArrayTrie::ROOT);
        for &b in continuing_subword_prefix.as_bytes() {
            cont_root = cont_root.and_then(|s| trie.step(s, b));
        }
        Ok(Self {
            trie,
            words,
            cont_root,
            unk_id,
            max_input_chars_per_word,
        })
    }

    /// The vocabulary trie (exact lookups).
    pub fn trie(&self) -> &DoubleArrayTrie {
        &self.trie
    }

    /// The whole-entry hash table (exact lookups of entries of up to 16 bytes).
    pub fn words(&self) -> &WordTable {
        &self.words
    }

    /// Segment one normalized word (`n_chars` characters) into `(id, byte_start, byte_end)`
    /// pieces appended to `out`. On failure (a word too long, or no piece matches somewhere)
    /// the word becomes one `[UNK]` spanning it, as in the reference.
    #[inline]
    pub fn tokenize(&self, word: &[u8], n_chars: usize, out: &mut Vec<(u32, u32, u32)>) {
        let mark = out.len();
        if n_chars <= self.max_input_chars_per_word && self.tokenize_pieces(word, 0, out) {
            return;
        }
        out.truncate(mark);
        out.push((self.unk_id, 0, word.len() as u32));
    }

    /// Greedy longest-match pieces from byte `start` (a continuation when `start > 0`) by
    /// walking the trie.
    #[inline]
    fn tokenize_pieces(
        &self,
        word: &[u8],
        mut start: usize,
        out: &mut Vec<(u32, u32, u32)>,
    ) -> bool {
        let n = word.len();
        let mut root = if start == 0 {
            DoubleArrayTrie::ROOT
        } else {
            match self.cont_root {
                Some(c) => c,
                None => return false,
            }
        };
        while start < n {
            let mut s = root;
            let mut best_end = 0usize;
            let mut best_node = NONE;
            let mut i = start;
            while i < n {
                match self.trie.step(s, word[i]) {
                    Some(t) => {
                        s = t;
                        i += 1;
                        if self.trie.accepts(t) {
                            best_end = i;
                            best_node = t;
                        }
                    }
                    None => break,
                }
            }
            if best_node == NONE {
                return false;
            }
            let best_id = self.trie.values[best_node as usize];
            out.push((best_id, start as u32, best_end as u32));
            start = best_end;
            match self.cont_root {
                Some(c) => root = c,
                None => return start == n,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wp(tokens: &[&str]) -> (Vocab, WordPiece) {
        let v = Vocab::new(tokens.iter().map(|s| s.to_string()).collect()).unwrap();
        let w = WordPiece::new(&v, "[UNK]", "##", 100).unwrap();
        (v, w)
    }

    /// The reference algorithm, written naively (shrink the candidate from the right).
    fn naive(v: &Vocab, word: &str) -> Vec<(u32, u32, u32)> {
        let unk = vec![(v.token_to_id("[UNK]").unwrap(), 0, word.len() as u32)];
        if word.chars().count() > 100 {
            return unk;
        }
        let mut out = vec![];
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                let sub = if start > 0 {
                    format!("##{}", &word[start..end])
                } else {
                    word[start..end].to_string()
                };
                if let Some(id) = v.token_to_id(&sub) {
                    found = Some(id);
                    break;
                }
                end -= word[..end].chars().last().unwrap().len_utf8();
            }
            match found {
                Some(id) => out.push((id, start as u32, end as u32)),
                None => return unk,
            }
            start = end;
        }
        out
    }

    #[test]
    fn greedy_longest_match_with_continuations() {
        let (v, w) = wp(&[
            "[UNK]", "ba", "##na", "b", "##a", "##n", "un", "##aff", "##able", "é", "##é",
        ]);
        for word in [
            "banana",
            "ban",
            "unaffable",
            "nanana",
            "b",
            "a",
            "éé",
            "baé",
            "bax",
            "",
        ] {
            let mut out = vec![];
            if !word.is_empty() {
                w.tokenize(word.as_bytes(), word.chars().count(), &mut out);
                assert_eq!(out, naive(&v, word), "word {word:?}");
            }
        }
        let mut out = vec![];
        w.tokenize(b"banana", 6, &mut out);
        assert_eq!(out, vec![(1, 0, 2), (2, 2, 4), (2, 4, 6)]);
    }

    #[test]
    fn long_words_are_unknown() {
        let (_, w) = wp(&["[UNK]", "a", "##a"]);
        let mut out = vec![];
        w.tokenize(&[b'a'; 100], 100, &mut out);
        assert_eq!(out.len(), 100);
        out.clear();
        w.tokenize(&[b'a'; 101], 101, &mut out);
        assert_eq!(out, vec![(0, 0, 101)]);
    }

    #[test]
    fn missing_unk_is_an_error() {
        let v = Vocab::new(vec!["a".into()]).unwrap();
        assert!(matches!(
            WordPiece::new(&v, "[UNK]", "##", 100),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn trie_finds_every_key() {
        let keys: Vec<String> = (0..3000).map(|i| format!("k{}x{}", i % 97, i)).collect();
        let t = DoubleArrayTrie::build(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_bytes(), i as u32)),
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.get(k.as_bytes()), Some(i as u32));
        }
        assert_eq!(t.get(b"k1"), None);
        assert_eq!(t.get(b"zzz"), None);
    }

    #[test]
    fn word_table_agrees_with_the_trie() {
        let mut keys: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("w{}{}", i % 7, "x".repeat((i % 19) as usize)).into_bytes())
            .collect();
        for k in [
            &b"a\0"[..],
            b"a",
            b"b\0c",
            b"##ab",
            b"[CLS]",
            b"#",
            b"a b",
            b"\x7f",
        ] {
            keys.push(k.to_vec());
        }
        keys.push("\u{e9}t\u{e9}".as_bytes().to_vec());
        keys.sort();
        keys.dedup();
        let entries = || {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_slice(), i as u32))
        };
        let table = WordTable::build(entries());
        let trie = DoubleArrayTrie::build(entries());
        let mut held = 0;
        for (i, k) in keys.iter().enumerate() {
            // Held: ASCII, 1 to 16 bytes, no NUL, punctuation/whitespace only alone.
            let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == 0x7f;
            let holds = (1..=16).contains(&k.len())
                && k.iter().all(|&b| b != 0 && b < 0x80)
                && (k.len() == 1 || k.iter().all(plain));
            assert_eq!(WordTable::holds(k), holds, "key {k:?}");
            held += holds as usize;
            assert_eq!(table.get(k), holds.then_some(i as u32), "key {k:?}");
            assert_eq!(trie.get(k), Some(i as u32));
        }
        assert!(held > 100 && held < keys.len(), "{held} of {}", keys.len());
        // Misses, and words whose packed key equals a held one ("a" + NUL bytes).
        for probe in [
            &b"a\0\0"[..],
            b"a\0",
            b"w",
            b"w0xxxxxxxxxxxxxy",
            b"",
            b"zz",
            b"\0",
        ] {
            let want = trie.get(probe).filter(|_| WordTable::holds(probe));
            assert_eq!(table.get(probe), want, "{probe:?}");
        }
        let long_nul = b"w0xxxxxxxxxxxxx\0"; // 16 bytes, packs like the held 15-byte word
        assert_eq!(table.get(&long_nul[..15]), trie.get(&long_nul[..15]));
        assert!(table.get(&long_nul[..15]).is_some());
        assert_eq!(table.get(long_nul), None);
    }

    #[test]
    fn word_table_with_colliding_keys() {
        // Many similar keys, short and long: probe chains and misses next to them.
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        let long: Vec<String> = (0..200).map(|i| format!("longword{i:04}x")).collect();
        let entries = keys
            .iter()
            .chain(&long)
            .enumerate()
            .map(|(i, k)| (k.as_bytes(), i as u32));
        let table = WordTable::build(entries);
        for (i, k) in keys.iter().chain(&long).enumerate() {
            assert_eq!(table.get(k.as_bytes()), Some(i as u32), "{k}");
        }
        for k in ["k200", "k-1", "longword0200x", "longword0000y"] {
            assert_eq!(table.get(k.as_bytes()), None, "{k}");
        }
    }
}
