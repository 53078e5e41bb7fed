//! Next-sentence-prediction pairs from documents (BERT's create_pretraining_data recipe).
