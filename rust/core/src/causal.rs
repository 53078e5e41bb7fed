//! Causal LM (GPT) batches: shifted labels, document packing.
