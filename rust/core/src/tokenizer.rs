//! The BERT tokenizer pipeline: normalize, pretokenize, wordpiece, special tokens, truncation.
//!
//! Follows HF `tokenizers` 0.23.3 `Tokenizer::encode` for a BERT `tokenizer.json`:
//!
//! 1. *Added tokens*: the special tokens (`[CLS]`, `[SEP]`, `[MASK]`, ...) are found verbatim
//!    in the raw text (leftmost-longest) and become one token each; the text between them is
//!    processed by the next steps.
//! 2. Normalization ([`crate::normalize`]), pre-tokenization ([`crate::pretokenize`]) and
//!    WordPiece ([`crate::wordpiece`]). Word ids count the words (including added-token
//!    splits) of each sequence from 0.
//! 3. Truncation of the sequence(s) to `max_length` minus the special tokens
//!    (`longest_first`, `only_first`, `only_second`, HF `utils/truncation.rs`), then the
//!    template `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` with type ids 0 for A (and its
//!    `[SEP]`), 1 for B (and the final `[SEP]`). Special tokens get offsets (0, 0) and word id -1.
//!
//! Offsets are *character* offsets into the original text (what Python's `Encoding.offsets`
//! reports for `str` input). ASCII text takes a fast path (64-byte class masks from
//! [`crate::byteclass`], one [`WordTable`] probe per word, the trie only for words of several
//! pieces); other text whose normalization is the identity per character takes a one-pass
//! path; anything else takes the general normalizer, which follows HF's alignment rules
//! exactly. `encode_batch` runs chunks in parallel and places them in order (see
//! `Tokenizer::encode_chunks_ordered`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::byteclass::{self, ByteClasses};
use crate::normalize::{
    char_flags, NChar, NormScratch, Normalizer, NormalizerConfig, F_CHINESE, F_CLEAN_WS, F_DROP,
    F_LOWER_SELF, F_MN, F_NFD_SELF, F_PUNCT, F_WS,
};
use crate::pretokenize::split_words;
use crate::segment::Segmenter;
use crate::vocab::Vocab;
use crate::wordpiece::{WordPiece, WordTable};
use crate::{pool, Error, Result};

/// Truncation strategy (HF names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    LongestFirst,
    OnlyFirst,
    OnlySecond,
}

impl Truncation {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "longest_first" => Ok(Self::LongestFirst),
            "only_first" => Ok(Self::OnlyFirst),
            "only_second" => Ok(Self::OnlySecond),
            other => Err(Error::InvalidInput(format!(
                "truncation must be 'longest_first', 'only_first' or 'only_second', got {other:?}"
            ))),
        }
    }
}

/// Options of one encode call.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    pub add_special_tokens: bool,
    pub max_length: Option<usize>,
    pub truncation: Truncation,
    pub stride: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            add_special_tokens: true,
            max_length: None,
            truncation: Truncation::LongestFirst,
            stride: 0,
        }
    }
}

/// Everything needed to build a [`Tokenizer`] besides the vocabulary.
#[derive(Clone, Debug)]
pub struct TokenizerConfig {
    pub normalizer: NormalizerConfig,
    pub unk_token: String,
    pub continuing_subword_prefix: String,
    pub max_input_chars_per_word: usize,
    pub cls_token: String,
    pub sep_token: String,
    pub pad_token: String,
    pub mask_token: String,
    /// Tokens matched verbatim in the raw text before normalization (HF "added tokens"
    /// with `normalized: false`). Those missing from the vocabulary are ignored.
    pub special_tokens: Vec<String>,
    /// How [`Tokenizer::decode`] joins tokens (the `decoder` of HF's `tokenizer.json`).
    pub decoder: Decoder,
}

/// How [`Tokenizer::decode`] turns tokens back into text: the `decoder` of an HF
/// `tokenizer.json`, for the decoders reproduced here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// HF `decoders::WordPiece`: a token (other than the first) starting with `prefix` is glued
    /// to the previous one with the prefix removed, others get a space before them; with
    /// `cleanup`, HF's per-token cleanup rules (no space before `.`, `,`, `n't`...) follow.
    WordPiece { prefix: String, cleanup: bool },
    /// No decoder (`"decoder": null`): HF's `Tokenizer::decode` joins the tokens with spaces.
    Spaces,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::WordPiece {
            prefix: "##".into(),
            cleanup: true,
        }
    }
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            normalizer: NormalizerConfig::default(),
            unk_token: "[UNK]".into(),
            continuing_subword_prefix: "##".into(),
            max_input_chars_per_word: 100,
            cls_token: "[CLS]".into(),
            sep_token: "[SEP]".into(),
            pad_token: "[PAD]".into(),
            mask_token: "[MASK]".into(),
            special_tokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            decoder: Decoder::default(),
        }
    }
}

/// Encoded tokens of one or many sequences, as flat columns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodingBuf {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u8>,
    pub offsets: Vec<[u32; 2]>,
    /// Word index within its sequence; -1 for template special tokens.
    pub word_ids: Vec<i32>,
}

impl EncodingBuf {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Make room for `n` more tokens in every column.
    pub fn reserve(&mut self, n: usize) {
        self.ids.reserve(n);
        self.type_ids.reserve(n);
        self.offsets.reserve(n);
        self.word_ids.reserve(n);
    }

    /// Make room for an *estimated* `n` more tokens in every column if that much memory can be
    /// had, else for none (the columns then grow as tokens come, and only a batch whose tokens
    /// really do not fit runs out of memory). Returns the room made: `n` or 0.
    ///
    /// The estimates reserve more than most batches use (up to 2x); with a few GB of text in one
    /// call the estimate alone can exceed what the system grants, which an infallible
    /// `reserve` turns into an abort of the whole process.
    pub fn reserve_estimate(&mut self, n: usize) -> usize {
        #[cfg(test)]
        if tests::NO_ROOM.with(|c| c.get()) {
            return 0; // a test of the fallback: as if the system had refused
        }
        let ok = self.ids.try_reserve(n).is_ok()
            && self.type_ids.try_reserve(n).is_ok()
            && self.offsets.try_reserve(n).is_ok()
            && self.word_ids.try_reserve(n).is_ok();
        if ok {
            return n;
        }
        // Give back what the columns that succeeded took.
        self.ids.shrink_to_fit();
        self.type_ids.shrink_to_fit();
        self.offsets.shrink_to_fit();
        self.word_ids.shrink_to_fit();
        0
    }
    pub fn clear(&mut self) {
        self.ids.clear();
        self.type_ids.clear();
        self.offsets.clear();
        self.word_ids.clear();
    }
    fn truncate(&mut self, n: usize) {
        self.ids.truncate(n);
        self.type_ids.truncate(n);
        self.offsets.truncate(n);
        self.word_ids.truncate(n);
    }
    #[inline]
    fn push(&mut self, id: u32, type_id: u8, start: u32, end: u32, word: i32) {
        self.ids.push(id);
        self.type_ids.push(type_id);
        self.offsets.push([start, end]);
        self.word_ids.push(word);
    }
    fn extend_range(&mut self, other: &EncodingBuf, s: usize, e: usize) {
        self.ids.extend_from_slice(&other.ids[s..e]);
        self.type_ids.extend_from_slice(&other.type_ids[s..e]);
        self.offsets.extend_from_slice(&other.offsets[s..e]);
        self.word_ids.extend_from_slice(&other.word_ids[s..e]);
    }
    fn extend_prefix(&mut self, other: &EncodingBuf, n: usize) {
        self.ids.extend_from_slice(&other.ids[..n]);
        self.type_ids.extend_from_slice(&other.type_ids[..n]);
        self.offsets.extend_from_slice(&other.offsets[..n]);
        self.word_ids.extend_from_slice(&other.word_ids[..n]);
    }
}

/// A batch of encodings: flat columns plus `row_splits` (length B + 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaggedBatch {
    pub tokens: EncodingBuf,
    pub row_splits: Vec<i64>,
}

/// One input sequence: a text, or a text already split into words (HF `is_pretokenized`,
/// transformers' `is_split_into_words`). Each word is pre-tokenized and encoded on its own; its
/// tokens all take the word's index as word id, and their offsets are character offsets
/// into that word (as HF).
#[derive(Clone, Copy, Debug)]
pub enum Seq<'a> {
    Text(&'a str),
    Words(&'a [&'a str]),
}

impl Seq<'_> {
    /// Bytes of text (the words' bytes for split input).
    fn bytes(&self) -> usize {
        match self {
            Seq::Text(t) => t.len(),
            Seq::Words(w) => w.iter().map(|x| x.len()).sum(),
        }
    }

    /// Reject a text (or word) whose offsets would not fit the `u32` offset columns.
    fn check_len(&self, what: impl Fn() -> String) -> Result<()> {
        match self {
            Seq::Text(t) => check_len(t, what),
            Seq::Words(ws) => {
                for (j, w) in ws.iter().enumerate() {
                    check_len(w, || format!("{}[{j}]", what()))?;
                }
                Ok(())
            }
        }
    }
}

/// The sequences of a batch: texts, or texts split into words, given as all the words in
/// order and, per text, where its words start (`splits`: B + 1 increasing indices into `words`,
/// from 0 to `words.len()`).
#[derive(Clone, Copy, Debug)]
pub enum BatchInput<'a> {
    Texts(&'a [&'a str]),
    Words {
        words: &'a [&'a str],
        splits: &'a [usize],
    },
}

impl<'a> BatchInput<'a> {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        match self {
            BatchInput::Texts(t) => t.len(),
            BatchInput::Words { splits, .. } => splits.len().saturating_sub(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Seq<'a> {
        match *self {
            BatchInput::Texts(t) => Seq::Text(t[i]),
            BatchInput::Words { words, splits } => Seq::Words(&words[splits[i]..splits[i + 1]]),
        }
    }

    /// Check the word splits (increasing, from 0 to the number of words).
    fn validate(&self, what: &str) -> Result<()> {
        if let BatchInput::Words { words, splits } = self {
            let ok = splits.first() == Some(&0)
                && splits.last() == Some(&words.len())
                && splits.windows(2).all(|w| w[0] <= w[1]);
            if !ok {
                return Err(Error::InvalidInput(format!(
                    "{what}: word splits must increase from 0 to {} (the number of words)",
                    words.len()
                )));
            }
        }
        Ok(())
    }
}

/// Per-thread scratch buffers (no allocation per token or per word in steady state).
#[derive(Default)]
pub struct Scratch {
    norm: NormScratch,
    nchars: Vec<NChar>,
    word: Vec<u8>,
    byte_char: Vec<u32>,
    pieces: Vec<(u32, u32, u32)>,
    /// Block masks of the ASCII path.
    masks: Vec<u64>,
    /// Pieces of recent multi-piece words of the ASCII path.
    memo: PieceMemo,
    pair: EncodingBuf,
    first: EncodingBuf,
}

/// The WordPiece pieces of recently seen multi-piece ASCII words (direct-mapped, 1024 slots,
/// allocated on first use): a pure function's cache, so results never depend on it. It
/// belongs to the tokenizer that filled it (`owner`); another one clears it first.
#[derive(Default)]
struct PieceMemo {
    owner: u64,
    slots: Vec<MemoSlot>,
}

/// One remembered word: its packed key and length, and up to [`MemoSlot::MAX`] pieces as
/// (id, end byte); `len == 0` for an empty slot.
#[derive(Clone, Copy, Default)]
struct MemoSlot {
    key: [u64; 2],
    len: u8,
    n: u8,
    ends: [u8; MemoSlot::MAX],
    ids: [u32; MemoSlot::MAX],
}

impl MemoSlot {
    const MAX: usize = 6;

    #[inline]
    fn get(&self, key: [u64; 2], len: usize) -> Option<&MemoSlot> {
        (self.len as usize == len && self.key == key).then_some(self)
    }

    /// Remember `pieces` (byte ranges within the word) if they fit.
    #[inline]
    fn put(&mut self, key: [u64; 2], len: usize, pieces: &[(u32, u32, u32)]) {
        if pieces.len() > Self::MAX {
            return;
        }
        *self = MemoSlot {
            key,
            len: len as u8,
            n: pieces.len() as u8,
            ..Default::default()
        };
        for (j, &(id, _, end)) in pieces.iter().enumerate() {
            self.ids[j] = id;
            self.ends[j] = end as u8;
        }
    }
}

impl PieceMemo {
    const BITS: u32 = 10;

