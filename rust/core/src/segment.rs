//! Dictionary-based Chinese word segmentation for whole-word masking.
