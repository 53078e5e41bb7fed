//! WordPiece vocabularies: loading, validation, special tokens.
