//! BERT text cleaning, CJK splitting, lowercasing and accent stripping.
