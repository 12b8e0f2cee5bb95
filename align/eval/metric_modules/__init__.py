"""align's text metrics as `evaluate` modules, shipped with the package so they load offline (the hub's
`evaluate.load("rouge")` fetches its script, and fails without a network). align.eval.text_metrics loads them."""