    /// The slot of `key` (a word of `len` <= 16 bytes), for the tokenizer `owner`.
    #[inline]
    fn slot(&mut self, owner: u64, key: [u64; 2], len: usize) -> &mut MemoSlot {
        if self.owner != owner || self.slots.is_empty() {
            self.owner = owner;
            self.slots.clear();
            self.slots.resize(1 << Self::BITS, MemoSlot::default());
        }
        let h = (key[0] ^ key[1].rotate_left(29) ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (64 - Self::BITS);
        &mut self.slots[h as usize]
    }
}

/// Source of [`Tokenizer`] identities (for [`PieceMemo`] ownership); clones share one.
static NEXT_TOKENIZER_ID: AtomicU64 = AtomicU64::new(1);

/// Encoder of one chunk of a batch `(first text, end)` into a buffer; returns the length of
/// each row and, with overflowing rows, the text index of each row.
type ChunkWork<'a> = dyn Fn(&mut Scratch, &(usize, usize), &mut EncodingBuf) -> Result<(Vec<u32>, Vec<i64>)>
    + Sync
    + 'a;

/// Raw pointers to the output columns' buffers, written by several threads at disjoint places
/// (see [`Tokenizer::encode_chunks_ordered`]).
struct Dest {
    ids: *mut u32,
    types: *mut u8,
    offs: *mut [u32; 2],
    words: *mut i32,
    /// Row splits, when every text is one row (null otherwise): the chunk of texts `s..e`
    /// writes entries `s + 1..=e`.
    splits: *mut i64,
}

// SAFETY: the pointers are only written through at disjoint places assigned under a lock.
unsafe impl Send for Dest {}
unsafe impl Sync for Dest {}

impl Dest {
    /// Copy `buf` to places `at..at + buf.len()`.
    ///
    /// # Safety
    /// That range must lie within the columns' capacity, and no other thread may access it.
    unsafe fn write(&self, at: usize, buf: &EncodingBuf) {
        let n = buf.len();
        std::ptr::copy_nonoverlapping(buf.ids.as_ptr(), self.ids.add(at), n);
        std::ptr::copy_nonoverlapping(buf.type_ids.as_ptr(), self.types.add(at), n);
        std::ptr::copy_nonoverlapping(buf.offsets.as_ptr(), self.offs.add(at), n);
        std::ptr::copy_nonoverlapping(buf.word_ids.as_ptr(), self.words.add(at), n);
    }

    /// Write the row splits of the texts `first + 1..` (one row each, of lengths `lens`) whose
    /// tokens start at `at`.
    ///
    /// # Safety
    /// `splits` must be non-null with room for those entries, which no other thread accesses.
    unsafe fn write_splits(&self, first: usize, at: usize, lens: &[u32]) {
        let mut acc = at as i64;
        for (j, &l) in lens.iter().enumerate() {
            acc += l as i64;
            self.splits.add(first + 1 + j).write(acc);
        }
    }
}

/// Appends tokens to three output columns of equal length, with one capacity check per token
/// (the columns' lengths are set once, by [`TokenWriter::finish`]).
struct TokenWriter<'a> {
    ids: &'a mut Vec<u32>,
    offs: &'a mut Vec<[u32; 2]>,
    words: &'a mut Vec<i32>,
    /// Tokens in the columns, written ones included.
    len: usize,
    /// Room of the smallest column.
    cap: usize,
}

impl<'a> TokenWriter<'a> {
    /// The most tokens reserved at once (a huge text reserves as it goes).
    const MAX_RESERVE: usize = 1 << 16;

    fn new(
        ids: &'a mut Vec<u32>,
        offs: &'a mut Vec<[u32; 2]>,
        words: &'a mut Vec<i32>,
        reserve: usize,
    ) -> Self {
        debug_assert!(ids.len() == offs.len() && ids.len() == words.len());
        let len = ids.len();
        let mut w = Self {
            ids,
            offs,
            words,
            len,
            cap: len,
        };
        w.reserve(reserve);
        w
    }

    fn reserve(&mut self, more: usize) {
        self.ids.reserve(more);
        self.offs.reserve(more);
        self.words.reserve(more);
        self.cap = self
            .ids
            .capacity()
            .min(self.offs.capacity())
            .min(self.words.capacity());
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        self.sync();
        self.reserve(self.len.max(1024));
    }

    /// Set the columns' lengths to the tokens written.
    fn sync(&mut self) {
        // SAFETY: `len <= cap`, and every slot below `len` was written by `push` (or was
        // already part of the column).
        unsafe {
            self.ids.set_len(self.len);
            self.offs.set_len(self.len);
            self.words.set_len(self.len);
        }
    }

    #[inline(always)]
    fn push(&mut self, id: u32, offsets: [u32; 2], word: i32) {
        if self.len == self.cap {
            self.grow();
        }
        // SAFETY: `len < cap <=` each column's capacity: the slot is allocated, unused.
        unsafe {
            self.ids.as_mut_ptr().add(self.len).write(id);
            self.offs.as_mut_ptr().add(self.len).write(offsets);
            self.words.as_mut_ptr().add(self.len).write(word);
        }
        self.len += 1;
    }

    fn finish(mut self) {
        self.sync();
    }
}

/// Places of the chunks in the output: chunks `0..next` have one (`at`), `offset` is the end
/// of the last; `done` holds the length of each finished chunk.
struct Placement {
    next: usize,
    offset: usize,
    done: Vec<Option<usize>>,
    at: Vec<usize>,
    /// A chunk did not fit the capacity: it and the later ones are appended at the end.
    overflowed: bool,
    /// Threads blocked waiting for a place (notifying costs a system call; skip it when none).
    waiting: usize,
}

impl Placement {
    /// Give places to finished chunks that follow the placed ones.
    fn advance(&mut self, cap: usize) {
        while !self.overflowed && self.next < self.done.len() {
            let Some(len) = self.done[self.next] else {
                break;
            };
            if self.offset + len > cap {
                self.overflowed = true;
                break;
            }
            self.at[self.next] = self.offset;
            self.offset += len;
            self.next += 1;
        }
    }
}

/// Adds one to a counter when dropped (a worker's end, normal or by panic).
struct CountOnDrop<'a>(&'a AtomicUsize);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

fn lock_placement(m: &Mutex<Placement>) -> std::sync::MutexGuard<'_, Placement> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the abort flag and wakes the waiting workers if a worker unwinds.
struct WakeOnPanic<'a>(&'a AtomicBool, &'a Condvar, &'a Mutex<Placement>);

impl Drop for WakeOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
            let _guard = self.2.lock();
            self.1.notify_all();
        }
    }
}

/// How the simple path treats a character (see [`Tokenizer::simple_kind`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum SimpleKind {
    /// Whitespace: ends a word.
    Space,
    /// A word of its own (punctuation, a CJK ideograph); normalization leaves it unchanged.
    Alone,
    /// Part of a word.
    Word,
}

const A_DROP: u8 = 0;
const A_SPACE: u8 = 1;
const A_PUNCT: u8 = 2;
const A_WORD: u8 = 3;

/// A BERT WordPiece tokenizer.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    config: TokenizerConfig,
    vocab: Vocab,
    wordpiece: WordPiece,
    normalizer: Normalizer,
    /// (bytes, id, char length), sorted longest first for leftmost-longest matching.
    specials: Vec<(Vec<u8>, u32, u32)>,
    special_first: [bool; 256],
    special_first_bytes: Vec<u8>,
    is_special_id: Vec<bool>,
    ascii_class: [u8; 128],
    ascii_map: [u8; 128],
    /// Token of each ASCII punctuation character as a word of its own.
    ascii_punct_id: [u32; 128],
    /// Classes of ASCII bytes for the ASCII path's block masks: word character, punctuation
    /// (a token of its own), dropped by `clean_text` (the general path), or whitespace.
    ascii_classes: ByteClasses,
    /// `ascii_classes` with the first bytes of special tokens marked as dropped: a whole text
    /// classified with these has no special token in it when nothing is dropped.
    ascii_classes_whole: ByteClasses,
    /// Whether normalization lowercases ASCII letters (the only change it makes to an ASCII
    /// word character; checked at construction).
    ascii_lowercase: bool,
    /// Token of each non-ASCII character of the BMP as a word of its own (the character's
    /// entry or `[UNK]`), indexed by code point: one load per CJK character.
    bmp_char_id: Vec<u32>,
    /// For Basic Multilingual Plane characters that normalization changes into one other
    /// character of a word (accented or uppercase letters: `É` -> `e` uncased), that character;
    /// 0 elsewhere. Filled from the normalizer itself, one character at a time, so the simple
    /// path folds exactly as the general one (a following combining mark, which could interact,
    /// sends the text to the general path anyway).
    fold: Vec<u32>,
    pub cls_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub mask_id: Option<u32>,
    /// Optional Chinese word segmenter: characters of one dictionary word share a word id.
    segmenter: Option<std::sync::Arc<Segmenter>>,
    /// Identity of this tokenizer's rules (clones share it), for scratch caches.
    id: u64,
}

