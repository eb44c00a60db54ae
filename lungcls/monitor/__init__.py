"""Monitoring: how each new batch differs from the data the model in service learned from.

    from lungcls.monitor.gather import drift_report
    from lungcls.monitor.report import drift_folder, write_drift_report

    report = drift_report(settings, "later-001")      # the batch vs the champion's training data
    write_drift_report(storage, report, drift_folder(run_id))

    from lungcls.monitor.prospective import evaluate_batch

    row = evaluate_batch(settings, "later-001")      # the champion on the batch: one history row

`statistics` compares one feature (a test and an effect size each), `features` says which
features (acquisition metadata, image statistics), `gather` reads both sides from a storage
root, `report` holds the record, and `render` writes it as Markdown and HTML.
`prospective` scores a batch with the champion as an external test, `batch_evaluation` holds
that row and the history of them (`monitoring/<model>/batches/`), and `history` renders the
history as a table and a plot.
"""
