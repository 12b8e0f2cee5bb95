"""SacreBLEU corpus BLEU (0-100), one reference per prediction, its default 13a tokenisation."""

import evaluate

from align.eval.metric_modules import paired_text_info


class AlignBleu(evaluate.Metric):
    def _info(self):
        return paired_text_info(
            "Corpus BLEU of the predictions against one reference each (sacrebleu, 13a tokenisation).",
            "Post, M. (2018). A Call for Clarity in Reporting BLEU Scores.")

    def _compute(self, predictions, references):
        import sacrebleu

        return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)}