impl Tokenizer {
    /// Build a tokenizer from a vocabulary and configuration.
    pub fn new(vocab: Vocab, config: TokenizerConfig) -> Result<Self> {
        if config.max_input_chars_per_word == 0 {
            return Err(Error::InvalidInput(
                "max_input_chars_per_word must be positive".into(),
            ));
        }
        let wordpiece = WordPiece::new(
            &vocab,
            &config.unk_token,
            &config.continuing_subword_prefix,
            config.max_input_chars_per_word,
        )?;
        let normalizer = Normalizer::new(config.normalizer);
        let mut specials: Vec<(Vec<u8>, u32, u32)> = Vec::new();
        let mut is_special_id = vec![false; vocab.len()];
        for s in &config.special_tokens {
            if s.is_empty() {
                return Err(Error::InvalidInput(
                    "special tokens must not be empty strings".into(),
                ));
            }
            if let Some(id) = vocab.token_to_id(s) {
                if !specials.iter().any(|(b, _, _)| b == s.as_bytes()) {
                    specials.push((s.as_bytes().to_vec(), id, s.chars().count() as u32));
                    is_special_id[id as usize] = true;
                }
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let mut special_first = [false; 256];
        let mut special_first_bytes = Vec::new();
        for (b, _, _) in &specials {
            if !special_first[b[0] as usize] {
                special_first[b[0] as usize] = true;
                special_first_bytes.push(b[0]);
            }
        }
        let mut ascii_class = [A_DROP; 128];
        let mut ascii_map = [0u8; 128];
        for b in 0u8..128 {
            let out = normalizer.normalize_char(b as char);
            let (class, m) = match out.as_slice() {
                [] => (A_DROP, 0),
                [c] if (*c as u32) < 128 => {
                    let f = char_flags(*c);
                    let class = if f & F_WS != 0 {
                        A_SPACE
                    } else if f & F_PUNCT != 0 {
                        A_PUNCT
                    } else {
                        A_WORD
                    };
                    (class, *c as u8)
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "ASCII {b} normalizes outside ASCII"
                    )))
                }
            };
            ascii_class[b as usize] = class;
            ascii_map[b as usize] = m;
        }
        let mut ascii_punct_id = [wordpiece.unk_id; 128];
        for b in 0..128usize {
            if ascii_class[b] == A_PUNCT {
                let mut pieces = Vec::new();
                wordpiece.tokenize(&[ascii_map[b]], 1, &mut pieces);
                ascii_punct_id[b] = pieces[0].0;
            }
        }
        let ascii_lowercase = normalizer.config.lowercase;
        let mut ascii_bits = [0u8; 128];
        for b in 0..128u8 {
            ascii_bits[b as usize] = match ascii_class[b as usize] {
                A_WORD => {
                    let want = if ascii_lowercase {
                        b.to_ascii_lowercase()
                    } else {
                        b
                    };
                    if ascii_map[b as usize] != want {
                        return Err(Error::Internal(format!(
                            "ASCII {b} normalizes to {}, not {want}",
                            ascii_map[b as usize]
                        )));
                    }
                    byteclass::WORD
                }
                A_PUNCT => byteclass::PUNCT,
                A_DROP => byteclass::DROP,
                _ => 0,
            };
        }
        let mut bmp_char_id = vec![wordpiece.unk_id; 0x10000];
        for (i, t) in vocab.tokens().iter().enumerate() {
            let mut cs = t.chars();
            if let (Some(c), None) = (cs.next(), cs.next()) {
                if (c as u32) < 0x10000 {
                    bmp_char_id[c as usize] = i as u32;
                }
            }
        }
        let ncfg = normalizer.config;
        let mut fold = vec![0u32; 0x10000];
        for code in 0x80u32..0x10000 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            let f = char_flags(c);
            let changes = (ncfg.strip_accents && f & F_NFD_SELF == 0)
                || (ncfg.lowercase && f & F_LOWER_SELF == 0);
            if !changes || (ncfg.strip_accents && f & F_MN != 0) {
                continue;
            }
            if let [m] = normalizer.normalize_char(c)[..] {
                let g = char_flags(m);
                let word = (m as u32) >= 128
                    && g & (F_WS | F_PUNCT | F_DROP | F_CLEAN_WS) == 0
                    && !(ncfg.handle_chinese_chars && g & F_CHINESE != 0)
                    && (!ncfg.strip_accents || (g & F_NFD_SELF != 0 && g & F_MN == 0))
                    && (!ncfg.lowercase || g & F_LOWER_SELF != 0);
                let ascii_word = (m as u32) < 128 && ascii_class[m as usize] == A_WORD;
                if word || ascii_word {
                    fold[code as usize] = m as u32;
                }
            }
        }
        let mut whole_bits = ascii_bits;
        for &b in &special_first_bytes {
            if b < 128 {
                whole_bits[b as usize] = byteclass::DROP;
            }
        }
        let id = |t: &str| vocab.token_to_id(t);
        Ok(Self {
            ascii_punct_id,
            ascii_classes: ByteClasses::new(ascii_bits),
            ascii_classes_whole: ByteClasses::new(whole_bits),
            ascii_lowercase,
            bmp_char_id,
            fold,
            cls_id: id(&config.cls_token),
            sep_id: id(&config.sep_token),
            pad_id: id(&config.pad_token),
            mask_id: id(&config.mask_token),
            config,
            wordpiece,
            normalizer,
            specials,
            special_first,
            special_first_bytes,
            is_special_id,
            ascii_class,
            ascii_map,
            vocab,
            segmenter: None,
            id: NEXT_TOKENIZER_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Use `seg` to give the characters of one Chinese word a single word id (for whole-word
    /// masking); `None` restores HF's word ids (one word per CJK character).
    pub fn with_segmenter(mut self, seg: Option<std::sync::Arc<Segmenter>>) -> Self {
        self.segmenter = seg;
        self
    }

    pub fn segmenter(&self) -> Option<&Segmenter> {
        self.segmenter.as_deref()
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }
    pub fn unk_id(&self) -> u32 {
        self.wordpiece.unk_id
    }
    /// Whether `id` is one of the special (added) tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special_id
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Number of template special tokens added to a single sequence / a pair.
    pub fn num_special_tokens(&self, pair: bool) -> usize {
        if pair {
            3
        } else {
            2
        }
    }

    fn check_options(&self, opts: &EncodeOptions, pair: bool) -> Result<()> {
        if opts.add_special_tokens && (self.cls_id.is_none() || self.sep_id.is_none()) {
            return Err(Error::InvalidInput(format!(
                "add_special_tokens=True needs {:?} and {:?} in the vocabulary",
                self.config.cls_token, self.config.sep_token
            )));
        }
        if let Some(ml) = opts.max_length {
            let n_special = if opts.add_special_tokens {
                self.num_special_tokens(pair)
            } else {
                0
            };
            if ml > i32::MAX as usize {
                return Err(Error::InvalidInput(format!(
                    "max_length is absurdly large: {ml}"
                )));
            }
            if ml < n_special {
                return Err(Error::InvalidInput(format!(
                    "max_length={ml} is smaller than the {n_special} special tokens added to each {}",
                    if pair { "pair" } else { "sequence" }
                )));
            }
            if opts.stride > 0 && opts.stride >= ml - n_special {
                return Err(Error::InvalidInput(format!(
                    "stride={} must be smaller than max_length minus special tokens ({})",
                    opts.stride,
                    ml - n_special
                )));
            }
        } else if opts.stride > 0 {
            return Err(Error::InvalidInput(format!(
                "stride={} needs max_length: overflowing windows only exist under truncation",
                opts.stride
            )));
        }
        Ok(())
    }

    /// Encode one text (and optional pair) into fresh buffers.
    pub fn encode(
        &self,
        text: &str,
        pair: Option<&str>,
        opts: &EncodeOptions,
    ) -> Result<EncodingBuf> {
        self.encode_seq(Seq::Text(text), pair.map(Seq::Text), opts)
    }

    /// The options for a text (and pair), and the text and pair themselves (lengths).
    fn check_inputs(
        &self,
        text: Seq<'_>,
        pair: Option<Seq<'_>>,
        opts: &EncodeOptions,
    ) -> Result<()> {
        self.check_options(opts, pair.is_some())?;
        text.check_len(|| "text".into())?;
        if let Some(p) = pair {
            p.check_len(|| "pair".into())?;
        }
        Ok(())
    }

    /// [`Tokenizer::encode`] of a text or of words (see [`Seq`]).
    pub fn encode_seq(
        &self,
        text: Seq<'_>,
        pair: Option<Seq<'_>>,
        opts: &EncodeOptions,
    ) -> Result<EncodingBuf> {
        self.check_inputs(text, pair, opts)?;
        let mut out = EncodingBuf::default();
        let mut sc = Scratch::default();
        self.encode_seq_into(text, pair, opts, &mut sc, &mut out)?;
        Ok(out)
    }

    /// Encode a batch on `num_threads` threads (None = all cores). The output does not depend
    /// on the thread count: texts are encoded independently and concatenated in order.
    /// Truncated texts keep their first window only (HF's main `Encoding`).
    pub fn encode_batch(
        &self,
        texts: &[&str],
        pairs: Option<&[&str]>,
        opts: &EncodeOptions,
        num_threads: Option<usize>,
    ) -> Result<RaggedBatch> {
        let pairs = pairs.map(BatchInput::Texts);
        Ok(self
            .encode_batch_input(BatchInput::Texts(texts), pairs, opts, num_threads, false)?
            .0)
    }

    /// Like [`Tokenizer::encode_batch`], but every text is followed by its overflowing windows
    /// (HF `Encoding.overflowing`, in HF's order; see [`Tokenizer::encode_overflowing_into`]).
    /// Returns the batch and, for every row, the index of the text it came from
    /// (transformers' `overflow_to_sample_mapping`).
    pub fn encode_batch_overflowing(
        &self,
        texts: &[&str],
        pairs: Option<&[&str]>,
        opts: &EncodeOptions,
        num_threads: Option<usize>,
    ) -> Result<(RaggedBatch, Vec<i64>)> {
        let pairs = pairs.map(BatchInput::Texts);
        self.encode_batch_input(BatchInput::Texts(texts), pairs, opts, num_threads, true)
    }

    /// Encode one text (and optional pair) with its overflowing windows: row 0 is HF's main
    /// encoding, the other rows its `overflowing` list. Also returns the number of overflowing
    /// windows of the first and of the second sequence (see [`Tokenizer::encode_overflowing_into`]).
    pub fn encode_overflowing(
        &self,
        text: &str,
        pair: Option<&str>,
        opts: &EncodeOptions,
    ) -> Result<(RaggedBatch, usize, usize)> {
        self.encode_overflowing_seq(Seq::Text(text), pair.map(Seq::Text), opts)
    }

    /// [`Tokenizer::encode_overflowing`] of a text or of words (see [`Seq`]).
    pub fn encode_overflowing_seq(
        &self,
        text: Seq<'_>,
        pair: Option<Seq<'_>>,
        opts: &EncodeOptions,
    ) -> Result<(RaggedBatch, usize, usize)> {
        self.check_inputs(text, pair, opts)?;
        let mut batch = RaggedBatch::default();
        let mut sc = Scratch::default();
        let mut lens = Vec::new();
        let (k, m) = self.encode_overflowing_seq_into(
            text,
            pair,
            opts,
            &mut sc,
            &mut batch.tokens,
            &mut lens,
        )?;
        batch.row_splits.push(0);
        let mut acc = 0i64;
        for l in lens {
            acc += l as i64;
            batch.row_splits.push(acc);
        }
        Ok((batch, k, m))
    }

    /// Encode a batch of texts or of split texts (see [`BatchInput`]) on `num_threads`
    /// threads; with `overflow`, every text is followed by its overflowing windows and the
    /// second result maps rows to texts ([`Tokenizer::encode_batch_overflowing`]).
    pub fn encode_batch_input(
        &self,
        texts: BatchInput<'_>,
        pairs: Option<BatchInput<'_>>,
        opts: &EncodeOptions,
        num_threads: Option<usize>,
        overflow: bool,
    ) -> Result<(RaggedBatch, Vec<i64>)> {
        texts.validate("texts")?;
        if let Some(p) = pairs {
            p.validate("pairs")?;
            if p.len() != texts.len() {
                return Err(Error::InvalidInput(format!(
                    "pairs has {} entries but texts has {}",
                    p.len(),
                    texts.len()
                )));
            }
        }
        self.check_options(opts, pairs.is_some())?;
        let mut total_bytes = 0usize;
        for i in 0..texts.len() {
            let t = texts.get(i);
            t.check_len(|| format!("texts[{i}]"))?;
            total_bytes += t.bytes();
        }
        if let Some(p) = pairs {
            for i in 0..p.len() {
                let t = p.get(i);
                t.check_len(|| format!("pairs[{i}]"))?;
                total_bytes += t.bytes();
            }
        }
        let threads = pool::resolve_threads(num_threads)?;
        // Chunks cut by bytes of text (not by text count, so long and short texts balance),
        // shrinking towards the end (guided self-scheduling): each takes 1/(4 x threads) of the
        // bytes still left, between 2 and 64 KiB, so early chunks amortize their setup and the
        // last ones are small enough that no thread waits long for another at the end.
        let n = texts.len();
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        let cost = |i: usize| texts.get(i).bytes() + pairs.map_or(0, |p| p.get(i).bytes()) + 16;
        let mut left: usize = total_bytes + 16 * n;
        let target_for = |left: usize| (left / (threads * 4)).clamp(2 << 10, 64 << 10);
        if threads > 1 {
            let (mut start, mut acc) = (0usize, 0usize);
            let mut target = target_for(left);
            for i in 0..n {
                acc += cost(i);
                if acc >= target || i + 1 - start >= 4096 {
                    chunks.push((start, i + 1));
                    left = left.saturating_sub(acc);
                    target = target_for(left);
                    start = i + 1;
                    acc = 0;
                }
            }
            if start < n {
                chunks.push((start, n));
            }
        }
        // Encode text `i` (its rows) into `buf`, pushing one length per row and, with
        // `overflow`, the text index of each row.
        let one = |i: usize,
                   sc: &mut Scratch,
                   buf: &mut EncodingBuf,
                   lens: &mut Vec<u32>,
                   samples: &mut Vec<i64>|
         -> Result<()> {
            let pair = pairs.map(|p| p.get(i));
            let r = if overflow {
                let before = lens.len();
                let r = self.encode_overflowing_seq_into(texts.get(i), pair, opts, sc, buf, lens);
                samples.extend(std::iter::repeat_n(i as i64, lens.len() - before));
                r.map(|_| ())
            } else {
                let before = buf.len();
                let r = self.encode_seq_into(texts.get(i), pair, opts, sc, buf);
                lens.push((buf.len() - before) as u32);
                r
            };
            r.map_err(|e| name_text(i, e))
        };
        let work = |sc: &mut Scratch,
                    &(s, e): &(usize, usize),
                    buf: &mut EncodingBuf|
         -> Result<(Vec<u32>, Vec<i64>)> {
            // Room for the chunk's tokens up front (a no-op on a reused buffer that has it),
            // instead of growing by doubling and copying.
            let bytes = (s..e).map(|i| texts.get(i).bytes()).sum::<usize>();
            buf.reserve_estimate(token_estimate(bytes, e - s));
            let mut lens = Vec::with_capacity(e - s);
            let mut samples = Vec::new();
            for i in s..e {
                one(i, sc, buf, &mut lens, &mut samples)?;
            }
            Ok((lens, samples))
        };
        let mut batch = RaggedBatch::default();
        batch.row_splits.reserve(n + 1);
        batch.row_splits.push(0);
        if threads == 1 || chunks.len() <= 1 {
            // One thread: encode straight into the output (no per-chunk buffers to concatenate).
            batch
                .tokens
                .reserve_estimate(token_estimate(total_bytes, n));
            let mut sc = Scratch::default();
            let mut lens = Vec::with_capacity(if overflow { 0 } else { n });
            let mut samples = Vec::new();
            for i in 0..n {
                if overflow {
                    lens.clear();
                    one(i, &mut sc, &mut batch.tokens, &mut lens, &mut samples)?;
                    let mut acc = *batch.row_splits.last().unwrap_or(&0);
                    for &l in &lens {
                        acc += l as i64;
                        batch.row_splits.push(acc);
                    }
                } else {
                    self.encode_seq_into(
                        texts.get(i),
                        pairs.map(|p| p.get(i)),
                        opts,
                        &mut sc,
                        &mut batch.tokens,
                    )
                    .map_err(|e| name_text(i, e))?;
                    batch.row_splits.push(batch.tokens.len() as i64);
                }
            }
            return Ok((batch, samples));
        }
        let cap = total_bytes / 2 + 3 * n + 64;
        self.encode_chunks_ordered(&chunks, threads, cap, !overflow, &work, batch)
    }

    /// Encode `chunks` on `threads` threads into `batch` (which holds the row-split origin
    /// only), in chunk order.
    ///
    /// Threads claim chunks in increasing order and encode each into a reused, cache-warm
    /// buffer of their own. A chunk's place in the output is known once every earlier chunk is
    /// finished (its offset is the sum of their lengths); a thread copies each of its chunks
    /// there as soon as that holds, waiting at the end for the places of its last ones. The
    /// output columns are allocated once, with capacity `cap` (an estimate); chunks past it
    /// are appended afterwards (a reallocation, rare). The result is the concatenation in
    /// chunk order, whatever thread encoded what. With `one_row_per_text` (no overflowing
    /// rows), the thread that copies a chunk also writes its row splits.
    fn encode_chunks_ordered(
        &self,
        chunks: &[(usize, usize)],
        threads: usize,
        cap: usize,
        one_row_per_text: bool,
        work: &ChunkWork<'_>,
        mut batch: RaggedBatch,
    ) -> Result<(RaggedBatch, Vec<i64>)> {
        let nch = chunks.len();
        let threads = threads.clamp(1, nch.max(1)); // no worker without a chunk to claim
        let n_texts = chunks.last().map_or(0, |c| c.1);
        debug_assert_eq!(batch.row_splits, [0]);
        if one_row_per_text {
            batch.row_splits.reserve(n_texts);
        }
        let t = &mut batch.tokens;
        *t = EncodingBuf::default();
        // Chunks past the room made (all of them when none could be) are appended at the end.
        let cap = t.reserve_estimate(cap);
        let dest = Dest {
            ids: t.ids.as_mut_ptr(),
            types: t.type_ids.as_mut_ptr(),
            offs: t.offsets.as_mut_ptr(),
            words: t.word_ids.as_mut_ptr(),
            splits: if one_row_per_text {
                batch.row_splits.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
        };
        let next_chunk = AtomicUsize::new(0);
        let abort = AtomicBool::new(false);
        let place = Mutex::new(Placement {
            next: 0,
            offset: 0,
            done: vec![None; nch],
            at: vec![0; nch],
            overflowed: false,
            waiting: 0,
        });
        let placed = Condvar::new();
        type Meta = Mutex<Option<Result<(Vec<u32>, Vec<i64>)>>>;
        let metas: Vec<Meta> = (0..nch).map(|_| Mutex::new(None)).collect();
        let leftovers: Mutex<Vec<(usize, EncodingBuf)>> = Mutex::new(Vec::new());
        // Copy the chunks of `mine` that have a place; with `wait`, first wait until one has.
        // Returns false when nothing more will be placed (overflow or abort).
        let copy_ready = |mine: &mut Vec<(usize, EncodingBuf)>,
                          spare: &mut Vec<EncodingBuf>,
                          wait: bool|
         -> bool {
            let mut ready = Vec::new();
            {
                let mut p = lock_placement(&place);
                loop {
                    let mut k = 0;
                    while k < mine.len() {
                        if mine[k].0 < p.next {
                            let (c, buf) = mine.swap_remove(k);
                            ready.push((c, p.at[c], buf));
                        } else {
                            k += 1;
                        }
                    }
                    let stuck = p.overflowed || abort.load(Ordering::Relaxed);
                    if stuck && ready.is_empty() {
                        return false;
                    }
                    if !ready.is_empty() || !wait || mine.is_empty() || stuck {
                        break;
                    }
                    p.waiting += 1;
                    p = placed.wait(p).unwrap_or_else(|e| e.into_inner());
                    p.waiting -= 1;
                }
            }
            for (c, at, mut buf) in ready {
                // SAFETY: `at + buf.len() <= cap` (checked when the place was assigned) and
                // places of different chunks do not overlap, so this writes a region of the
                // columns' capacity that no other thread touches; the columns are not moved or
                // read until every worker has returned.
                unsafe { dest.write(at, &buf) };
                if one_row_per_text {
                    if let Some(Ok((lens, _))) =
                        &*metas[c].lock().unwrap_or_else(|p| p.into_inner())
                    {
                        // SAFETY: one row per text, so chunk `c` (texts `s..e`) has `e - s`
                        // lengths and owns entries `s + 1..=e`, within the `n_texts + 1`
                        // reserved; not read until every worker has returned.
                        debug_assert_eq!(lens.len(), chunks[c].1 - chunks[c].0);
                        unsafe { dest.write_splits(chunks[c].0, at, lens) };
                    }
                }
                buf.clear();
                spare.push(buf);
            }
            true
        };
        let worker = || {
            // However this worker ends (a panic included), threads waiting for places wake.
            let _wake = WakeOnPanic(&abort, &placed, &place);
            let mut sc = Scratch::default();
            let mut mine: Vec<(usize, EncodingBuf)> = Vec::new();
            let mut spare: Vec<EncodingBuf> = Vec::new();
            loop {
                let k = next_chunk.fetch_add(1, Ordering::Relaxed);
                if k >= nch || abort.load(Ordering::Relaxed) {
                    break;
                }
                let mut buf = spare.pop().unwrap_or_default();
                let r = work(&mut sc, &chunks[k], &mut buf);
                // A chunk that failed counts as empty: placement goes on, and the call reports
                // the error of the first failing chunk once every chunk has run.
                if r.is_err() {
                    buf.clear();
                }
                *metas[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                {
                    let mut p = lock_placement(&place);
                    p.done[k] = Some(buf.len());
                    p.advance(cap);
                    if p.waiting > 0 {
                        placed.notify_all();
                    }
                }
                mine.push((k, buf));
                copy_ready(&mut mine, &mut spare, false);
            }
            while !mine.is_empty() {
                if !copy_ready(&mut mine, &mut spare, true) {
                    break;
                }
            }
            if !mine.is_empty() {
                leftovers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&mut mine);
            }
        };
        // The calling thread works too, from the start: `threads - 1` pool workers join it as
        // they wake up (a late one just claims fewer chunks). At the end it waits for them by
        // spinning (their last chunks end within microseconds of its own): blocking in the
        // scope would put it to sleep, and waking it costs tens of microseconds.
        let finished = AtomicUsize::new(0);
        if threads == 1 {
            worker();
        } else {
            pool::get(threads - 1)?.in_place_scope(|s| {
                for _ in 1..threads {
                    s.spawn(|_| {
                        // Counted on unwinding too, or the caller would spin forever.
                        let _count = CountOnDrop(&finished);
                        worker();
                    });
                }
                worker();
                while finished.load(Ordering::Acquire) < threads - 1 {
                    std::thread::yield_now();
                }
            });
        }
        let p = place.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut acc = 0i64;
        let mut tail = p.offset; // where the next unplaced chunk goes
        let mut samples = Vec::new();
        let mut first_err = None;
        for (c, m) in metas.into_iter().enumerate() {
            match m.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(Ok((lens, s))) => {
                    if !one_row_per_text {
                        for l in lens {
                            acc += l as i64;
                            batch.row_splits.push(acc);
                        }
                    } else if c >= p.next {
                        // Not placed (past the capacity): appended below, in chunk order.
                        // SAFETY: as in `copy_ready`; every worker has returned.
                        unsafe { dest.write_splits(chunks[c].0, tail, &lens) };
                        tail += lens.iter().map(|&l| l as usize).sum::<usize>();
                    }
                    samples.extend_from_slice(&s);
                }
                Some(Err(e)) => {
                    first_err = first_err.or(Some(e));
                }
                None => {
                    first_err = first_err.or_else(|| {
                        Some(Error::Internal("a chunk of the batch did not run".into()))
                    })
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if p.next < nch && !p.overflowed {
            return Err(Error::Internal(
                "chunks of the batch were not placed".into(),
            ));
        }
        if one_row_per_text {
            // SAFETY: every chunk wrote the entries of its texts (placed ones in
            // `copy_ready`, the others above), so `1..=n_texts` are written; 0 was pushed.
            unsafe { batch.row_splits.set_len(n_texts + 1) };
        }
        let t = &mut batch.tokens;
        // SAFETY: chunks `0..p.next` were written to consecutive places covering
        // `0..p.offset`, all within the capacity (see `copy_ready`).
        unsafe {
            t.ids.set_len(p.offset);
            t.type_ids.set_len(p.offset);
            t.offsets.set_len(p.offset);
            t.word_ids.set_len(p.offset);
        }
        let mut rest = leftovers.into_inner().unwrap_or_else(|e| e.into_inner());
        rest.sort_by_key(|(k, _)| *k);
        for (_, buf) in &rest {
            t.extend_prefix(buf, buf.len());
        }
        debug_assert_eq!(Some(&(t.len() as i64)), batch.row_splits.last());
        debug_assert!(one_row_per_text || acc == t.len() as i64);
        Ok((batch, samples))
    }

    /// Encode one text (+ pair) with template and truncation, appending to `out`.
    pub fn encode_into(
        &self,
        text: &str,
        pair: Option<&str>,
        opts: &EncodeOptions,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) -> Result<()> {
        self.encode_seq_into(Seq::Text(text), pair.map(Seq::Text), opts, sc, out)
    }

    /// [`Tokenizer::encode_into`] of a text or of words (see [`Seq`]).
    pub fn encode_seq_into(
        &self,
        text: Seq<'_>,
        pair: Option<Seq<'_>>,
        opts: &EncodeOptions,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) -> Result<()> {
        let add = opts.add_special_tokens;
        let start = out.len();
        if add {
            out.push(self.cls_id.unwrap_or(0), 0, 0, 0, -1);
        }
        let body = out.len();
        self.encode_seq_tokens(text, 0, sc, out);
        let mut n1 = out.len() - body;
        // The pair's scratch buffer is borrowed only for a pair (moving it costs a few ns
        // per text, which shows on batches of short texts).
        let mut n2 = 0;
        let mut pair_buf = None;
        if let Some(p) = pair {
            let mut pb = std::mem::take(&mut sc.pair);
            pb.clear();
            self.encode_seq_tokens(p, 1, sc, &mut pb);
            n2 = pb.len();
            pair_buf = Some(pb);
        }
        if let Some(ml) = opts.max_length {
            let n_special = if add {
                self.num_special_tokens(pair.is_some())
            } else {
                0
            };
            let (a, b) =
                truncated_lengths(n1, n2, pair.is_some(), ml - n_special, opts.truncation)?;
            // Validate the stride against each truncated sequence like HF (which panics).
            Windows::new(n1, a, opts.stride, "first")?;
            Windows::new(n2, b, opts.stride, "second")?;
            n1 = a;
            n2 = b;
        }
        out.truncate(body + n1);
        if add {
            out.push(self.sep_id.unwrap_or(0), 0, 0, 0, -1);
        }
        if let Some(pb) = pair_buf {
            out.extend_prefix(&pb, n2);
            if add {
                out.push(self.sep_id.unwrap_or(0), 1, 0, 0, -1);
            }
            sc.pair = pb;
        }
        debug_assert!(out.len() >= start);
        Ok(())
    }

    /// Encode one text (+ pair) into all its rows: HF's main encoding, then each entry of its
    /// `overflowing` list, in HF's order, appending the rows to `out` and their lengths to
    /// `lens`. Returns `(k, m)`, the number of overflowing windows of the first and the second
    /// sequence.
    ///
    /// HF (`Encoding::truncate`) cuts a truncated sequence of `n` tokens to `t` into windows
    /// `[w * (t - stride), w * (t - stride) + t)` (the last one clipped at `n`) until one reaches
    /// the end; `t = 0` gives one empty window and the whole sequence as overflow. The template
    /// then merges the pieces (`Encoding::merge_with`): with windows `A0..Ak` and `B0..Bm` the
    /// rows are `(A0, B0)`, then `(Ai, B0), (Ai, B1) .. (Ai, Bm)` for each `i = 1..k`, then
    /// `(A0, Bj)` for `j = 1..m`; each row is `[CLS] A [SEP] B [SEP]` with the usual type ids.
    pub fn encode_overflowing_into(
        &self,
        text: &str,
        pair: Option<&str>,
        opts: &EncodeOptions,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
        lens: &mut Vec<u32>,
    ) -> Result<(usize, usize)> {
        self.encode_overflowing_seq_into(Seq::Text(text), pair.map(Seq::Text), opts, sc, out, lens)
    }

    /// [`Tokenizer::encode_overflowing_into`] of a text or of words (see [`Seq`]).
    pub fn encode_overflowing_seq_into(
        &self,
        text: Seq<'_>,
        pair: Option<Seq<'_>>,
        opts: &EncodeOptions,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
        lens: &mut Vec<u32>,
    ) -> Result<(usize, usize)> {
        let add = opts.add_special_tokens;
        let mut a_buf = std::mem::take(&mut sc.first);
        let mut b_buf = std::mem::take(&mut sc.pair);
        a_buf.clear();
        b_buf.clear();
        self.encode_seq_tokens(text, 0, sc, &mut a_buf);
        if let Some(p) = pair {
            self.encode_seq_tokens(p, 1, sc, &mut b_buf);
        }
        let (n1, n2) = (a_buf.len(), b_buf.len());
        let (wa, wb) = match opts.max_length {
            Some(ml) => {
                let n_special = if add {
                    self.num_special_tokens(pair.is_some())
                } else {
                    0
                };
                let truncated =
                    truncated_lengths(n1, n2, pair.is_some(), ml - n_special, opts.truncation);
                let r = truncated.and_then(|(a, b)| {
                    Ok((
                        Windows::new(n1, a, opts.stride, "first")?,
                        Windows::new(n2, b, opts.stride, "second")?,
                    ))
                });
                match r {
                    Ok(w) => w,
                    Err(e) => {
                        sc.first = a_buf;
                        sc.pair = b_buf;
                        return Err(e);
                    }
                }
            }
            None => (Windows::whole(n1), Windows::whole(n2)),
        };
        let (ka, kb) = (wa.count(), wb.count());
        let mut row = |i: usize, j: usize| {
            let before = out.len();
            if add {
                out.push(self.cls_id.unwrap_or(0), 0, 0, 0, -1);
            }
            let (s, e) = wa.get(i);
            out.extend_range(&a_buf, s, e);
            if add {
                out.push(self.sep_id.unwrap_or(0), 0, 0, 0, -1);
            }
            if pair.is_some() {
                let (s, e) = wb.get(j);
                out.extend_range(&b_buf, s, e);
                if add {
                    out.push(self.sep_id.unwrap_or(0), 1, 0, 0, -1);
                }
            }
            lens.push((out.len() - before) as u32);
        };
        row(0, 0);
        for i in 1..ka {
            for j in 0..kb {
                row(i, j);
            }
        }
        for j in 1..kb {
            row(0, j);
        }
        sc.first = a_buf;
        sc.pair = b_buf;
        Ok((ka - 1, kb - 1))
    }

    /// Encode one text or list of words (no template): see [`Seq`].
    #[inline]
    pub fn encode_seq_tokens(
        &self,
        seq: Seq<'_>,
        type_id: u8,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) {
        match seq {
            Seq::Text(t) => self.encode_sequence(t, type_id, sc, out),
            Seq::Words(words) => {
                for (j, w) in words.iter().enumerate() {
                    let before = out.len();
                    self.encode_sequence(w, type_id, sc, out);
                    out.word_ids[before..].fill(j as i32);
                }
            }
        }
    }

    /// Encode one sequence (no template): added tokens, then normalized words.
    pub fn encode_sequence(
        &self,
        text: &str,
        type_id: u8,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) {
        let first = out.len();
        let bytes = text.as_bytes();
        let mut word: i32 = 0;
        let mut seg_start = 0usize;
        let mut seg_char = 0u32;
        if !self.specials.is_empty() {
            // ASCII text without the first byte of any special token (most text): one pass,
            // no search for special tokens. (Special first bytes and characters the
            // normalizer drops make the classification fail; the text then takes the way
            // below.) ASCII text has no Chinese characters: nothing for the segmenter to merge.
            if bytes.is_ascii() {
                let classes = &self.ascii_classes_whole;
                if self.encode_ascii(bytes, 0, type_id, &mut word, sc, out, classes) {
                    return;
                }
                out.truncate(first);
                word = 0;
            }
            let mut i = 0usize;
            while let Some(p) = self.find_special_start(bytes, i) {
                if let Some(&(ref sb, id, clen)) = self
                    .specials
                    .iter()
                    .find(|(sb, _, _)| bytes[p..].starts_with(sb))
                {
                    let seg = &text[seg_start..p];
                    seg_char += self.encode_segment(seg, seg_char, type_id, &mut word, sc, out);
                    out.push(id, type_id, seg_char, seg_char + clen, word);
                    word += 1;
                    seg_char += clen;
                    seg_start = p + sb.len();
                    i = seg_start;
                } else {
                    i = p + 1;
                }
            }
        }
        self.encode_segment(&text[seg_start..], seg_char, type_id, &mut word, sc, out);
        if let Some(seg) = &self.segmenter {
            merge_chinese_words(
                seg,
                text,
                &mut out.offsets[first..],
                &mut out.word_ids[first..],
            );
        }
    }

    #[inline]
    fn find_special_start(&self, bytes: &[u8], from: usize) -> Option<usize> {
        let hay = bytes.get(from..)?;
        let found = match self.special_first_bytes.as_slice() {
            [a] => memchr::memchr(*a, hay),
            [a, b] => memchr::memchr2(*a, *b, hay),
            [a, b, c] => memchr::memchr3(*a, *b, *c, hay),
            _ => hay.iter().position(|&b| self.special_first[b as usize]),
        };
        found.map(|p| p + from)
    }

    /// Encode text between added tokens; returns its length in characters.
    fn encode_segment(
        &self,
        seg: &str,
        base: u32,
        type_id: u8,
        word: &mut i32,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) -> u32 {
        if seg.is_empty() {
            return 0;
        }
        if seg.is_ascii() {
            let mark = out.len();
            let w0 = *word;
            let classes = &self.ascii_classes;
            if self.encode_ascii(seg.as_bytes(), base, type_id, word, sc, out, classes) {
                return seg.len() as u32;
            }
            out.truncate(mark);
            *word = w0;
        } else {
            let mark = out.len();
            let w0 = *word;
            // Two non-ASCII characters in a row at the first one (Chinese, most scripts): the
            // simple path, character by character. Otherwise (English with typographic quotes
            // and dashes, names with accents) the mixed path, ASCII stretches at a time.
            let first = seg.bytes().position(|x| x >= 0x80).unwrap_or(seg.len());
            let dense = seg[first..].chars().nth(1).is_some_and(|c| !c.is_ascii());
            if !dense {
                if let Some(n) = self.encode_mixed(seg, base, type_id, word, sc, out) {
                    return n;
                }
                out.truncate(mark);
                *word = w0;
            }
            if let Some(n) = self.encode_simple::<false>(seg, base, type_id, word, sc, out) {
                return n;
            }
            out.truncate(mark);
            *word = w0;
            // Letters normalization folds into one other letter (accents, capitals): the
            // simple path again, folding (a separate pass, so that text without them, such
            // as Chinese, keeps the leaner loop).
            if let Some(n) = self.encode_simple::<true>(seg, base, type_id, word, sc, out) {
                return n;
            }
            out.truncate(mark);
            *word = w0;
        }
        self.encode_general(seg, base, type_id, word, sc, out)
    }

    /// How the simple path treats character `c`: `None` when normalization would drop,
    /// expand or reorder it (the general path's job). (`encode_simple` repeats this inline:
    /// calling it per character there cost Chinese text ~9%, measured.)
    #[inline(always)]
    fn simple_kind(&self, c: char) -> Option<SimpleKind> {
        let cfg = self.normalizer.config;
        if (c as u32) < 128 {
            return match self.ascii_class[c as usize] {
                A_DROP => None,
                A_SPACE => Some(SimpleKind::Space),
                A_PUNCT => Some(SimpleKind::Alone),
                _ => Some(SimpleKind::Word),
            };
        }
        let f = char_flags(c);
        if cfg.clean_text && f & F_DROP != 0 {
            return None;
        }
        if (cfg.clean_text && f & F_CLEAN_WS != 0) || f & F_WS != 0 {
            return Some(SimpleKind::Space);
        }
        if (cfg.strip_accents && (f & F_NFD_SELF == 0 || f & F_MN != 0))
            || (cfg.lowercase && f & F_LOWER_SELF == 0)
        {
            return self.folded(c).map(|_| SimpleKind::Word);
        }
        if f & F_PUNCT != 0 || (cfg.handle_chinese_chars && f & F_CHINESE != 0) {
            Some(SimpleKind::Alone)
        } else {
            Some(SimpleKind::Word)
        }
    }

    /// The one word character that normalization turns `c` into, if it is one (see `fold`).
    #[inline]
    fn folded(&self, c: char) -> Option<char> {
        match self.fold.get(c as usize) {
            Some(&m) if m != 0 => char::from_u32(m),
            _ => None,
        }
    }

    /// The id of a character that is a word of its own: its vocabulary entry or [UNK] (no
    /// proper prefix of one character's bytes can be an entry).
    #[inline(always)]
    fn alone_id(&self, c: char) -> u32 {
        if (c as u32) < 128 {
            return self.ascii_punct_id[c as usize];
        }
        match self.bmp_char_id.get(c as usize) {
            Some(&id) => id,
            None => {
                let mut buf = [0u8; 4];
                let bytes = c.encode_utf8(&mut buf).as_bytes();
                self.wordpiece
                    .trie()
                    .get(bytes)
                    .unwrap_or(self.wordpiece.unk_id)
            }
        }
    }

    /// Mostly-ASCII text (English with typographic quotes and dashes, European languages):
    /// the ASCII stretches take the ASCII path; a non-ASCII character that stands alone
    /// (punctuation, a CJK ideograph) or separates words (whitespace) is handled on its own;
    /// a word with other non-ASCII characters (accented letters...) goes, with whatever lies
    /// between the ASCII separators around it, through the simple path or, when
    /// normalization changes it, the general path. Returns `None` (output to roll back) at a
    /// character the ASCII path leaves to the general one, and at two non-ASCII characters in
    /// a row outside a word (dense non-ASCII text, such as Chinese, is faster character by
    /// character).
    fn encode_mixed(
        &self,
        seg: &str,
        base: u32,
        type_id: u8,
        word: &mut i32,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) -> Option<u32> {
        let b = seg.as_bytes();
        let classes = &self.ascii_classes;
        let mut pos = 0u32; // characters before byte `i`
                            // An ASCII stretch (possibly empty) on the ASCII path, advancing `pos`; false at a
                            // character that path leaves to the general one.
        let ascii =
            |run: &[u8], pos: &mut u32, word: &mut i32, sc: &mut Scratch, out: &mut EncodingBuf| {
                let ok = run.is_empty()
                    || self.encode_ascii(run, base + *pos, type_id, word, sc, out, classes);
                *pos += run.len() as u32;
                ok
            };
        let mut i = 0usize;
        let mut after_non_ascii = false;
        while i < b.len() {
            let Some(j) = b[i..].iter().position(|&x| x >= 0x80).map(|k| i + k) else {
                if !ascii(&b[i..], &mut pos, word, sc, out) {
                    return None;
                }
                break;
            };
            let c = seg[j..].chars().next()?;
            match self.simple_kind(c) {
                Some(kind @ (SimpleKind::Alone | SimpleKind::Space)) => {
                    if j == i && after_non_ascii {
                        return None;
                    }
                    if !ascii(&b[i..j], &mut pos, word, sc, out) {
                        return None;
                    }
                    if kind == SimpleKind::Alone {
                        out.push(self.alone_id(c), type_id, base + pos, base + pos + 1, *word);
                        *word += 1;
                    }
                    pos += 1;
                    i = j + c.len_utf8();
                    after_non_ascii = true;
                }
                _ => {
                    // Part of a word, or a character normalization changes: the stretch
                    // between the ASCII separators (whitespace, punctuation) around it, which
                    // no word crosses and which normalizes on its own (normalization is per
                    // character but for the order of combining marks, which a separator
                    // ends), through the simple path or else the general one.
                    let sep = |x: &u8| {
                        *x < 0x80 && matches!(self.ascii_class[*x as usize], A_SPACE | A_PUNCT)
                    };
                    let start = b[i..j].iter().rposition(sep).map_or(i, |k| i + k + 1);
                    let end = b[j..].iter().position(sep).map_or(b.len(), |k| j + k);
                    if !ascii(&b[i..start], &mut pos, word, sc, out) {
                        return None;
                    }
                    let stretch = &seg[start..end];
                    let (mark, w0) = (out.len(), *word);
                    pos += match self.encode_simple::<true>(
                        stretch,
                        base + pos,
                        type_id,
                        word,
                        sc,
                        out,
                    ) {
                        Some(n) => n,
                        None => {
                            out.truncate(mark);
                            *word = w0;
                            self.encode_general(stretch, base + pos, type_id, word, sc, out)
                        }
                    };
                    i = end;
                    after_non_ascii = false;
                }
            }
        }
        Some(pos)
    }

    /// Fast path for text whose normalization is the identity character by character (CJK,
    /// most scripts, ASCII mixed in): one pass, no alignment buffers. Returns `None` (output to
    /// roll back) at the first character that normalization would drop, expand or reorder,
    /// which the exact general path then handles. Returns the segment's length in characters.
    fn encode_simple<const FOLD: bool>(
        &self,
        seg: &str,
        base: u32,
        type_id: u8,
        word: &mut i32,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) -> Option<u32> {
        let cfg = self.normalizer.config;
        sc.word.clear();
        let mut word_start = 0u32; // char index (in seg) of the current word's first char
        let mut pos = 0u32;
        for c in seg.chars() {
            let kind; // 0 = whitespace, 1 = isolated (punct / CJK), 2 = word char
            let mut cc = c;
            if (c as u32) < 128 {
                match self.ascii_class[c as usize] {
                    A_DROP => return None,
                    A_SPACE => kind = 0,
                    A_PUNCT => kind = 1,
                    _ => {
                        kind = 2;
                        cc = self.ascii_map[c as usize] as char;
                    }
                }
            } else {
                let f = char_flags(c);
                if cfg.clean_text && f & F_DROP != 0 {
                    return None;
                }
                if (cfg.clean_text && f & F_CLEAN_WS != 0) || f & F_WS != 0 {
                    kind = 0;
                } else if (cfg.strip_accents && (f & F_NFD_SELF == 0 || f & F_MN != 0))
                    || (cfg.lowercase && f & F_LOWER_SELF == 0)
                {
                    // Normalization changes it: with `FOLD`, a letter folded to one word
                    // character; else (or for anything else) the caller's next path.
                    if !FOLD {
                        return None;
                    }
                    cc = self.folded(c)?;
                    kind = 2;
                } else {
                    kind = if f & F_PUNCT != 0 || (cfg.handle_chinese_chars && f & F_CHINESE != 0) {
                        1
                    } else {
                        2
                    };
                }
            }
            if kind != 2 && !sc.word.is_empty() {
                self.flush_word(base + word_start, type_id, word, sc, out);
            }
            match kind {
                1 => {
                    out.push(
                        self.alone_id(cc),
                        type_id,
                        base + pos,
                        base + pos + 1,
                        *word,
                    );
                    *word += 1;
                }
                2 => {
                    if sc.word.is_empty() {
                        word_start = pos;
                    }
                    let mut buf = [0u8; 4];
                    sc.word
                        .extend_from_slice(cc.encode_utf8(&mut buf).as_bytes());
                }
                _ => {}
            }
            pos += 1;
        }
        if !sc.word.is_empty() {
            self.flush_word(base + word_start, type_id, word, sc, out);
        }
        Some(pos)
    }

    /// Tokenize the word in `sc.word` (characters map one to one onto original characters
    /// starting at `start`).
    fn flush_word(
        &self,
        start: u32,
        type_id: u8,
        word: &mut i32,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) {
        let w = &sc.word;
        let n_chars = w.iter().filter(|&&b| (b as i8) >= -0x40).count();
        sc.pieces.clear();
        self.wordpiece.tokenize(w, n_chars, &mut sc.pieces);
        let mut char_at = 0u32; // chars before byte `byte_at`
        let mut byte_at = 0usize;
        for &(id, ps, pe) in &sc.pieces {
            let count =
                |a: usize, b: usize| w[a..b].iter().filter(|&&x| (x as i8) >= -0x40).count() as u32;
            let s = char_at + count(byte_at, ps as usize);
            let e = s + count(ps as usize, pe as usize);
            out.push(id, type_id, start + s, start + e, *word);
            char_at = e;
            byte_at = pe as usize;
        }
        *word += 1;
        sc.word.clear();
    }

    /// ASCII fast path; returns false (having written garbage to roll back) when the segment
    /// contains a byte of class [`byteclass::DROP`] in `classes` (a character that
    /// `clean_text` drops, which the general path handles).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn encode_ascii(
        &self,
        b: &[u8],
        base: u32,
        type_id: u8,
        word: &mut i32,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
        classes: &ByteClasses,
    ) -> bool {
        // Columns as separate (non-aliasing) vectors, the type id filled in afterwards: the
        // per-token stores then need no reloads of the other columns' lengths.
        let mut w = *word;
        let ok = self.encode_ascii_cols(
            b,
            base,
            &mut w,
            sc,
            classes,
            &mut out.ids,
            &mut out.offsets,
            &mut out.word_ids,
        );
        *word = w;
        out.type_ids.resize(out.ids.len(), type_id);
        ok
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn encode_ascii_cols(
        &self,
        b: &[u8],
        base: u32,
        word: &mut i32,
        sc: &mut Scratch,
        classes: &ByteClasses,
        ids: &mut Vec<u32>,
        offs: &mut Vec<[u32; 2]>,
        words: &mut Vec<i32>,
    ) -> bool {
        // 1. Classify every byte into bit masks, 64 bytes per word: `starts` marks the first
        //    byte of each pre-token (a punctuation character, or a word character not preceded
        //    by one), `cont` a word character preceded by one. Token boundaries then come from
        //    bit scans, so a word's length costs no mispredicted loop exit.
        let n = b.len();
        let blocks = n / 64 + 1; // one past the end: bit `n` is a clear `cont` bit
        let masks = &mut sc.masks;
        masks.clear();
        masks.resize(2 * blocks, 0);
        let (starts, cont) = masks.split_at_mut(blocks);
        let mut carry = 0u64; // whether the previous block ends in a word character
        for (k, chunk) in b.chunks(64).enumerate() {
            let m = classes.masks(chunk);
            if m.drop != 0 {
                return false; // a character clean_text drops: the general path
            }
            let (wm, pm) = (m.word, m.punct);
            let c = wm & ((wm << 1) | carry);
            cont[k] = c;
            starts[k] = pm | (wm & !c);
            carry = wm >> 63;
        }
        // 2. One token per pre-token that is a vocabulary entry (one hash probe of its packed,
        //    lowercased bytes), WordPiece through the trie for the others.
        //
        //    Tokens are written through a `TokenWriter`: one capacity check per token instead
        //    of a check and a length update per column and token. Every token covers at least
        //    one byte, so a segment of `n` bytes has at most `n` tokens: that much room is
        //    reserved up front (up to a limit; a huge segment grows it as it goes).
        let mut w = TokenWriter::new(ids, offs, words, n.min(TokenWriter::MAX_RESERVE));
        let mut emit = |id: u32, start: u32, end: u32, wd: i32| w.push(id, [start, end], wd);
        let table_max = WordTable::MAX_LEN.min(self.wordpiece.max_input_chars_per_word);
        let lower = self.ascii_lowercase;
        let mut wd = *word;
        let mut blk = 0usize;
        let mut pending = starts[0];
        'words: loop {
            while pending == 0 {
                blk += 1;
                if blk >= blocks {
                    break 'words;
                }
                pending = starts[blk];
            }
            let p = blk * 64 + pending.trailing_zeros() as usize;
            pending &= pending - 1;
            // End: the first position after `p` that does not continue a word.
            let mut q = p + 1;
            loop {
                let m = !cont[q / 64] >> (q % 64);
                if m != 0 {
                    q += m.trailing_zeros() as usize;
                    break;
                }
                q = (q / 64 + 1) * 64;
            }
            let len = q - p;
            let off = base + p as u32;
            // The packed key of a word the trie segments below, for the memo.
            let mut remember = None;
            if len <= table_max {
                // The word's bytes as little-endian u64s: 8 bytes loaded at `p` (or ending at
                // `q` near the end of the text), the bytes past the word masked off.
                let load =
                    |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
                let low8 = |x: u64| if lower { ascii_lower_swar(x) } else { x };
                let key = if len <= 8 {
                    let k = if p + 8 <= n {
                        load(p) & (u64::MAX >> (64 - 8 * len))
                    } else if q >= 8 {
                        load(q - 8) >> (64 - 8 * len)
                    } else {
                        WordTable::pack(&b[p..q])[0]
                    };
                    [low8(k), 0]
                } else {
                    let hi_mask = u64::MAX >> (64 - 8 * (len - 8));
                    let (lo, hi) = if p + 16 <= n {
                        (load(p), load(p + 8) & hi_mask)
                    } else {
                        (load(p), load(q - 8) >> (64 - 8 * (len - 8)))
                    };
                    [low8(lo), low8(hi)]
                };
                let hit = if len <= 8 {
                    self.wordpiece.words().get_short(key[0], len)
                } else {
                    self.wordpiece.words().get_long(key, len)
                };
                if let Some(id) = hit {
                    emit(id, off, off + len as u32, wd);
                    wd += 1;
                    continue;
                }
                // Not one entry: several pieces (or [UNK]). Running text repeats its rare
                // words, so their pieces are remembered for the rest of the call.
                let slot = sc.memo.slot(self.id, key, len);
                if let Some(m) = slot.get(key, len) {
                    let mut start = 0u32;
                    for (&id, &end) in m.ids[..m.n as usize].iter().zip(&m.ends) {
                        emit(id, off + start, off + end as u32, wd);
                        start = end as u32;
                    }
                    wd += 1;
                    continue;
                }
                remember = Some(key);
            }
            let map = &self.ascii_map;
            sc.word.clear();
            sc.word
                .extend(b[p..q].iter().map(|&x| map[x as usize & 127]));
            sc.pieces.clear();
            self.wordpiece.tokenize(&sc.word, len, &mut sc.pieces);
            if let Some(key) = remember {
                sc.memo.slot(self.id, key, len).put(key, len, &sc.pieces);
            }
            for &(id, ps, pe) in &sc.pieces {
                emit(id, off + ps, off + pe, wd);
            }
            wd += 1;
        }
        *word = wd;
        w.finish();
        true
    }

    fn encode_general(
        &self,
        seg: &str,
        base: u32,
        type_id: u8,
        word: &mut i32,
        sc: &mut Scratch,
        out: &mut EncodingBuf,
    ) -> u32 {
        let mut nchars = std::mem::take(&mut sc.nchars);
        self.normalizer
            .normalize(seg, base, &mut sc.norm, &mut nchars);
        split_words(&nchars, |a, b| {
            sc.word.clear();
            sc.byte_char.clear();
            for (k, nc) in nchars[a..b].iter().enumerate() {
                let mut tmp = [0u8; 4];
                let enc = nc.c.encode_utf8(&mut tmp);
                sc.word.extend_from_slice(enc.as_bytes());
                sc.byte_char
                    .extend(std::iter::repeat_n(k as u32, enc.len()));
            }
            sc.pieces.clear();
            self.wordpiece.tokenize(&sc.word, b - a, &mut sc.pieces);
            for &(id, ps, pe) in &sc.pieces {
                let first = &nchars[a + sc.byte_char[ps as usize] as usize];
                let last = &nchars[a + sc.byte_char[pe as usize - 1] as usize];
                out.push(id, type_id, first.start, last.end, *word);
            }
            *word += 1;
        });
        sc.nchars = nchars;
        seg.chars().count() as u32
    }

    /// Decode ids to text like HF's `Tokenizer::decode` with the configured [`Decoder`]
    /// (special tokens skipped first when `skip_special_tokens`). Unknown ids are an error (HF
    /// drops them silently).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut s = String::with_capacity(ids.len() * 6);
        let mut first = true;
        let mut tok = String::new();
        for &id in ids {
            let t = self.vocab.id_to_token(id).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "token id {id} is out of range (vocab_size {})",
                    self.vocab.len()
                ))
            })?;
            if skip_special_tokens && self.is_special(id) {
                continue;
            }
            match &self.config.decoder {
                Decoder::Spaces => {
                    if !first {
                        s.push(' ');
                    }
                    s.push_str(t);
                }
                Decoder::WordPiece { prefix, cleanup } => {
                    tok.clear();
                    if first {
                        tok.push_str(t);
                    } else if let Some(rest) = t.strip_prefix(prefix.as_str()) {
                        tok.push_str(rest);
                    } else {
                        tok.push(' ');
                        tok.push_str(t);
                    }
                    if *cleanup {
                        s.push_str(&wordpiece_cleanup(&tok));
                    } else {
                        s.push_str(&tok);
                    }
                }
            }
            first = false;
        }
        Ok(s)
    }
}

