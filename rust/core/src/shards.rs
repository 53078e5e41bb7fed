//! Memory-mapped token shards on disk.
//!
//! A shard holds a tokenized corpus (documents of sentences; no special tokens) in one file,
//! `<prefix>.umshard`, laid out for zero-copy reading (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"UMSHARD\0"` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | bytes per token id: 2 (uint16, when the vocabulary has <= 65536 entries) or 4 |
//! | 16 | 8 | number of tokens `T` |
//! | 24 | 8 | number of sentences `S` |
//! | 32 | 8 | number of documents `D` |
//! | 40 | 4 | vocabulary size |
//! | 44 | 4 | flags (0) |
//! | 48 | 4 | CRC-32 (IEEE, as `zlib.crc32`) of bytes `0..48` then `64..end` |
//! | 52 | 12 | reserved (zero) |
//! | 64 | `T * width`, zero-padded to a multiple of 8 | token ids |
//! | ... | `(S + 1) * 8` | sentence offsets (uint64): sentence `j` is tokens `[s[j], s[j+1])` |
//! | ... | `(D + 1) * 8` | document offsets (uint64): document `i` is sentences `[d[i], d[i+1])` |
//!
//! The writer ([`write_shard`]) streams the input (UTF-8, one sentence per line, documents
//! separated by blank lines) in batches, so memory stays bounded by the batch size: token ids go
//! straight to the output file, offsets to temporary files appended at the end. The output is
//! written to `<out>.tmp-<pid>` in the same directory, synced, and renamed over `out` only when
//! complete: a failed encode leaves no partial shard (and a previous one intact), and readers
//! that have the previous shard mapped keep reading its old inode.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::tokenizer::{EncodeOptions, Tokenizer};
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"UMSHARD\0";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;

// ---------------------------------------------------------------------------------- CRC-32

fn crc_tables() -> &'static [[u32; 256]; 8] {
    static T: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            t[0][i as usize] = c;
        }
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            }
        }
        t
    })
}

/// Incremental CRC-32 (IEEE 802.3, the polynomial of zlib/PNG): `crc32_update(0, data)` equals
/// Python's `zlib.crc32(data)`, and chaining equals `zlib.crc32(b, zlib.crc32(a))`.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let t = crc_tables();
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------- header

/// The parsed fixed-size header of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u32,
    pub token_bytes: u32,
    pub n_tokens: u64,
    pub n_sentences: u64,
    pub n_documents: u64,
    pub vocab_size: u32,
    pub flags: u32,
    pub crc32: u32,
}

impl ShardHeader {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&self.token_bytes.to_le_bytes());
        h[16..24].copy_from_slice(&self.n_tokens.to_le_bytes());
        h[24..32].copy_from_slice(&self.n_sentences.to_le_bytes());
        h[32..40].copy_from_slice(&self.n_documents.to_le_bytes());
        h[40..44].copy_from_slice(&self.vocab_size.to_le_bytes());
        h[44..48].copy_from_slice(&self.flags.to_le_bytes());
        h[48..52].copy_from_slice(&self.crc32.to_le_bytes());
        h
    }

    fn parse(h: &[u8], name: &str) -> Result<Self> {
        if h.len() < HEADER_LEN || &h[0..8] != MAGIC {
            return Err(Error::InvalidInput(format!(
                "{name} is not a unimask token shard (bad magic)"
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        let hd = Self {
            version: u32_at(8),
            token_bytes: u32_at(12),
            n_tokens: u64_at(16),
            n_sentences: u64_at(24),
            n_documents: u64_at(32),
            vocab_size: u32_at(40),
            flags: u32_at(44),
            crc32: u32_at(48),
        };
        if hd.version != VERSION {
            return Err(Error::InvalidInput(format!(
                "{name}: unsupported shard version {} (this unimask reads version {VERSION})",
                hd.version
            )));
        }
        if hd.token_bytes != 2 && hd.token_bytes != 4 {
            return Err(Error::InvalidInput(format!(
                "{name}: bad token width {}",
                hd.token_bytes
            )));
        }
        Ok(hd)
    }

    /// Byte length of the padded token section; `None` when it overflows a `u64` (a corrupted
    /// header).
    pub fn tokens_len(&self) -> Option<u64> {
        self.n_tokens
            .checked_mul(self.token_bytes as u64)?
            .checked_next_multiple_of(8)
    }

    /// Byte offsets of the sentence offsets, the document offsets and the end of the file
    /// implied by the header; `None` when one overflows a `u64` (a corrupted header).
    fn layout(&self) -> Option<(u64, u64, u64)> {
        let offsets_len = |n: u64| n.checked_add(1)?.checked_mul(8);
        let sentences = (HEADER_LEN as u64).checked_add(self.tokens_len()?)?;
        let documents = sentences.checked_add(offsets_len(self.n_sentences)?)?;
        let end = documents.checked_add(offsets_len(self.n_documents)?)?;
        Some((sentences, documents, end))
    }

    /// Total file length implied by the header; `None` when it overflows a `u64` (a corrupted
    /// header).
    pub fn file_len(&self) -> Option<u64> {
        self.layout().map(|(_, _, end)| end)
    }
}

/// Fail with an `OSError` naming `path` unless it is a regular file (after symlinks). Checked
/// before opening an input, so a directory or device gets a clear message and a named pipe
/// (FIFO) cannot block the open forever waiting for a writer.
pub fn check_regular_file(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot open {what} {}: {e}", path.display()),
        ))
    })?;
    match non_regular_kind(&meta) {
        None => Ok(()),
        Some(kind) => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot open {what} {}: it is {kind}", path.display()),
        ))),
    }
}

