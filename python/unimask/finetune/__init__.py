"""Fine-tuning and transfer on one encoder: task heads, ULMFiT / SiATL / MT-DNN / CVT
strategies, feature extraction, Siamese bi-encoders and FAQ retrieval.

See ``docs/finetune.md`` for the tour and the recipes' sources.
"""

from __future__ import annotations

from .cvt import (
    CrossViewHeads,
    CrossViewTagger,
    classifier_cvt_loss,
    cross_view_kl,
    cvt_consistency_loss,
    tagger_cvt_loss,
    train_cvt,
)
from .data import Example, LabelMap, load_examples, load_unlabeled
from .features import FrozenFeatures, ScalarMix, concat_last_four
from .heads import (
    MassFinetuner,
    QuestionAnswering,
    Seq2SeqFinetuner,
    SequenceClassifier,
    TaskOutput,
    TokenClassifier,
    align_word_labels,
    answer_token_span,
    best_span,
    load_task_model,
    pool_hidden,
    span_text,
    word_predictions,
)
from .metrics import accuracy, classification_report, exact_match, f1_scores, squad_f1
from .multitask import MultiTaskModel, TaskHead, mtdnn_schedule
from .schedules import (
    GradualUnfreezer,
    discriminative_param_groups,
    layer_groups,
    siatl_gamma,
    slanted_triangular_lr,
    slanted_triangular_schedule,
)
from .siamese import (
    CrossEncoderReranker,
    FAQHit,
    FAQIndex,
    SiameseEncoder,
    contrastive_loss,
    cosine_similarity_loss,
    in_batch_negatives_loss,
)
from .qa import QAExample, encode_qa, evaluate_qa, finetune_qa, load_squad, predict_answers
from .seq2seq import evaluate_seq2seq, finetune_seq2seq, generate_texts, seq2seq_finetuner
from .tagging import (
    TaggedSentence,
    encode_tagged,
    entity_scores,
    entity_spans,
    evaluate_tagger,
    finetune_tagger,
    load_tagged,
    predict_tags,
    tag_label_map,
)
from .trainer import AuxLM, FinetuneConfig, evaluate_classifier, finetune_classifier, lm_finetune, train_multitask

__all__ = [
    "AuxLM", "CrossEncoderReranker", "CrossViewHeads", "CrossViewTagger", "Example", "FAQHit", "FAQIndex",
    "FinetuneConfig", "FrozenFeatures", "GradualUnfreezer", "LabelMap", "MassFinetuner",
    "MultiTaskModel", "QuestionAnswering", "ScalarMix", "Seq2SeqFinetuner", "SequenceClassifier",
    "SiameseEncoder", "TaskHead", "TaskOutput", "TokenClassifier", "accuracy", "align_word_labels",
    "answer_token_span", "best_span", "classification_report", "classifier_cvt_loss", "concat_last_four",
    "contrastive_loss", "cosine_similarity_loss", "cross_view_kl", "cvt_consistency_loss",
    "discriminative_param_groups", "evaluate_classifier", "exact_match", "f1_scores",
    "finetune_classifier", "in_batch_negatives_loss", "layer_groups", "lm_finetune",
    "load_examples", "load_task_model", "load_unlabeled", "mtdnn_schedule", "pool_hidden", "siatl_gamma",
    "slanted_triangular_lr", "slanted_triangular_schedule", "span_text", "squad_f1", "train_cvt",
    "train_multitask", "word_predictions", "TaggedSentence", "encode_tagged", "entity_scores", "entity_spans",
    "evaluate_tagger", "finetune_tagger", "load_tagged", "predict_tags", "tag_label_map",
    "QAExample", "tagger_cvt_loss", "evaluate_seq2seq", "finetune_seq2seq", "generate_texts", "seq2seq_finetuner",
    "encode_qa", "evaluate_qa", "finetune_qa", "load_squad", "predict_answers",
]
