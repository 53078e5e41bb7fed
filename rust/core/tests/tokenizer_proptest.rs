//! Property tests of the tokenizer core: arbitrary Unicode never panics, and the output keeps
//! its invariants (offsets inside the text, truncation limits, batch == one-by-one).

use proptest::prelude::*;
use unimask_core::normalize::NormalizerConfig;
use unimask_core::tokenizer::{EncodeOptions, Tokenizer, TokenizerConfig, Truncation};
use unimask_core::vocab::Vocab;

fn tokenizer(lowercase: bool, strip: bool) -> Tokenizer {
    let words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "b",
        "ab",
        "##a",
        "##b",
        "##ab",
        "中",
        "é",
        "e",
        "##é",
        "!",
        "'",
        "i",
        "##\u{307}",
        "ß",
        "hello",
        "##llo",
        "he",
    ];
    let cfg = TokenizerConfig {
        normalizer: NormalizerConfig {
            lowercase,
            strip_accents: strip,
            ..Default::default()
        },
        ..Default::default()
    };
    Tokenizer::new(
        Vocab::new(words.iter().map(|s| s.to_string()).collect()).unwrap(),
        cfg,
    )
    .unwrap()
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<char>().prop_map(|c| c.to_string()),
            Just("[MASK]".to_string()),
            Just("hello ".to_string()),
            "[abé中 !\u{301}\u{316}\u{130}]{0,8}",
        ],
        0..20,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn never_panics_and_offsets_are_inside(t in text(), p in text(), lower in any::<bool>(), strip in any::<bool>(),
                                           ml in 3usize..30, strat in 0usize..3) {
        let tok = tokenizer(lower, strip);
        let n = t.chars().count() as u32;
        let e = tok.encode(&t, None, &EncodeOptions::default()).unwrap();
        prop_assert_eq!(e.ids.len(), e.offsets.len());
        for (o, w) in e.offsets.iter().zip(&e.word_ids) {
            prop_assert!(o[0] <= o[1] && o[1] <= n, "offset {:?} outside 0..{}", o, n);
            prop_assert!(*w >= -1);
        }
        let truncation = [Truncation::LongestFirst, Truncation::OnlyFirst, Truncation::OnlySecond][strat];
        let opts = EncodeOptions { max_length: Some(ml), truncation, ..Default::default() };
        if let Ok(e) = tok.encode(&t, Some(&p), &opts) {
            prop_assert!(e.ids.len() <= ml.max(3));
        }
    }

    #[test]
    fn batch_matches_single(ts in prop::collection::vec(text(), 0..12), threads in 1usize..4) {
        let tok = tokenizer(true, true);
        let refs: Vec<&str> = ts.iter().map(|s| s.as_str()).collect();
        let opts = EncodeOptions::default();
        let b = tok.encode_batch(&refs, None, &opts, Some(threads)).unwrap();
        prop_assert_eq!(b.row_splits.len(), ts.len() + 1);
        for (i, t) in ts.iter().enumerate() {
            let e = tok.encode(t, None, &opts).unwrap();
            let (s, end) = (b.row_splits[i] as usize, b.row_splits[i + 1] as usize);
            prop_assert_eq!(&b.tokens.ids[s..end], &e.ids[..]);
            prop_assert_eq!(&b.tokens.offsets[s..end], &e.offsets[..]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Segmenter spans tile the text exactly, for any input.
    #[test]
    fn segmenter_spans_tile_the_text(t in text(), extra in "[北京大学abc12 \r\n]{0,12}") {
        let dict = "北京 50\n大学 40\n北京大学 30\n学 5\nab 3\n";
        let seg = unimask_core::segment::Segmenter::from_text(dict, "test").unwrap();
        let s = format!("{t}{extra}");
        let spans = seg.cut(&s);
        let mut at = 0u32;
        for (a, b) in spans {
            prop_assert_eq!(a, at);
            prop_assert!(b > a);
            at = b;
        }
        prop_assert_eq!(at as usize, s.chars().count());
    }

    /// Training never panics and always yields distinct tokens, specials first.
    #[test]
    fn training_yields_distinct_tokens(words in prop::collection::vec(("[a-c\u{e9}\u{4e2d}]{1,6}", 1u64..50), 0..30),
                                       size in 1usize..60) {
        use std::collections::HashMap;
        use unimask_core::train::{train_from_counts, TrainConfig};
        let mut counts: HashMap<String, u64> = HashMap::new();
        for (w, c) in words {
            *counts.entry(w).or_insert(0) += c;
        }
        let cfg = TrainConfig {
            vocab_size: size,
            min_frequency: 2,
            special_tokens: vec!["[UNK]".into(), "[PAD]".into()],
            normalizer: NormalizerConfig::default(),
            continuing_subword_prefix: "##".into(),
            max_input_chars_per_word: 100,
        };
        let v = train_from_counts(counts, &cfg);
        prop_assert_eq!(&v[..2], &["[UNK]".to_string(), "[PAD]".to_string()]);
        let set: std::collections::HashSet<&String> = v.iter().collect();
        prop_assert_eq!(set.len(), v.len());
        prop_assert!(Vocab::new(v.clone()).is_ok());
    }
}
