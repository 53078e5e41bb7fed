//! UNILM batches: per-sample attention modes, segments and masks.
