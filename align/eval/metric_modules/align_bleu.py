"""SacreBLEU corpus BLEU (0-100), one reference per prediction, its default 13a tokenisation."""

import datasets
import evaluate


class AlignBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus BLEU of the predictions against one reference each (sacrebleu, 13a tokenisation).",
            citation="Post, M. (2018). A Call for Clarity in Reporting BLEU Scores.",
            inputs_description="predictions, references: lists of strings, one reference per prediction.",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        import sacrebleu

        return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)}
