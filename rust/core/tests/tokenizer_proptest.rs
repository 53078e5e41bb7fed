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
