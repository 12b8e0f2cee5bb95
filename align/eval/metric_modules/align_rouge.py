"""ROUGE-1/2/L F1 per answer (Lin 2004), with Porter stemming as `rouge_score` computes it: one value per
prediction, so the evaluation can bootstrap an interval."""

import evaluate

from align.eval.metric_modules import paired_text_info


class AlignRouge(evaluate.Metric):
    def _info(self):
        return paired_text_info(
            "ROUGE-1, ROUGE-2 and ROUGE-L F1 of each prediction against its reference (rouge_score).",
            "Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.")

    def _compute(self, predictions, references):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        out = {"rouge1": [], "rouge2": [], "rougeL": []}
        for prediction, reference in zip(predictions, references):
            scores = scorer.score(reference, prediction)
            for key, values in out.items():
                values.append(scores[key].fmeasure)
        return out