/// What `meta` is when it is not a regular file (for the error messages), `None` when it is.
fn non_regular_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    if meta.is_file() {
        None
    } else if meta.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file (a device, named pipe or socket)")
    }
}

/// Fail with a `ValueError` naming `out` when something other than a regular file is there
/// (after symlinks): the shard is renamed over `out`, which would silently replace a named
/// pipe, socket or device node (or a symlink to one), and fail for a directory only after the
/// whole corpus was encoded. Nothing there (or a dangling symlink) is fine.
fn check_output_path(out: &Path) -> Result<()> {
    let meta = match std::fs::metadata(out) {
        Ok(m) => m,
        // Not there, or not reachable: creating the temporary file next to it reports that.
        Err(_) => return Ok(()),
    };
    match non_regular_kind(&meta) {
        None => Ok(()),
        Some(kind) => Err(Error::InvalidInput(format!(
            "cannot write shard {}: it is {kind}",
            out.display()
        ))),
    }
}

// ---------------------------------------------------------------------------------- writer

/// Counts of a written shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSummary {
    pub path: PathBuf,
    pub header: ShardHeader,
    pub text_bytes: u64,
}

/// Python's `str.isspace`, so lines are stripped as `unimask.corpus.read_documents` does.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Read one line into `buf`, ending at `\n`, `\r\n` or a lone `\r` (Python's universal
/// newlines, which is how `read_documents` reads the corpus), terminator included. Returns the
/// bytes read: 0 at the end of the file.
fn read_line_universal<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let (end, used) = {
            let avail = r.fill_buf()?;
            if avail.is_empty() {
                return Ok(total);
            }
            match memchr::memchr2(b'\n', b'\r', avail) {
                Some(i) => {
                    buf.extend_from_slice(&avail[..=i]);
                    (Some(avail[i]), i + 1)
                }
                None => {
                    buf.extend_from_slice(avail);
                    (None, avail.len())
                }
            }
        };
        r.consume(used);
        total += used;
        match end {
            // `\r\n` is one line break, also when the buffer ends between the two.
            Some(b'\r') => {
                if r.fill_buf()?.first() == Some(&b'\n') {
                    r.consume(1);
                    buf.push(b'\n');
                    total += 1;
                }
                return Ok(total);
            }
            Some(_) => return Ok(total),
            None => {}
        }
    }
}

struct TempFile {
    path: PathBuf,
    w: BufWriter<File>,
}

