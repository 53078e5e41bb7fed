//! Whitespace and punctuation splitting into words with character offsets.
