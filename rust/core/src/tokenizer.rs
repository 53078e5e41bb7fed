//! The BERT tokenizer pipeline: normalize, pretokenize, wordpiece, special tokens, truncation.