impl TempFile {
    fn new(path: PathBuf) -> Result<Self> {
        let f = File::create(&path)?;
        Ok(Self {
            path,
            w: BufWriter::with_capacity(1 << 20, f),
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A path removed when dropped, unless [`RemoveOnDrop::rename_to`] moved it into place.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// Atomically rename the file over `dest` (on success nothing is removed any more).
    fn rename_to(mut self, dest: &Path) -> std::io::Result<()> {
        let path = self.0.take().expect("renamed once");
        match std::fs::rename(&path, dest) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Tokenize `input` (a corpus: one sentence per line, blank lines between documents; lines end
/// at `\n`, `\r\n` or `\r` and are stripped of whitespace, as in Python) into the
/// shard `out` with `tok` (no special tokens), `batch_bytes` of text at a time, on `num_threads`.
/// `out` must be a regular file or not exist (checked before any work); a symlink there is
/// replaced by the shard, its target left as it was.
pub fn write_shard(
    tok: &Tokenizer,
    input: &Path,
    out: &Path,
    batch_bytes: usize,
    num_threads: Option<usize>,
) -> Result<ShardSummary> {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(out)) {
        if a == b {
            return Err(Error::InvalidInput(format!(
                "the shard {} would overwrite its own input corpus",
                out.display()
            )));
        }
    }
    let vocab_size = tok.vocab().len();
    let width: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
    check_regular_file(input, "corpus")?;
    check_output_path(out)?;
    let fin = File::open(input).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot open corpus {}: {e}", input.display()),
        ))
    })?;
    let mut reader = BufReader::with_capacity(1 << 20, fin);
    let tmp = |ext: &str| {
        let mut p = out.as_os_str().to_owned();
        p.push(format!(".tmp-{}{ext}", std::process::id()));
        PathBuf::from(p)
    };
    // The shard is written to a temporary file next to `out` and renamed over it only once
    // complete and synced: a failed encode leaves a previous shard at `out` intact, and a
    // reader that has the previous shard mapped keeps its (old) inode instead of seeing the
    // file truncated underneath it (SIGBUS).
    let part_path = tmp("");
    let fout = File::create(&part_path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot create shard {}: {e}", out.display()),
        ))
    })?;
    let part_guard = RemoveOnDrop(Some(part_path));
    let mut w = BufWriter::with_capacity(1 << 20, fout);
    w.write_all(&[0u8; HEADER_LEN])?;
    let mut sent_tmp = TempFile::new(tmp(".sentences"))?;
    let mut doc_tmp = TempFile::new(tmp(".documents"))?;
    let mut crc_payload = 0u32;
    let (mut n_tokens, mut n_sent, mut n_docs) = (0u64, 0u64, 0u64);
    let mut text_bytes = 0u64;
    let mut in_doc = false;
    sent_tmp.w.write_all(&0u64.to_le_bytes())?;
    doc_tmp.w.write_all(&0u64.to_le_bytes())?;
    let opts = EncodeOptions {
        add_special_tokens: false,
        ..Default::default()
    };

    let mut line_buf: Vec<u8> = Vec::new();
    let mut batch_text = String::new();
    let mut batch_ends: Vec<usize> = Vec::new();
    // per batch line: true = this sentence starts a new document
    let mut batch_newdoc: Vec<bool> = Vec::new();
    let mut lineno = 0u64;
    let mut tok_bytes: Vec<u8> = Vec::new();

    let mut flush = |batch_text: &mut String,
                     batch_ends: &mut Vec<usize>,
                     batch_newdoc: &mut Vec<bool>,
                     w: &mut BufWriter<File>,
                     n_tokens: &mut u64,
                     n_sent: &mut u64,
                     n_docs: &mut u64,
                     crc: &mut u32|
     -> Result<()> {
        if batch_ends.is_empty() {
            return Ok(());
        }
        let mut start = 0;
        let texts: Vec<&str> = batch_ends
            .iter()
            .map(|&e| {
                let s = &batch_text[start..e];
                start = e;
                s
            })
            .collect();
        let b = tok.encode_batch(&texts, None, &opts, num_threads)?;
        tok_bytes.clear();
        if width == 2 {
            tok_bytes.extend(b.tokens.ids.iter().flat_map(|&i| (i as u16).to_le_bytes()));
        } else {
            tok_bytes.extend(b.tokens.ids.iter().flat_map(|&i| i.to_le_bytes()));
        }
        w.write_all(&tok_bytes)?;
        *crc = crc32_update(*crc, &tok_bytes);
        for (k, newdoc) in batch_newdoc.iter().enumerate() {
            if *newdoc && *n_sent > 0 {
                *n_docs += 1;
                doc_tmp.w.write_all(&n_sent.to_le_bytes())?;
            }
            *n_sent += 1;
            let end = *n_tokens + b.row_splits[k + 1] as u64;
            sent_tmp.w.write_all(&end.to_le_bytes())?;
        }
        *n_tokens += b.tokens.ids.len() as u64;
        batch_text.clear();
        batch_ends.clear();
        batch_newdoc.clear();
        Ok(())
    };

    let mut pending_newdoc = true;
    loop {
        line_buf.clear();
        let n = read_line_universal(&mut reader, &mut line_buf)?;
        if n == 0 {
            break;
        }
        lineno += 1;
        text_bytes += n as u64;
        let line = std::str::from_utf8(&line_buf).map_err(|e| {
            Error::InvalidInput(format!(
                "{}: line {lineno} is not valid UTF-8 (invalid byte at column {})",
                input.display(),
                e.valid_up_to() + 1
            ))
        })?;
        let line = line.trim_matches(py_isspace);
        if line.is_empty() {
            if in_doc {
                pending_newdoc = true;
                in_doc = false;
            }
            continue;
        }
        batch_text.push_str(line);
        batch_ends.push(batch_text.len());
        batch_newdoc.push(pending_newdoc);
        pending_newdoc = false;
        in_doc = true;
        if batch_text.len() >= batch_bytes {
            flush(
                &mut batch_text,
                &mut batch_ends,
                &mut batch_newdoc,
                &mut w,
                &mut n_tokens,
                &mut n_sent,
                &mut n_docs,
                &mut crc_payload,
            )?;
        }
    }
    flush(
        &mut batch_text,
        &mut batch_ends,
        &mut batch_newdoc,
        &mut w,
        &mut n_tokens,
        &mut n_sent,
        &mut n_docs,
        &mut crc_payload,
    )?;
    if n_sent > 0 {
        n_docs += 1;
        doc_tmp.w.write_all(&n_sent.to_le_bytes())?;
    }
    let pad = ((n_tokens * width as u64).div_ceil(8) * 8 - n_tokens * width as u64) as usize;
    w.write_all(&[0u8; 8][..pad])?;
    crc_payload = crc32_update(crc_payload, &[0u8; 8][..pad]);
    for t in [&mut sent_tmp, &mut doc_tmp] {
        t.w.flush()?;
        let mut f = File::open(&t.path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            w.write_all(&buf[..k])?;
            crc_payload = crc32_update(crc_payload, &buf[..k]);
        }
    }
    let mut header = ShardHeader {
        version: VERSION,
        token_bytes: width,
        n_tokens,
        n_sentences: n_sent,
        n_documents: n_docs,
        vocab_size: vocab_size as u32,
        flags: 0,
        crc32: 0,
    };
    let hb = header.to_bytes();
    // CRC of header bytes 0..48 followed by the payload: combine by recomputing over the header
    // first is not possible after the fact, so the payload CRC is chained onto the header CRC
    // with the standard CRC-32 combination below.
    let file_len = header
        .file_len()
        .ok_or_else(|| Error::Internal(format!("shard size overflows a u64 ({header:?})")))?;
    header.crc32 = crc32_combine(
        crc32_update(0, &hb[..48]),
        crc_payload,
        file_len - HEADER_LEN as u64,
    );
    let mut f = w.into_inner().map_err(|e| Error::Io(e.into_error()))?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&header.to_bytes())?;
    f.sync_all()?;
    drop(f);
    part_guard.rename_to(out).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot create shard {}: {e}", out.display()),
        ))
    })?;
    Ok(ShardSummary {
        path: out.to_path_buf(),
        header,
        text_bytes,
    })
}

