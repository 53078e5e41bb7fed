//! WordPiece vocabularies: loading, validation, special tokens.
//!
//! A vocabulary is a list of distinct, non-empty tokens; a token's id is its index. `vocab.txt`
//! holds one token per line (trailing whitespace trimmed, as HF's `WordPiece::read_file` does).
//! Unlike HF, which silently lets a later duplicate line win, duplicates are an error here.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// An id <-> token table.
#[derive(Clone, Debug)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// Build from tokens in id order. Rejects an empty list, empty tokens and duplicates.
    pub fn new(tokens: Vec<String>) -> Result<Self> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("vocabulary is empty".into()));
        }
        if tokens.len() > u32::MAX as usize / 2 {
            return Err(Error::InvalidInput(format!(
                "vocabulary too large: {} entries",
                tokens.len()
            )));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "vocabulary entry {i} (line {}) is empty",
                    i + 1
                )));
            }
            if let Some(prev) = ids.insert(t.clone(), i as u32) {
                return Err(Error::InvalidInput(format!(
                    "vocabulary has a duplicate entry {t:?}: lines {} and {}",
                    prev + 1,
                    i + 1
                )));
            }
        }
        Ok(Self { tokens, ids })
    }

    /// Parse the text of a `vocab.txt` file (one token per line, trailing whitespace trimmed).
    pub fn from_text(text: &str) -> Result<Self> {
        let mut lines: Vec<String> = text.split('\n').map(|l| l.trim_end().to_string()).collect();
        // A final newline does not start another entry.
        if lines.last().is_some_and(|l| l.is_empty()) && text.ends_with('\n') {
            lines.pop();
        }
        if lines.len() == 1 && lines[0].is_empty() {
            lines.clear();
        }
        Self::new(lines)
    }

    /// Read a `vocab.txt` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read vocabulary {}: {e}", path.display()),
            ))
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            Error::InvalidInput(format!(
                "vocabulary {} is not valid UTF-8 (byte {})",
                path.display(),
                e.valid_up_to()
            ))
        })?;
        Self::from_text(text).map_err(|e| match e {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }

    /// Tokens in id order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The text of a `vocab.txt` for this vocabulary.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.tokens.iter().map(|t| t.len() + 1).sum());
        for t in &self.tokens {
            s.push_str(t);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_trims() {
        let v = Vocab::from_text("[PAD]\n[UNK]  \nhello\n").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v.token_to_id("[UNK]"), Some(1));
        assert_eq!(v.id_to_token(2), Some("hello"));
        assert_eq!(Vocab::from_text(&v.to_text()).unwrap().tokens(), v.tokens());
    }

    #[test]
    fn rejects_bad_vocabularies() {
        let err = |t: &str| match Vocab::from_text(t) {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        };
        assert!(err("").contains("empty"));
        assert!(err("a\nb\na\n").contains("duplicate entry \"a\": lines 1 and 3"));
        assert!(err("a\n\nb\n").contains("line 2"));
    }
}
