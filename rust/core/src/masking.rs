//! BERT dynamic masking (80/10/10), whole-word and entity masking.