/// Renumber the word ids of one sequence so that consecutive single-CJK-character words inside
/// one dictionary word (per `seg`) share an id. Other words keep HF's boundaries.
fn merge_chinese_words(
    seg: &Segmenter,
    text: &str,
    offsets: &mut [[u32; 2]],
    word_ids: &mut [i32],
) {
    if word_ids.is_empty() || !text.chars().any(crate::normalize::is_chinese_char) {
        return;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut starts = vec![false; chars.len() + 1];
    for (s, _) in seg.cut(text) {
        starts[s as usize] = true;
    }
    let is_cjk_token = |o: &[u32; 2]| {
        o[1] == o[0] + 1
            && chars
                .get(o[0] as usize)
                .is_some_and(|&c| crate::normalize::is_chinese_char(c))
    };
    let mut new_id = -1i32;
    let mut prev_old = i32::MIN;
    let mut prev_cjk_pos: Option<u32> = None;
    for (o, w) in offsets.iter().zip(word_ids.iter_mut()) {
        let old = *w;
        if old < 0 {
            continue;
        }
        let cjk = is_cjk_token(o);
        if old != prev_old {
            let glue = cjk && prev_cjk_pos == Some(o[0].wrapping_sub(1)) && !starts[o[0] as usize];
            if !glue {
                new_id += 1;
            }
        }
        prev_old = old;
        prev_cjk_pos = if cjk { Some(o[0]) } else { None };
        *w = new_id;
    }
}

/// Prefix the message of an input error with the batch index of the text that caused it.
/// Lowercase the ASCII letters among eight bytes that are all below 0x80 (no byte's sum below
/// carries into the next).
#[inline(always)]
fn ascii_lower_swar(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let ge_a = x.wrapping_add(ONES * (0x80 - b'A' as u64));
    let gt_z = x.wrapping_add(ONES * (0x80 - b'Z' as u64 - 1));
    x | ((ge_a & !gt_z & (ONES * 0x80)) >> 2)
}

/// Room to reserve for the tokens of `texts` texts of `bytes` bytes: about one token per
/// three bytes (English runs ~3.8, Chinese ~2.6) plus the special tokens.
fn token_estimate(bytes: usize, texts: usize) -> usize {
    bytes / 3 + 3 * texts + 16
}

fn name_text(i: usize, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("texts[{i}]: {m}")),
        other => other,
    }
}

