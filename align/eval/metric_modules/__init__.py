"""align's text metrics as `evaluate` modules, shipped with the package so they load offline (the hub's
`evaluate.load("rouge")` fetches its script, and fails without a network). align.eval.text_metrics loads them.
"""


def paired_text_info(description: str, citation: str):
    """The MetricInfo of a metric over predictions, each with one reference string."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description, citation=citation,
        inputs_description="predictions, references: lists of strings, one reference per prediction.",
        features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    )
