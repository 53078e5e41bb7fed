//! WordPiece vocabulary training.