/// The windows HF's `Encoding::truncate(target, stride)` cuts a sequence of `len` tokens into
/// (right truncation): window 0 is what the encoding keeps, the others are its `overflowing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    len: usize,
    target: usize,
    step: usize,
}

impl Windows {
    /// The whole sequence as one window (no truncation).
    pub fn whole(len: usize) -> Self {
        Self {
            len,
            target: len,
            step: 1,
        }
    }

    /// Windows of a sequence of `len` tokens truncated to `target`. Errors where HF panics:
    /// the sequence is actually cut (`0 < target < len`) and `stride >= target`.
    pub fn new(len: usize, target: usize, stride: usize, which: &str) -> Result<Self> {
        if target >= len {
            return Ok(Self::whole(len));
        }
        if target == 0 {
            return Ok(Self {
                len,
                target: 0,
                step: 0,
            });
        }
        if stride >= target {
            return Err(Error::InvalidInput(format!(
                "stride={stride} must be smaller than the {target} tokens the {which} sequence \
                 ({len} tokens) is truncated to; lower stride or raise max_length \
                 (HF tokenizers panics here: `stride` must be strictly less than `max_len={target}`)"
            )));
        }
        Ok(Self {
            len,
            target,
            step: target - stride,
        })
    }

    /// Number of windows (1 + the number of overflowing ones).
    pub fn count(&self) -> usize {
        if self.target >= self.len {
            1
        } else if self.target == 0 {
            2
        } else {
            1 + (self.len - self.target).div_ceil(self.step)
        }
    }

