//! Span sampling: UNILM n-grams, SpanBERT, MASS, T5 span corruption.
