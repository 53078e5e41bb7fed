//! WordPiece: greedy longest-match-first subword segmentation.