    /// Token range `[start, stop)` of window `w < count()`.
    pub fn get(&self, w: usize) -> (usize, usize) {
        if self.target >= self.len {
            (0, self.len)
        } else if self.target == 0 {
            if w == 0 {
                (0, 0)
            } else {
                (0, self.len)
            }
        } else {
            let s = w * self.step;
            (s, (s + self.target).min(self.len))
        }
    }
}

/// Offsets are `u32`: refuse texts of 4 GiB or more.
fn check_len(t: &str, what: impl Fn() -> String) -> Result<()> {
    if t.len() >= u32::MAX as usize {
        return Err(Error::InvalidInput(format!(
            "{} is too long ({} bytes); split it (the limit is 4 GiB per text)",
            what(),
            t.len()
        )));
    }
    Ok(())
}

/// HF `decoders::wordpiece::cleanup`, applied to each decoded token.
fn wordpiece_cleanup(t: &str) -> String {
    t.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" do not", " don't")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Lengths `(n1, n2)` kept by HF's `truncate_encodings` with an effective `max_length`.
pub fn truncated_lengths(
    n1: usize,
    n2: usize,
    has_pair: bool,
    max_length: usize,
    strategy: Truncation,
) -> Result<(usize, usize)> {
    if max_length == 0 {
        return Ok((0, 0));
    }
    let total = n1 + n2;
    if total <= max_length {
        return Ok((n1, n2));
    }
    let to_remove = total - max_length;
    match strategy {
        Truncation::LongestFirst => {
            if !has_pair {
                return Ok((max_length, 0));
            }
            let (mut a, mut b) = (n1, n2);
            let swap = a > b;
            if swap {
                std::mem::swap(&mut a, &mut b);
            }
            // `b` becomes a target length (HF: truncating to more than the length is a no-op).
            b = if a > max_length {
                a
            } else {
                a.max(max_length - a)
            };
            if a + b > max_length {
                a = max_length / 2;
                b = a + max_length % 2;
            }
            if swap {
                std::mem::swap(&mut a, &mut b);
            }
            Ok((a.min(n1), b.min(n2)))
        }
        Truncation::OnlyFirst | Truncation::OnlySecond => {
            if strategy == Truncation::OnlySecond && !has_pair {
                return Err(Error::InvalidInput(
                    "truncation='only_second' needs a pair (Truncation error: Second sequence not provided)".into(),
                ));
            }
            let target = if strategy == Truncation::OnlyFirst {
                n1
            } else {
                n2
            };
            if target <= to_remove {
                return Err(Error::InvalidInput(format!(
                    "truncation={:?} cannot reach max_length: the {} sequence has {target} tokens but {to_remove} \
                     must go (Truncation error: Sequence to truncate too short to respect the provided max_length)",
                    if strategy == Truncation::OnlyFirst { "only_first" } else { "only_second" },
                    if strategy == Truncation::OnlyFirst { "first" } else { "second" },
                )));
            }
            if strategy == Truncation::OnlyFirst {
                Ok((n1 - to_remove, n2))
            } else {
                Ok((n1, n2 - to_remove))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes [`EncodingBuf::reserve_estimate`] on this thread act as if memory were refused.
        pub(super) static NO_ROOM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn an_estimate_the_system_refuses_reserves_nothing_and_the_batch_still_encodes() {
        let mut b = EncodingBuf::default();
        assert_eq!(b.reserve_estimate(usize::MAX / 64), 0); // ~2^60 bytes a column: refused
        assert!(b.ids.capacity() < 1 << 20 && b.offsets.capacity() < 1 << 20);
        assert_eq!(b.reserve_estimate(1000), 1000);
        assert!(b.ids.capacity() >= 1000 && b.word_ids.capacity() >= 1000);
        // Nothing reserved for the output of a 2-thread batch: every chunk is appended.
        let t = tok();
        let texts: Vec<String> = (0..3000)
            .map(|i| "hello world unaffable ".repeat(1 + i % 9))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let opts = EncodeOptions::default();
        let want = t.encode_batch(&refs, None, &opts, Some(1)).unwrap();
        NO_ROOM.with(|c| c.set(true));
        let got = t.encode_batch(&refs, None, &opts, Some(2));
        let one = t.encode_batch(&refs, None, &opts, Some(1));
        NO_ROOM.with(|c| c.set(false));
        assert_eq!(got.unwrap(), want);
        assert_eq!(one.unwrap(), want);
    }

    fn tok() -> Tokenizer {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!", "un", "##aff",
            "##able", "cafe", ",", "中", "文", "the",
        ];
        Tokenizer::new(
            Vocab::new(words.iter().map(|s| s.to_string()).collect()).unwrap(),
            TokenizerConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn encodes_with_template_offsets_and_words() {
        let t = tok();
        let e = t
            .encode("Hello, unaffable World!", None, &EncodeOptions::default())
            .unwrap();
        assert_eq!(e.ids, vec![2, 5, 12, 8, 9, 10, 6, 7, 3]);
        assert_eq!(e.offsets[3..6], [[7, 9], [9, 12], [12, 16]]);
        assert_eq!(e.word_ids, vec![-1, 0, 1, 2, 2, 2, 3, 4, -1]);
        let e = t
            .encode("Café 中文x [MASK]", Some("the"), &EncodeOptions::default())
            .unwrap();
        assert_eq!(e.ids, vec![2, 11, 13, 14, 1, 4, 3, 15, 3]);
        assert_eq!(e.offsets[1..6], [[0, 4], [5, 6], [6, 7], [7, 8], [9, 15]]);
        assert_eq!(e.type_ids, vec![0, 0, 0, 0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn split_words_are_encoded_one_by_one_with_their_index_as_word_id() {
        let t = tok();
        let words = ["Hello,", "", "unaffable", "x y", "中文"];
        let e = t
            .encode_seq(Seq::Words(&words), None, &EncodeOptions::default())
            .unwrap();
        // hello , | (nothing) | un ##aff ##able | [UNK] [UNK] | 中 文
        assert_eq!(e.ids, vec![2, 5, 12, 8, 9, 10, 1, 1, 13, 14, 3]);
        assert_eq!(e.word_ids, vec![-1, 0, 0, 2, 2, 2, 3, 3, 4, 4, -1]);
        // Offsets are characters of each word.
        assert_eq!(e.offsets[1..3], [[0, 5], [5, 6]]);
        assert_eq!(e.offsets[6..10], [[0, 1], [2, 3], [0, 1], [1, 2]]);
        // The batch of one agrees, and so do 1 and 3 threads on a larger batch.
        let splits = [0, words.len()];
        let input = BatchInput::Words {
            words: &words,
            splits: &splits,
        };
        let opts = EncodeOptions::default();
        let (b, _) = t
            .encode_batch_input(input, None, &opts, Some(1), false)
            .unwrap();
        assert_eq!(b.tokens, e);
        let many: Vec<&str> = words.iter().copied().cycle().take(5 * 4000).collect();
        let splits: Vec<usize> = (0..=4000).map(|i| 5 * i).collect();
        let input = BatchInput::Words {
            words: &many,
            splits: &splits,
        };
        let one = t
            .encode_batch_input(input, None, &opts, Some(1), false)
            .unwrap();
        let three = t
            .encode_batch_input(input, None, &opts, Some(3), false)
            .unwrap();
        assert_eq!(one.0, three.0);
        assert_eq!(one.0.row_splits.len(), 4001);
    }

    #[test]
    fn bad_word_splits_are_rejected() {
        let t = tok();
        let words = ["a", "b"];
        let opts = EncodeOptions::default();
        for splits in [&[0usize, 1][..], &[1, 2], &[0, 2, 1, 2], &[]] {
            let input = BatchInput::Words {
                words: &words,
                splits,
            };
            let r = t.encode_batch_input(input, None, &opts, Some(1), false);
            assert!(matches!(r, Err(Error::InvalidInput(_))), "{splits:?}");
        }
    }

    #[test]
    fn ascii_with_control_chars_takes_the_general_path() {
        let t = tok();
        let e = t.encode(
            "hel\u{1}lo",
            None,
            &EncodeOptions {
                add_special_tokens: false,
                ..Default::default()
            },
        );
        let e = e.unwrap();
        assert_eq!(e.ids, vec![5]);
        assert_eq!(e.offsets, vec![[0, 6]]);
    }

    #[test]
    fn fast_paths_agree_with_the_general_path() {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "中", "文", "é", "e", "##llo",
            "he", "!",
        ];
        let vocab = || Vocab::new(words.iter().map(|s| s.to_string()).collect()).unwrap();
        let texts = [
            "Hello 中文!",
            "héllo",
            "ÉCOLE",
            "a\u{301}b",
            "x\u{1}y 中",
            "İ",
            "\u{f900}",
            "日本語 hello",
            "tab\there",
            "\u{3000}中\u{3000}",
            "ǅ",
            "\u{1b44}\u{1b44}",
            "abc\u{200b}def",
            "Ω!ω",
        ];
        for (lower, strip, clean, cjk) in [
            (true, true, true, true),
            (false, false, true, true),
            (true, false, false, false),
            (false, true, true, false),
        ] {
            let cfg = TokenizerConfig {
                normalizer: NormalizerConfig {
                    lowercase: lower,
                    strip_accents: strip,
                    clean_text: clean,
                    handle_chinese_chars: cjk,
                },
                ..Default::default()
            };
            let t = Tokenizer::new(vocab(), cfg).unwrap();
            for text in texts {
                let (mut a, mut b) = (EncodingBuf::default(), EncodingBuf::default());
                let (mut wa, mut wb) = (0, 0);
                let mut sc = Scratch::default();
                let na = t.encode_segment(text, 0, 0, &mut wa, &mut sc, &mut a);
                let nb = t.encode_general(text, 0, 0, &mut wb, &mut sc, &mut b);
                assert_eq!(
                    (na, wa, &a),
                    (nb, wb, &b),
                    "{text:?} lower={lower} strip={strip}"
                );
            }
        }
    }

    #[test]
    fn truncation_matches_hf_table() {
        // HF truncation.rs unit-test table (max_length 7): (n1, n2) -> kept.
        let cases = [
            ((0, 8), (0, 7)),
            ((2, 8), (2, 5)),
            ((4, 4), (3, 4)),
            ((4, 8), (3, 4)),
            ((8, 2), (5, 2)),
            ((8, 4), (4, 3)),
            ((8, 8), (3, 4)),
            ((8, 0), (7, 0)),
        ];
        for ((a, b), want) in cases {
            assert_eq!(
                truncated_lengths(a, b, true, 7, Truncation::LongestFirst).unwrap(),
                want,
                "{a},{b}"
            );
        }
        assert!(truncated_lengths(2, 8, true, 7, Truncation::OnlyFirst).is_err());
        assert_eq!(
            truncated_lengths(2, 8, true, 7, Truncation::OnlySecond).unwrap(),
            (2, 5)
        );
    }

    #[test]
    fn batch_is_thread_count_independent() {
        let t = tok();
        let texts: Vec<String> = (0..500)
            .map(|i| format!("hello world {i} unaffable café 中文 [SEP]"))
            .collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let o = EncodeOptions {
            max_length: Some(9),
            ..Default::default()
        };
        let a = t.encode_batch(&refs, Some(&refs), &o, Some(1)).unwrap();
        let b = t.encode_batch(&refs, Some(&refs), &o, Some(3)).unwrap();
        assert_eq!(a, b);
        let one = t.encode(refs[7], Some(refs[7]), &o).unwrap();
        let (s, e) = (a.row_splits[7] as usize, a.row_splits[8] as usize);
        assert_eq!(a.tokens.ids[s..e], one.ids[..]);
    }

    /// HF `Encoding::truncate` (right direction), transcribed as the oracle for [`Windows`].
    fn hf_parts(len: usize, max_len: usize, stride: usize) -> Vec<(usize, usize)> {
        if max_len >= len {
            return vec![(0, len)];
        }
        if max_len == 0 {
            return vec![(0, 0), (0, len)];
        }
        let offset = max_len - stride;
        let mut end = false;
        (0..len)
            .step_by(offset)
            .filter_map(|start| {
                if !end {
                    let stop = std::cmp::min(start + max_len, len);
                    end = stop == len;
                    Some((start, stop))
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn windows_match_hf_truncate() {
        for len in 0..40 {
            for target in 0..len + 3 {
                for stride in 0..target.max(1) {
                    let w = Windows::new(len, target, stride, "first").unwrap();
                    let got: Vec<_> = (0..w.count()).map(|i| w.get(i)).collect();
                    assert_eq!(
                        got,
                        hf_parts(len, target, stride),
                        "{len} {target} {stride}"
                    );
                }
            }
        }
        assert!(Windows::new(10, 4, 4, "first").is_err());
        assert!(Windows::new(3, 4, 9, "first").is_ok()); // not cut: no stride check (as HF)
    }

    #[test]
    fn overflow_rows_follow_hf_merge_order() {
        let t = tok();
        // "hello world hello world" = [5, 6, 5, 6]; "the the cafe" = [15, 15, 11].
        let o = EncodeOptions {
            max_length: Some(7),
            stride: 1,
            ..Default::default()
        };
        // Budget 4: longest_first keeps (2, 2); A windows [5,6] [6,5] [5,6], B [15,15] [15,11].
        let (b, k, m) = t
            .encode_overflowing("hello world hello world", Some("the the cafe"), &o)
            .unwrap();
        assert_eq!((k, m), (2, 1));
        let rows: Vec<&[u32]> = (0..b.row_splits.len() - 1)
            .map(|r| &b.tokens.ids[b.row_splits[r] as usize..b.row_splits[r + 1] as usize])
            .collect();
        let (a0, a1, a2, b0, b1) = ([5, 6], [6, 5], [5, 6], [15, 15], [15, 11]);
        let row = |a: [u32; 2], bb: [u32; 2]| vec![2, a[0], a[1], 3, bb[0], bb[1], 3];
        let want = [
            row(a0, b0),
            row(a1, b0),
            row(a1, b1),
            row(a2, b0),
            row(a2, b1),
            row(a0, b1),
        ];
        assert_eq!(rows, want.iter().map(|r| &r[..]).collect::<Vec<_>>());
        // Window starts of the first sequence (char offsets of "hello world hello world").
        assert_eq!(b.tokens.offsets[b.row_splits[1] as usize + 1], [6, 11]);
        assert_eq!(b.tokens.type_ids[..7], [0, 0, 0, 0, 1, 1, 1]);
        // Row 0 is what encode returns.
        let main = t
            .encode("hello world hello world", Some("the the cafe"), &o)
            .unwrap();
        assert_eq!(main.ids, rows[0]);
    }

    #[test]
    fn overflow_batch_is_thread_count_independent() {
        let t = tok();
        let texts: Vec<String> = (0..300)
            .map(|i| "hello world unaffable ".repeat(1 + i % 7) + "中文")
            .collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let o = EncodeOptions {
            max_length: Some(9),
            stride: 2,
            ..Default::default()
        };
        let a = t
            .encode_batch_overflowing(&refs, None, &o, Some(1))
            .unwrap();
        let b = t
            .encode_batch_overflowing(&refs, None, &o, Some(3))
            .unwrap();
        assert_eq!(a, b);
        let plain = t.encode_batch(&refs, None, &o, Some(2)).unwrap();
        // The first row of each text is the plain (first-window) row.
        for i in 0..refs.len() {
            let r = a.1.iter().position(|&s| s == i as i64).unwrap();
            let (s, e) = (a.0.row_splits[r] as usize, a.0.row_splits[r + 1] as usize);
            let (ps, pe) = (
                plain.row_splits[i] as usize,
                plain.row_splits[i + 1] as usize,
            );
            assert_eq!(a.0.tokens.ids[s..e], plain.tokens.ids[ps..pe]);
        }
        assert!(a.1.len() > refs.len());
        let no_max = EncodeOptions {
            max_length: None,
            ..o
        };
        let err = t.encode_batch(&["x"], None, &no_max, Some(1)).unwrap_err();
        assert!(err.to_string().contains("stride"), "{err}");
    }

    #[test]
    fn a_segment_with_more_tokens_than_reserved_at_once_grows() {
        // One ASCII segment of 200k punctuation characters: 200k tokens, more than the writer
        // reserves up front, each its own word with its own offsets.
        let t = tok();
        let n = 3 * TokenWriter::MAX_RESERVE + 7;
        let text = ",".repeat(n);
        let o = EncodeOptions {
            add_special_tokens: false,
            ..Default::default()
        };
        let e = t.encode(&text, None, &o).unwrap();
        let comma = t.vocab().token_to_id(",").unwrap();
        assert_eq!(e.ids.len(), n);
        assert!(e.ids.iter().all(|&id| id == comma));
        assert!(e
            .offsets
            .iter()
            .enumerate()
            .all(|(i, o)| *o == [i as u32, i as u32 + 1]));
        assert!(e.word_ids.iter().enumerate().all(|(i, &w)| w == i as i32));
        assert_eq!(e.type_ids.len(), n);
    }

    #[test]
    fn dense_batches_past_the_output_estimate_are_complete_and_ordered() {
        // Every character a token: more tokens than the assembled columns' first capacity
        // (bytes / 2 + 3 per text), so later chunks take the append path.
        let t = tok();
        let texts: Vec<String> = (0..3000)
            .map(|i| ",!".repeat(20 + i % 50) + if i % 3 == 0 { " hello" } else { "" })
            .collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let o = EncodeOptions::default();
        let one = t.encode_batch(&refs, None, &o, Some(1)).unwrap();
        let bytes: usize = refs.iter().map(|s| s.len()).sum();
        assert!(one.tokens.len() > bytes / 2 + 3 * refs.len() + 64);
        for threads in [2, 3, 5] {
            assert_eq!(t.encode_batch(&refs, None, &o, Some(threads)).unwrap(), one);
        }
        for i in [0, 1234, 2999] {
            let e = t.encode(refs[i], None, &o).unwrap();
            let (s, end) = (one.row_splits[i] as usize, one.row_splits[i + 1] as usize);
            assert_eq!(one.tokens.ids[s..end], e.ids[..]);
        }
    }

    #[test]
    fn the_first_failing_text_is_reported_whatever_the_thread_count() {
        let t = tok();
        let texts: Vec<String> = (0..4000).map(|i| "hello ".repeat(1 + i % 13)).collect();
        // Texts fail from 2502 on (7 + 3 tokens: both truncated to 3, not above the
        // stride); the batch is cut into many chunks, so several chunks fail.
        let pairs: Vec<String> = (0..4000)
            .map(|i| "world ".repeat(if i < 2500 { 1 } else { 1 + i % 5 }))
            .collect();
        let tr: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let pr: Vec<&str> = pairs.iter().map(|s| s.as_str()).collect();
        let o = EncodeOptions {
            max_length: Some(9),
            stride: 3,
            ..Default::default()
        };
        let want = t
            .encode_batch(&tr, Some(&pr), &o, Some(1))
            .unwrap_err()
            .to_string();
        for threads in [2, 3, 4] {
            let got = t
                .encode_batch(&tr, Some(&pr), &o, Some(threads))
                .unwrap_err()
                .to_string();
            assert_eq!(got, want, "threads {threads}");
        }
        assert!(want.contains("texts[2502]"), "{want}");
    }

    #[test]
    fn remembered_pieces_follow_the_tokenizer_that_uses_the_scratch() {
        // Two vocabularies that split "unaffable" differently; one scratch, alternating.
        let a = tok();
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "una", "##ffable", "hello",
        ];
        let b = Tokenizer::new(
            Vocab::new(words.iter().map(|s| s.to_string()).collect()).unwrap(),
            TokenizerConfig::default(),
        )
        .unwrap();
        let o = EncodeOptions::default();
        let text = "unaffable hello unaffable UNAFFABLE";
        let want_a = a.encode(text, None, &o).unwrap();
        let want_b = b.encode(text, None, &o).unwrap();
        assert_ne!(want_a.ids, want_b.ids);
        let mut sc = Scratch::default();
        for round in 0..3 {
            for (t, want) in [(&a, &want_a), (&b, &want_b), (&a.clone(), &want_a)] {
                let mut out = EncodingBuf::default();
                t.encode_into(text, None, &o, &mut sc, &mut out).unwrap();
                assert_eq!(out.ids, want.ids, "round {round}");
                assert_eq!(out.offsets, want.offsets, "round {round}");
            }
        }
    }

    #[test]
    fn a_panic_in_one_chunk_ends_the_call_without_hanging() {
        // A panic in the first chunk the calling thread runs, then in the first one a pool
        // worker runs (chunks are slow enough that workers take some): the call unwinds, every
        // thread stops, nobody waits forever.
        let t = tok();
        let chunks: Vec<(usize, usize)> = (0..24).map(|i| (i, i + 1)).collect();
        for (on_worker, one_row) in [(false, false), (true, false), (false, true), (true, true)] {
            for threads in [2, 3] {
                let fired = AtomicBool::new(false);
                let work = |_: &mut Scratch,
                            c: &(usize, usize),
                            buf: &mut EncodingBuf|
                 -> Result<(Vec<u32>, Vec<i64>)> {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    let here = rayon::current_thread_index().is_some() == on_worker;
                    if here && !fired.swap(true, Ordering::SeqCst) {
                        panic!("deliberate panic in chunk {}", c.0);
                    }
                    buf.push(1, 0, 0, 1, 0);
                    Ok((vec![1], vec![]))
                };
                let origin = RaggedBatch {
                    row_splits: vec![0],
                    ..Default::default()
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    t.encode_chunks_ordered(&chunks, threads, 100, one_row, &work, origin)
                }));
                assert!(fired.load(Ordering::SeqCst), "no chunk panicked");
                assert!(r.is_err(), "on_worker {on_worker}, {threads} threads");
            }
        }
    }

    #[test]
    fn more_threads_than_chunks() {
        let t = tok();
        let texts: Vec<String> = (0..3)
            .map(|i| "hello world unaffable ".repeat(60 + i))
            .collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let o = EncodeOptions::default();
        let one = t.encode_batch(&refs, None, &o, Some(1)).unwrap();
        for threads in [2, 8, 64] {
            assert_eq!(t.encode_batch(&refs, None, &o, Some(threads)).unwrap(), one);
        }
    }

    #[test]
    fn decode_follows_the_wordpiece_decoder() {
        let t = tok();
        assert_eq!(
            t.decode(&[2, 5, 12, 8, 9, 10, 7, 3], true).unwrap(),
            "hello, unaffable!"
        );
        assert_eq!(t.decode(&[2, 5, 3], false).unwrap(), "[CLS] hello [SEP]");
        assert!(t.decode(&[99], true).is_err());
    }

    #[test]
    fn decode_follows_the_configured_decoder() {
        let with = |decoder: Decoder| {
            let words = [
                "[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "@@llo", ",", "##x", "n't",
            ];
            let cfg = TokenizerConfig {
                decoder,
                ..Default::default()
            };
            let t = Tokenizer::new(
                Vocab::new(words.iter().map(|s| s.to_string()).collect()).unwrap(),
                cfg,
            )
            .unwrap();
            (
                t.decode(&[2, 4, 6, 5, 7, 8, 3], true).unwrap(),
                t.decode(&[2, 4, 3], false).unwrap(),
            )
        };
        let wp = |prefix: &str, cleanup| Decoder::WordPiece {
            prefix: prefix.into(),
            cleanup,
        };
        // Hand-computed from HF's rules: ["hello", ",", "@@llo", "##x", "n't"].
        assert_eq!(with(wp("##", true)).0, "hello, @@lloxn't");
        assert_eq!(with(wp("##", false)).0, "hello , @@llox n't");
        assert_eq!(with(wp("@@", true)).0, "hello,llo ##xn't");
        assert_eq!(with(Decoder::Spaces).0, "hello , @@llo ##x n't");
        assert_eq!(with(Decoder::Spaces).1, "[CLS] hello [SEP]");
    }
}