// CRC-32 combination (zlib's crc32_combine): the CRC of A||B from crc(A), crc(B) and len(B).
fn gf2_times(mat: &[u32; 32], mut vec: u32) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while vec != 0 {
        if vec & 1 != 0 {
            sum ^= mat[i];
        }
        vec >>= 1;
        i += 1;
    }
    sum
}

fn gf2_square(square: &mut [u32; 32], mat: &[u32; 32]) {
    for n in 0..32 {
        square[n] = gf2_times(mat, mat[n]);
    }
}

/// `crc32(A || B)` from `crc32(A)`, `crc32(B)` and `len(B)` (zlib's `crc32_combine`).
pub fn crc32_combine(mut crc1: u32, crc2: u32, mut len2: u64) -> u32 {
    if len2 == 0 {
        return crc1;
    }
    let mut even = [0u32; 32];
    let mut odd = [0u32; 32];
    odd[0] = 0xEDB8_8320;
    let mut row = 1u32;
    for v in odd.iter_mut().skip(1) {
        *v = row;
        row <<= 1;
    }
    gf2_square(&mut even, &odd);
    gf2_square(&mut odd, &even);
    loop {
        gf2_square(&mut even, &odd);
        if len2 & 1 != 0 {
            crc1 = gf2_times(&even, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
        gf2_square(&mut odd, &even);
        if len2 & 1 != 0 {
            crc1 = gf2_times(&odd, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
    }
    crc1 ^ crc2
}

// ---------------------------------------------------------------------------------- reader

/// Check an offsets column (`bytes`: little-endian u64s, at least one) against the format:
/// it starts at 0, never decreases and ends at `end` (the header's count of what it indexes).
/// The error names the first offending entry and its value.
fn check_offsets(
    bytes: &[u8],
    end: u64,
    what: &str,
    units: &str,
) -> std::result::Result<(), String> {
    let at = |k: usize| u64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().unwrap());
    let n = bytes.len() / 8;
    // The common case in one branch-free pass (it vectorizes); the slow path below only runs
    // on a corrupted shard, to name the entry.
    let mut prev = 0u64;
    let mut bad = false;
    for c in bytes.chunks_exact(8) {
        let v = u64::from_le_bytes(c.try_into().unwrap());
        bad |= (v < prev) | (v > end);
        prev = v;
    }
    if !bad && n > 0 && at(0) == 0 && prev == end {
        return Ok(());
    }
    if n == 0 {
        return Err(format!("the {what} offsets are missing"));
    }
    if at(0) != 0 {
        return Err(format!("{what} offset 0 is {}, not 0", at(0)));
    }
    for k in 1..n {
        let (p, v) = (at(k - 1), at(k));
        if v > end {
            return Err(format!(
                "{what} offset {k} is {v}, past the {end} {units} of the header"
            ));
        }
        if v < p {
            return Err(format!(
                "{what} offset {k} is {v}, less than offset {} ({p})",
                k - 1
            ));
        }
    }
    Err(format!(
        "the last {what} offset ({}) is {}, not the {end} {units} of the header",
        n - 1,
        at(n - 1)
    ))
}

/// A memory-mapped shard.
pub struct Shard {
    map: memmap2::Mmap,
    pub header: ShardHeader,
    /// Byte offsets of the sentence and document offset sections (validated against the file).
    sentences_at: usize,
    documents_at: usize,
}

impl Shard {
    /// Open and validate a shard: the sizes and the offsets always, the CRC when `verify`.
    ///
    /// The offset check is one pass over the `S + D + 2` offsets (not the tokens, which the CRC
    /// reads too), so a shard opened without `verify` still never maps a sentence to tokens
    /// past the end or a document to sentences that do not exist: readers index the columns
    /// with the offsets unchecked.
    pub fn open(path: &Path, verify: bool) -> Result<Self> {
        let name = path.display().to_string();
        check_regular_file(path, "shard")?;
        let f = File::open(path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot open shard {name}: {e}"),
            ))
        })?;
        // SAFETY: the map is read-only. A shard modified in place by another process while
        // mapped can give wrong tokens, and one truncated underneath the map raises SIGBUS on
        // the next read past the new end (inherent to mmap; `write_shard` never does either: it
        // renames a new file over the path, and the map keeps the old inode).
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot map shard {name}: {e}"),
            ))
        })?;
        let header = ShardHeader::parse(&map, &name)?;
        // Every size derived from the header is checked (no wrapping) and must match the file
        // exactly, so the offsets below are in bounds and fit a usize.
        let (sentences_at, documents_at) = match header.layout() {
            Some((s, d, end)) if end == map.len() as u64 => (s as usize, d as usize),
            layout => {
                let implied = match layout {
                    Some((_, _, end)) => format!("{end} bytes"),
                    None => "more than 2**64 bytes".to_string(),
                };
                return Err(Error::InvalidInput(format!(
                    "{name}: truncated or corrupted shard (file has {} bytes, header implies \
                     {implied} for {} tokens of {} bytes, {} sentences and {} documents)",
                    map.len(),
                    header.n_tokens,
                    header.token_bytes,
                    header.n_sentences,
                    header.n_documents
                )));
            }
        };
        let s = Self {
            map,
            header,
            sentences_at,
            documents_at,
        };
        if verify {
            let crc = crc32_update(crc32_update(0, &s.map[..48]), &s.map[HEADER_LEN..]);
            if crc != header.crc32 {
                return Err(Error::InvalidInput(format!(
                    "{name}: checksum mismatch (stored {:#010x}, computed {crc:#010x}): the shard is corrupted",
                    header.crc32
                )));
            }
        }
        let sentences = &s.map[sentences_at..documents_at];
        check_offsets(sentences, header.n_tokens, "sentence", "tokens")
            .and_then(|()| {
                let documents = &s.map[documents_at..];
                check_offsets(documents, header.n_sentences, "document", "sentences")
            })
            .map_err(|m| Error::InvalidInput(format!("{name}: corrupted shard: {m}")))?;
        Ok(s)
    }

    /// The little-endian u64s of `map[start..end]` (in bounds: `open` checked the layout).
    fn u64s(&self, start: usize, end: usize) -> Vec<u64> {
        self.map[start..end]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Byte length of the padded token section (validated against the file by `open`).
    pub fn tokens_len(&self) -> u64 {
        (self.sentences_at - HEADER_LEN) as u64
    }

    /// Sentence offsets (S + 1 entries).
    pub fn sentence_offsets(&self) -> Vec<u64> {
        self.u64s(self.sentences_at, self.documents_at)
    }

    /// Document offsets (D + 1 entries).
    pub fn document_offsets(&self) -> Vec<u64> {
        self.u64s(self.documents_at, self.map.len())
    }

    /// Token id `i`, or `None` when `i >= n_tokens`. (Indexing the map alone did not catch
    /// that: ids past the end read the section's zero padding or the offsets behind it.)
    pub fn token(&self, i: u64) -> Option<u32> {
        if i >= self.header.n_tokens {
            return None;
        }
        // In bounds: `open` checked that the `n_tokens * width` bytes fit the file (and a usize).
        let w = self.header.token_bytes as usize;
        let at = HEADER_LEN + i as usize * w;
        Some(if w == 2 {
            u16::from_le_bytes([self.map[at], self.map[at + 1]]) as u32
        } else {
            u32::from_le_bytes(self.map[at..at + 4].try_into().unwrap())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::TokenizerConfig;
    use crate::vocab::Vocab;

    #[test]
    fn crc_matches_known_values() {
        assert_eq!(crc32_update(0, b"123456789"), 0xCBF4_3926);
        let a = b"hello, ";
        let b = b"shard world with more than eight bytes";
        let whole = crc32_update(0, &[&a[..], &b[..]].concat());
        assert_eq!(crc32_update(crc32_update(0, a), b), whole);
        assert_eq!(
            crc32_combine(crc32_update(0, a), crc32_update(0, b), b.len() as u64),
            whole
        );
    }

    #[test]
    fn lines_end_at_lf_crlf_and_lone_cr() {
        // Small buffers put "\r\n" across a refill. U+0085 and U+2028 are not line breaks
        // when Python reads a file (only for `str.splitlines`).
        let text = "ab\r\ncd\re\n\r\rfg\r\n\r\nh\u{85}i\u{2028}j\r".as_bytes();
        for cap in [1, 2, 3, 64] {
            let mut r = std::io::BufReader::with_capacity(cap, text);
            let mut lines = Vec::new();
            let mut read = 0;
            loop {
                let mut buf = Vec::new();
                let n = read_line_universal(&mut r, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                assert_eq!(n, buf.len());
                read += n;
                lines.push(String::from_utf8(buf).unwrap());
            }
            assert_eq!(read, text.len());
            // What Python's `open(path, newline="").readlines()` gives for this file.
            assert_eq!(
                lines,
                [
                    "ab\r\n",
                    "cd\r",
                    "e\n",
                    "\r",
                    "\r",
                    "fg\r\n",
                    "\r\n",
                    "h\u{85}i\u{2028}j\r"
                ],
                "buffer of {cap}"
            );
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("umshard-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("c.txt");
        std::fs::write(&input, "hello world\nhello\n\n\n  \nworld hello world\n").unwrap();
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world",
        ];
        let tok = Tokenizer::new(
            Vocab::new(words.iter().map(|s| s.to_string()).collect()).unwrap(),
            TokenizerConfig::default(),
        )
        .unwrap();
        let out = dir.join("c.umshard");
        let s = write_shard(&tok, &input, &out, 8, Some(1)).unwrap();
        assert_eq!(
            (
                s.header.n_tokens,
                s.header.n_sentences,
                s.header.n_documents
            ),
            (6, 3, 2)
        );
        let sh = Shard::open(&out, true).unwrap();
        assert_eq!(sh.sentence_offsets(), vec![0, 2, 3, 6]);
        assert_eq!(sh.document_offsets(), vec![0, 2, 3]);
        assert_eq!(
            (0..6).map(|i| sh.token(i).unwrap()).collect::<Vec<_>>(),
            vec![5, 6, 5, 6, 5, 6]
        );
        let mut bytes = std::fs::read(&out).unwrap();
        bytes[HEADER_LEN] ^= 1;
        std::fs::write(&out, &bytes).unwrap();
        assert!(
            matches!(Shard::open(&out, true), Err(Error::InvalidInput(m)) if m.contains("checksum"))
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn failed_encode_keeps_the_previous_shard_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("umshard-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let words = ["[UNK]", "hello", "world"];
        let tok = Tokenizer::new(
            Vocab::new(words.iter().map(|s| s.to_string()).collect()).unwrap(),
            TokenizerConfig::default(),
        )
        .unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "hello world\nworld\n").unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"hello\nworld \xff\n").unwrap();
        let out = dir.join("s.umshard");
        write_shard(&tok, &good, &out, 4, Some(1)).unwrap();
        let before = std::fs::read(&out).unwrap();
        let old = Shard::open(&out, true).unwrap();
        assert!(matches!(
            write_shard(&tok, &bad, &out, 4, Some(1)),
            Err(Error::InvalidInput(m)) if m.contains("line 2")
        ));
        assert_eq!(std::fs::read(&out).unwrap(), before);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["bad.txt", "good.txt", "s.umshard"]);
        // Re-encoding replaces the file; the old map still reads the old tokens.
        std::fs::write(&good, "world\n").unwrap();
        write_shard(&tok, &good, &out, 4, Some(1)).unwrap();
        assert_eq!(
            (0..3).map(|i| old.token(i).unwrap()).collect::<Vec<_>>(),
            [1, 2, 2]
        );
        assert_eq!(Shard::open(&out, true).unwrap().header.n_tokens, 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A shard file: `header` with a valid CRC over it and `payload`.
    fn raw_shard(header: ShardHeader, payload: &[u8]) -> Vec<u8> {
        let mut h = header.to_bytes();
        let crc = crc32_update(crc32_update(0, &h[..48]), payload);
        h[48..52].copy_from_slice(&crc.to_le_bytes());
        [&h[..], payload].concat()
    }

    #[test]
    fn header_sizes_that_overflow_are_corruption_not_panics() {
        let dir = std::env::temp_dir().join(format!("umshard-overflow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = |token_bytes, n_tokens, n_sentences, n_documents| ShardHeader {
            version: VERSION,
            token_bytes,
            n_tokens,
            n_sentences,
            n_documents,
            vocab_size: 10,
            flags: 0,
            crc32: 0,
        };
        let offsets = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let cases = [
            // 2 * (2**63 - 36) wraps to 2**64 - 72; + 64 + 64 + 8 wraps to 64 = the file length.
            (h(2, (1 << 63) - 36, 7, 0), Vec::new()),
            // 4 * 2**62 wraps to 0: 96 bytes with consistent offsets passed even the CRC check.
            (h(4, 1 << 62, 1, 1), offsets(&[0, 1 << 62, 0, 1])),
            (h(2, 0, u64::MAX, 0), offsets(&[0, 0])),
            (h(2, 0, (1 << 61) - 1, 0), offsets(&[0])),
            (h(2, 0, 0, u64::MAX), offsets(&[0, 0])),
            (h(4, u64::MAX, 0, 0), offsets(&[0, 0])),
        ];
        for (k, (header, payload)) in cases.iter().enumerate() {
            let path = dir.join(format!("o{k}.umshard"));
            std::fs::write(&path, raw_shard(*header, payload)).unwrap();
            for verify in [true, false] {
                match Shard::open(&path, verify) {
                    Err(Error::InvalidInput(m)) => assert!(
                        m.contains("truncated or corrupted shard")
                            && m.contains(&path.display().to_string()),
                        "{m}"
                    ),
                    Err(e) => panic!("case {k}: {e}"),
                    Ok(_) => panic!("case {k} ({header:?}) accepted"),
                }
            }
        }
        assert_eq!(h(2, (1 << 63) - 36, 7, 0).file_len(), None);
        assert_eq!(h(4, 1 << 62, 1, 1).tokens_len(), None);
        // A consistent header still opens, and its sizes are those of the layout table.
        let good = h(2, 3, 1, 1);
        assert_eq!(
            (good.tokens_len(), good.file_len()),
            (Some(8), Some(64 + 8 + 16 + 16))
        );
        let mut payload = vec![5, 0, 6, 0, 7, 0, 0, 0];
        payload.extend(offsets(&[0, 3, 0, 1]));
        let path = dir.join("good.umshard");
        std::fs::write(&path, raw_shard(good, &payload)).unwrap();
        let sh = Shard::open(&path, true).unwrap();
        assert_eq!(sh.tokens_len(), 8);
        assert_eq!(
            (sh.sentence_offsets(), sh.document_offsets()),
            (vec![0, 3], vec![0, 1])
        );
        assert_eq!(
            (0..3).map(|i| sh.token(i).unwrap()).collect::<Vec<_>>(),
            [5, 6, 7]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn token_past_the_end_is_none() {
        let dir = std::env::temp_dir().join(format!("umshard-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let offsets = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for (width, tokens) in [
            (2u32, vec![5u8, 0, 6, 0, 7, 0, 0, 0]),
            (4, {
                let mut t: Vec<u8> = [5u32, 6, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
                t.extend([0; 4]);
                t
            }),
        ] {
            let header = ShardHeader {
                version: VERSION,
                token_bytes: width,
                n_tokens: 3,
                n_sentences: 1,
                n_documents: 1,
                vocab_size: 10,
                flags: 0,
                crc32: 0,
            };
            let path = dir.join(format!("w{width}.umshard"));
            let payload = [tokens, offsets(&[0, 3, 0, 1])].concat();
            std::fs::write(&path, raw_shard(header, &payload)).unwrap();
            let sh = Shard::open(&path, true).unwrap();
            assert_eq!(
                (0..3).map(|i| sh.token(i)).collect::<Vec<_>>(),
                [Some(5), Some(6), Some(7)]
            );
            // Past the end, token 3 was the padding's 0 and tokens 4.. the bytes of the
            // offsets behind it, returned as ids; u64::MAX overflowed the byte offset.
            for i in [3, 4, 5, 12, 1 << 40, u64::MAX] {
                assert_eq!(sh.token(i), None, "token {i} of width {width}");
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_offsets_are_rejected_with_or_without_verify() {
        let dir = std::env::temp_dir().join(format!("umshard-offsets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 3 tokens (padded to 8 bytes), 2 sentences, 1 document, the CRC valid: only the
        // offsets are wrong.
        let header = ShardHeader {
            version: VERSION,
            token_bytes: 2,
            n_tokens: 3,
            n_sentences: 2,
            n_documents: 1,
            vocab_size: 10,
            flags: 0,
            crc32: 0,
        };
        let file = |sentences: [u64; 3], documents: [u64; 2]| {
            let mut payload = vec![5, 0, 6, 0, 7, 0, 0, 0];
            payload.extend(
                sentences
                    .iter()
                    .chain(&documents)
                    .flat_map(|x| x.to_le_bytes()),
            );
            raw_shard(header, &payload)
        };
        let cases = [
            (
                file([0, 2, 9], [0, 2]),
                "sentence offset 2 is 9, past the 3 tokens of the header",
            ),
            (
                file([0, 1 << 63, 3], [0, 2]),
                "sentence offset 1 is 9223372036854775808, past the 3 tokens of the header",
            ),
            (
                file([0, 3, 1], [0, 2]),
                "sentence offset 2 is 1, less than offset 1 (3)",
            ),
            (file([1, 2, 3], [0, 2]), "sentence offset 0 is 1, not 0"),
            (
                file([0, 1, 2], [0, 2]),
                "the last sentence offset (2) is 2, not the 3 tokens of the header",
            ),
            (
                file([0, 1, 3], [0, 5]),
                "document offset 1 is 5, past the 2 sentences of the header",
            ),
            (
                file([0, 1, 3], [0, 1]),
                "the last document offset (1) is 1, not the 2 sentences of the header",
            ),
        ];
        for (k, (bytes, want)) in cases.iter().enumerate() {
            let path = dir.join(format!("b{k}.umshard"));
            std::fs::write(&path, bytes).unwrap();
            for verify in [true, false] {
                match Shard::open(&path, verify) {
                    Err(Error::InvalidInput(m)) => assert_eq!(
                        m,
                        format!("{}: corrupted shard: {want}", path.display()),
                        "case {k}, verify={verify}"
                    ),
                    Err(e) => panic!("case {k}: {e}"),
                    Ok(s) => panic!("case {k} accepted: {:?}", s.sentence_offsets()),
                }
            }
        }
        let path = dir.join("ok.umshard");
        std::fs::write(&path, file([0, 1, 3], [0, 2])).unwrap();
        for verify in [true, false] {
            let sh = Shard::open(&path, verify).unwrap();
            assert_eq!(
                (sh.sentence_offsets(), sh.document_offsets()),
                (vec![0, 1, 3], vec![0, 2])
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn non_regular_files_are_rejected_naming_the_path() {
        let dir = std::env::temp_dir();
        let name = dir.display().to_string();
        let words = ["[UNK]", "a"].iter().map(|s| s.to_string()).collect();
        let tok = Tokenizer::new(Vocab::new(words).unwrap(), TokenizerConfig::default()).unwrap();
        let out = dir.join(format!("umshard-dir-{}.umshard", std::process::id()));
        for r in [
            Shard::open(&dir, true).map(|_| ()),
            write_shard(&tok, &dir, &out, 8, Some(1)).map(|_| ()),
        ] {
            match r {
                Err(Error::Io(e)) => {
                    let m = e.to_string();
                    assert!(m.contains(&name) && m.contains("a directory"), "{m}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(!out.exists());
        // An output path that is there but not a regular file is refused before the corpus is
        // read (its invalid UTF-8 would be the error otherwise), and left as it was.
        let sub = dir.join(format!("umshard-outdir-{}.umshard", std::process::id()));
        std::fs::create_dir_all(&sub).unwrap();
        let bad = dir.join(format!("umshard-bad-corpus-{}.txt", std::process::id()));
        std::fs::write(&bad, b"\xff\n").unwrap();
        match write_shard(&tok, &bad, &sub, 8, Some(1)) {
            Err(Error::InvalidInput(m)) => assert_eq!(
                m,
                format!("cannot write shard {}: it is a directory", sub.display())
            ),
            other => panic!("{:?}", other.map(|s| s.header)),
        }
        assert!(sub.is_dir());
        std::fs::remove_dir(&sub).ok();
        std::fs::remove_file(&bad).ok();
        #[cfg(unix)]
        match Shard::open(Path::new("/dev/null"), true) {
            Err(Error::Io(e)) => assert!(e.to_string().contains("/dev/null: it is not a regular")),
            other => panic!("{:?}", other.map(|s| s.header)),
        }
    }
}
